"""Fixtures for the Kubernetes API server stand-in: a real etcd plus ``python -m lab.apiserver``.

Import the fixtures into a test module (``from tests.apiserver_fixture import apiserver, ...``).
``apiserver`` yields an ``Apiserver`` with its URL and etcd endpoint; both processes are stopped by
PID afterwards, even when the test fails. ``k8s_client`` is an official ``kubernetes.client.ApiClient``
pointed at it (plain HTTP, no auth).
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from lab.apiserver.launch import running_apiserver
from tests.helpers import etcd_running


@dataclass(frozen=True)
class Apiserver:
    url: str
    etcd: str


@pytest.fixture(scope="module")
def apiserver(tmp_path_factory) -> Iterator[Apiserver]:
    """One etcd + stand-in per test module (bookmarks every 0.5 s so tests see them quickly)."""
    data = tmp_path_factory.mktemp("apiserver-etcd")
    with etcd_running(str(data / "etcd")) as etcd_url:
        with running_apiserver(etcd_url, bookmark_interval=0.5) as url:
            yield Apiserver(url, etcd_url)


def client_configuration(url: str):
    from kubernetes import client

    config = client.Configuration()
    config.host = url
    return config


@pytest.fixture
def k8s_client(apiserver) -> Iterator:
    from kubernetes import client

    api = client.ApiClient(client_configuration(apiserver.url))
    try:
        yield api
    finally:
        api.close()
