"""The source article's resources through the real pycalicoctl, on both datastores: each document
applies unchanged and reads back in the article's columns (issue 6, item 6). On the Kubernetes
datastore the CLI is pointed at the stand-in by a CalicoAPIConfig file in the article's own shape
(its calicoctl.cfg, with our kubeconfig's path)."""
from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab import kube
from lab.apiserver.launch import running_apiserver
from tests.helpers import etcd_running
from tests.unit.test_crds_article import (
    ARTICLE, GET_BGPCONFIG, GET_IPPOOL_WIDE, GET_NODES_WIDE, article_nodes,
)

pytestmark = pytest.mark.root
CTL = str(Path(sys.executable).parent / "pycalicoctl")


@pytest.fixture(params=["etcdv3", "kubernetes"])
def ctl(request, tmp_path) -> Iterator:
    """``ctl(*args)``: the real CLI against a fresh datastore of each kind."""
    with etcd_running(str(tmp_path / "etcd")) as etcd_url:
        if request.param == "etcdv3":
            yield lambda *args: _run([*args, "--etcd-endpoints", etcd_url])
            return
        with running_apiserver(etcd_url) as url:
            kubeconfig = kube.write_kubeconfig(tmp_path, url)
            kube.apply_crds(str(kubeconfig))
            config = tmp_path / "calicoctl.cfg"
            config.write_text((ARTICLE / "calicoctl.cfg").read_text().replace(
                "/root/.kube/config", str(kubeconfig)))
            yield lambda *args: _run([*args, "--config", str(config)])


def _run(args: list[str]) -> list[str]:
    out = subprocess.run([CTL, *args], capture_output=True, text=True, timeout=60,
                         env={"PATH": "/usr/bin:/bin", "HOME": "/nonexistent"})
    assert out.returncode == 0, f"pycalicoctl {' '.join(args)}: {out.stderr}"
    return [" ".join(line.split()) for line in out.stdout.splitlines() if line.strip()]


def test_the_articles_resources_apply_unchanged_and_read_back_in_its_columns(ctl, tmp_path):
    ctl("apply", "-f", str(ARTICLE / "ippool-list.yaml"))
    ctl("create", "-f", str(ARTICLE / "bgpconfiguration.yaml"))
    ctl("apply", "-f", str(ARTICLE / "bgppeer.yaml"))
    nodes = tmp_path / "nodes.json"
    nodes.write_text(json.dumps({"apiVersion": "projectcalico.org/v3", "kind": "NodeList",
                                 "items": [n.to_dict() for n in article_nodes()]}))
    ctl("apply", "-f", str(nodes))
    assert ctl("get", "ippool", "-o", "wide") == GET_IPPOOL_WIDE
    assert ctl("get", "bgpconfig") == GET_BGPCONFIG
    assert ctl("get", "nodes", "-o", "wide") == GET_NODES_WIDE
    peers = ctl("get", "bgppeer")
    assert peers[0] == "NAME PEERIP NODE ASN" and peers[1].startswith("peer-with-route-reflectors")
