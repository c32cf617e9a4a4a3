"""``cni.inproc`` and ``CNIServer.handle`` without root: IPAM in-process on the memory datastore.

The seam is ours (``cni.inproc``'s dispatchers); the datastore is the memory backend, which has the
etcd backend's semantics. Wiring pods needs namespaces: tests/functional/test_cni_server.py.
"""
from __future__ import annotations

import asyncio
import json
import threading

import pytest

import cni.ipam_plugin
from cni import inproc
from cni.config import parse_env, parse_netconf
from cni.errors import CHECK_FAILED, INVALID_CONFIG, POOL_EXHAUSTED, CNIError
from cni.names import handle_id
from cni.server import CNIServer
from crds import IPPool, ObjectMeta
from datastore.memory import MemoryDatastore
from ipam import IPAM

NODE, NETWORK = "node1", "k8s-pod-network"


def _conf(**ipam) -> bytes:
    return json.dumps({"cniVersion": "1.0.0", "name": NETWORK, "type": "pycalico-cni",
                       "datastore_type": "etcdv3", "etcd_endpoints": "http://127.0.0.1:1",
                       "nodename": NODE, "ipam": {"type": "pycalico-ipam", **ipam}}).encode()


def _env(command: str, container: str = "c1") -> dict[str, str]:
    return {"CNI_COMMAND": command, "CNI_CONTAINERID": container, "CNI_IFNAME": "eth0",
            "CNI_NETNS": "/var/run/netns/none", "CNI_PATH": "/nonexistent",
            "CNI_ARGS": "K8S_POD_NAMESPACE=default;K8S_POD_NAME=pod-1"}


@pytest.fixture
def ds(tmp_path, monkeypatch):
    monkeypatch.setattr(cni.ipam_plugin, "RUN_ROOT", tmp_path / "run")  # the node flock
    store = MemoryDatastore()
    store.create(IPPool(metadata=ObjectMeta(name="default-ipv4-ippool"),
                        spec={"cidr": "10.244.0.0/16", "blockSize": 26}))
    store.create(IPPool(metadata=ObjectMeta(name="tiny"),
                        spec={"cidr": "10.250.0.0/31", "blockSize": 31}))
    return store


def _ctx(ds) -> inproc.Serving:
    locks: dict[str, threading.Lock] = {}
    return inproc.Serving(datastore_for=lambda conf: ds,
                          node_lock=lambda node: locks.setdefault(node, threading.Lock()))


def _delegate(ds, command: str, raw: bytes = _conf(), container: str = "c1"):
    return inproc.delegate_in_process(_ctx(ds), command, parse_env(_env(command, container)),
                                      parse_netconf(raw))


def test_in_process_ipam_is_the_ipam_plugin(ds):
    result = _delegate(ds, "ADD")
    [ip] = result["ips"]
    assert ip["address"].startswith("10.244.") and ip["address"].endswith("/32")
    assert result["routes"] == [{"dst": "0.0.0.0/0"}]
    handle = handle_id(NETWORK, "c1")
    assert [f"{a}/32" for a in IPAM(ds).addresses(handle)] == [ip["address"]]
    assert _delegate(ds, "ADD") == result  # the handle keeps its address
    assert _delegate(ds, "CHECK") is None
    assert _delegate(ds, "DEL") is None and IPAM(ds).addresses(handle) == []
    assert _delegate(ds, "DEL") is None  # idempotent
    with pytest.raises(CNIError) as err:
        _delegate(ds, "CHECK")
    assert err.value.code == CHECK_FAILED


def test_in_process_errors_are_what_the_exec_plugin_printed(ds):
    _delegate(ds, "ADD", _conf(ipv4_pools=["tiny"]), "a")
    _delegate(ds, "ADD", _conf(ipv4_pools=["tiny"]), "b")
    with pytest.raises(CNIError) as err:
        _delegate(ds, "ADD", _conf(ipv4_pools=["tiny"]), "c")
    assert err.value.code == POOL_EXHAUSTED
    with pytest.raises(CNIError) as err:
        _delegate(ds, "ADD", _conf(ipv4_pools=["no-such-pool"]), "d")
    assert err.value.code == INVALID_CONFIG


def test_outside_a_served_request_nothing_changes(ds, monkeypatch):
    calls = []
    monkeypatch.setattr(inproc, "_ORIGINAL_DELEGATE", lambda *a: calls.append(a[0]) or {"x": 1})
    inv, conf = parse_env(_env("ADD")), parse_netconf(_conf())
    assert inproc.delegate("ADD", inv, conf) == {"x": 1}  # the exec path, as before
    with inproc.serving(_ctx(ds)):
        foreign = parse_netconf(_conf().replace(b"pycalico-ipam", b"host-local"))
        assert inproc.delegate("ADD", inv, foreign) == {"x": 1}  # other IPAM: still exec'd
        assert "ips" in inproc.delegate("ADD", inv, conf)  # ours: in-process
    assert calls == ["ADD", "ADD"]


def test_handle_runs_a_del_in_process_with_one_connection(ds):
    opened = []

    def factory():
        opened.append(ds)
        return ds

    server = CNIServer("/nonexistent/cni.sock", factory, NODE)
    address = IPAM(ds).assign(node=NODE, handle=handle_id(NETWORK, "c1"))
    for _ in range(2):
        assert server.handle(_env("DEL"), _conf()) == (0, "")
    assert IPAM(ds).addresses(handle_id(NETWORK, "c1")) == [] and address is not None
    assert len(opened) == 1  # one connection for every request
    asyncio.run(server.stop())  # closes what the factory opened


def test_handle_refuses_another_nodes_request(ds):
    server = CNIServer("/nonexistent/cni.sock", ds, "node2")
    rc, out = server.handle(_env("DEL"), _conf())
    assert rc == 1 and json.loads(out)["code"] == INVALID_CONFIG and "node2" in json.loads(out)["msg"]


def test_handle_reports_bad_input_as_cni_errors(ds):
    server = CNIServer("/nonexistent/cni.sock", ds, NODE)
    rc, out = server.handle({"CNI_COMMAND": "ADD"}, _conf())
    assert rc == 1 and json.loads(out)["code"] == 4  # INVALID_ENV: the missing variables named
    rc, out = server.handle(_env("ADD"), b"{")
    assert rc == 1 and json.loads(out)["code"] == 6
