"""Fixtures for the Kubernetes API server stand-in: a real etcd plus ``python -m lab.apiserver``.

Import the fixtures into a test module (``from tests.apiserver_fixture import apiserver, ...``).
``apiserver`` yields an ``Apiserver`` with its URL and etcd endpoint; both processes are stopped by
PID afterwards, even when the test fails. ``k8s_client`` is an official ``kubernetes.client.ApiClient``
pointed at it (plain HTTP, no auth); ``custom`` is a ``CustomObjectsApi`` with a permissive
``ippools.crd.projectcalico.org`` CRD stored.
"""
from __future__ import annotations

import secrets
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


@pytest.fixture
def fresh_apiserver(tmp_path) -> Iterator[Apiserver]:
    """An etcd + stand-in of this test's own (for tests that need an empty store)."""
    with etcd_running(str(tmp_path / "etcd")) as etcd_url:
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


GROUP, VERSION, PLURAL = "crd.projectcalico.org", "v1", "ippools"


def ippool_crd() -> dict:
    return {
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{PLURAL}.{GROUP}"},
        "spec": {"group": GROUP, "scope": "Cluster",
                 "names": {"plural": PLURAL, "singular": "ippool", "kind": "IPPool",
                           "listKind": "IPPoolList"},
                 "versions": [{"name": VERSION, "served": True, "storage": True,
                               "schema": {"openAPIV3Schema": {
                                   "type": "object", "x-kubernetes-preserve-unknown-fields": True}}}]},
    }


def ippool(name: str, cidr: str = "10.244.0.0/16", labels: dict | None = None) -> dict:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "IPPool",
            "metadata": {"name": name, "labels": labels or {}}, "spec": {"cidr": cidr}}


@pytest.fixture
def custom(k8s_client):
    """CustomObjectsApi with the IPPool CRD stored (idempotent across the module's tests)."""
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    ext = client.ApiextensionsV1Api(k8s_client)
    try:
        ext.create_custom_resource_definition(ippool_crd())
    except ApiException as exc:
        assert exc.status == 409, exc.body
    return client.CustomObjectsApi(k8s_client)


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(3)}"
