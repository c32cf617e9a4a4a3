"""pycalico-node's command line: --version (the image tier runs it) and CALICO_NETWORKING_BACKEND."""
from __future__ import annotations

import importlib.metadata

import pytest

from felix.agent import parse_args


def test_version_prints_the_installed_package_version(capsys):
    with pytest.raises(SystemExit) as done:
        parse_args(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.split() == ["pycalico-node", importlib.metadata.version("pycalico")]


@pytest.mark.parametrize(("backend", "bgp"), [("bird", True), ("vxlan", False), ("none", False)])
def test_networking_backend_turns_bgp_on_or_off(monkeypatch, backend, bgp):
    monkeypatch.setenv("CALICO_NETWORKING_BACKEND", backend)
    assert parse_args(["--name", "n1", "--ip", "10.0.0.1/24"]).bgp is bgp


def test_an_unknown_networking_backend_is_refused_naming_the_variable(monkeypatch):
    monkeypatch.setenv("CALICO_NETWORKING_BACKEND", "calico-bpf")
    with pytest.raises(ValueError, match="CALICO_NETWORKING_BACKEND: 'calico-bpf' is not one of"):
        parse_args(["--name", "n1", "--ip", "10.0.0.1/24"])


def test_a_node_kubelet_has_not_registered_is_waited_for_not_created():
    """Issue 7 leftover: on Kubernetes our ClusterRole may not create Nodes; the 403 was retried
    forever as an opaque "unavailable". Now it says to wait for kubelet (still retried), and once
    the Node exists it is annotated as usual."""
    import ipaddress

    from crds import Node, ObjectMeta
    from datastore.base import Forbidden, Unavailable
    from datastore.memory import MemoryDatastore
    from felix.agent import register_node

    class NoNodeCreate(MemoryDatastore):  # what RBAC does to the agent's service account
        def create(self, resource):
            if resource.KIND == "Node":
                raise Forbidden('POST /api/v1/nodes: nodes is forbidden: User "system:serviceaccount'
                                ':kube-system:pycalico-node" cannot create resource "nodes"')
            return super().create(resource)

    ds = NoNodeCreate()
    ip = ipaddress.IPv4Interface("10.0.0.1/24")
    with pytest.raises(Unavailable, match=r"n1 does not exist yet .* \(kubelet registers them\)"):
        register_node(ds, "n1", ip)
    MemoryDatastore.create(ds, Node(metadata=ObjectMeta(name="n1")))  # kubelet registers it
    assert register_node(ds, "n1", ip).spec.bgp.ipv4_address == "10.0.0.1/24"
