"""``lab up --encap MODE`` and ``lab set-encap``: the mode -> pool fields mapping, the two-subnet
addressing, the refusal to change topology, and the CLI's validation (issue 8, item 8). No root,
no processes."""
from __future__ import annotations

import ipaddress
import json

import pytest

from crds import load
from ctl.main import LAB_ENCAPS, build_parser
from lab import lab

EXPECTED = {
    "none": ("Never", "Never"),
    "vxlan": ("Never", "Always"),
    "vxlan-crosssubnet": ("Never", "CrossSubnet"),
    "ipip": ("Always", "Never"),
    "ipip-crosssubnet": ("CrossSubnet", "Never"),
}


@pytest.mark.parametrize("mode", list(EXPECTED))
def test_each_mode_sets_the_pool_fields(mode):
    ipip, vxlan = EXPECTED[mode]
    assert lab.pool_modes(mode) == {"ipipMode": ipip, "vxlanMode": vxlan}
    pool = load(lab.pool_for(mode))  # the seeded pool is a valid IPPool in every mode
    assert (pool.spec.ipip_mode, pool.spec.vxlan_mode) == (ipip, vxlan)
    assert pool.spec.cidr == lab.POOL["spec"]["cidr"] and pool.spec.nat_outgoing


def test_none_is_todays_pool():
    assert lab.pool_for("none") == lab.POOL


def test_the_cli_offers_exactly_the_labs_modes():
    assert tuple(lab.ENCAPS) == LAB_ENCAPS == tuple(EXPECTED)


@pytest.mark.parametrize("bad", ["gre", "VXLAN", "", "crosssubnet", None])
def test_an_unknown_mode_is_refused_naming_the_flag(bad):
    with pytest.raises(lab.LabError, match="^--encap: .*not one of none, vxlan"):
        lab.check_encap(bad)
    with pytest.raises(lab.LabError, match="--encap"):
        lab.up("x", 1, 0, encap=bad)  # refused before anything is made


def test_the_parser_defaults_to_none_and_rejects_unknown_modes(capsys):
    args = build_parser().parse_args(["lab", "up", "--name", "x"])
    assert args.encap == "none"
    args = build_parser().parse_args(["lab", "up", "--name", "x", "--encap", "ipip-crosssubnet"])
    assert args.encap == "ipip-crosssubnet"
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["lab", "up", "--name", "x", "--encap", "gre"])
    assert exc.value.code == 2
    assert "argument --encap: invalid choice: 'gre'" in capsys.readouterr().err


def test_set_encap_parses_name_and_mode(capsys):
    args = build_parser().parse_args(["lab", "set-encap", "--name", "x", "vxlan"])
    assert (args.lab_cmd, args.name, args.mode) == ("set-encap", "x", "vxlan")
    for argv in (["lab", "set-encap", "--name", "x", "gre"], ["lab", "set-encap", "--name", "x"]):
        with pytest.raises(SystemExit) as exc:
            build_parser().parse_args(argv)
        assert exc.value.code == 2
    assert "MODE" in capsys.readouterr().err


def test_one_subnet_modes_keep_todays_addressing():
    for mode in ("none", "vxlan", "ipip"):
        assert not lab.two_subnets(mode)
        for i in (1, 2, 7):
            assert lab.node_link(mode, i) == lab.NodeLink("br0", f"10.99.0.{i}/24", lab.ETCD_IP)


@pytest.mark.parametrize("mode", ["vxlan-crosssubnet", "ipip-crosssubnet"])
def test_crosssubnet_puts_odd_nodes_on_a_and_even_nodes_on_b(mode):
    assert lab.two_subnets(mode)
    a, b = ipaddress.ip_network("10.99.0.0/24"), ipaddress.ip_network("10.99.1.0/24")
    for i in range(1, 201):
        link = lab.node_link(mode, i)
        address = ipaddress.ip_interface(link.address)
        subnet, bridge = (a, "br0") if i % 2 else (b, "br1")
        assert (address.network, link.bridge) == (subnet, bridge), i
        # the gateway is the router's leg on the node's own subnet, and no node takes it or etcd's
        assert ipaddress.ip_address(link.gateway) in subnet
        assert link.gateway.endswith(f".{lab.ROUTER_HOST}")
        assert str(address.ip) not in (link.gateway, lab.ETCD_IP)


@pytest.mark.parametrize("old,new", [
    ("none", "vxlan"), ("vxlan", "ipip"), ("ipip", "none"), ("vxlan", "vxlan"),
    ("vxlan-crosssubnet", "ipip-crosssubnet"), ("ipip-crosssubnet", "vxlan-crosssubnet"),
])
def test_set_encap_may_change_the_pool_on_the_same_topology(old, new):
    lab.check_encap_change(old, new)


@pytest.mark.parametrize("old,new", [
    ("none", "vxlan-crosssubnet"), ("vxlan", "ipip-crosssubnet"),
    ("vxlan-crosssubnet", "vxlan"), ("ipip-crosssubnet", "none"),
])
def test_set_encap_refuses_a_topology_change(old, new):
    with pytest.raises(lab.LabError, match="topology is fixed at 'lab up'"):
        lab.check_encap_change(old, new)


def test_set_encap_refuses_an_unknown_mode_naming_it():
    with pytest.raises(lab.LabError, match="^MODE: 'gre' is not one of"):
        lab.check_encap_change("none", "gre")


@pytest.fixture
def lab_root(tmp_path, monkeypatch):
    monkeypatch.setattr(lab, "LAB_ROOT", tmp_path / "labs")
    return tmp_path / "labs"


def test_set_encap_refuses_before_touching_the_datastore(lab_root, monkeypatch):
    lab.LabState(name="t", encap="vxlan-crosssubnet").save()
    monkeypatch.setattr(lab, "in_netns", lambda *a: pytest.fail("the datastore was contacted"))
    with pytest.raises(lab.LabError, match="runs on one subnet.*--encap vxlan-crosssubnet on two"):
        lab.set_encap("t", "vxlan")
    assert lab.LabState.load("t").encap == "vxlan-crosssubnet"


def test_set_encap_patches_through_the_fabric_and_records_the_mode(lab_root, monkeypatch):
    lab.LabState(name="t", datastore="etcdv3", encap="none").save()
    calls = []
    monkeypatch.setattr(lab, "in_netns", lambda ns, fn, *a: calls.append((ns, fn, a)) or ["p"])
    assert lab.set_encap("t", "ipip") == ["p"]
    [(ns, fn, (env, modes))] = calls
    assert (ns, fn) == ("t-fabric", lab._patch_pools)
    assert env == {"DATASTORE_TYPE": "etcdv3", "ETCD_ENDPOINTS": "http://10.99.0.254:2379"}
    assert modes == {"ipipMode": "Always", "vxlanMode": "Never"}
    assert lab.LabState.load("t").encap == "ipip"


def test_a_state_file_from_before_encap_means_none(lab_root):
    lab.LabState(name="t").save()
    path = lab_root / "t" / "state.json"
    data = json.loads(path.read_text())
    del data["encap"]
    path.write_text(json.dumps(data))
    assert lab.LabState.load("t").encap == "none"


def test_patch_pools_writes_only_pools_that_differ():
    from datastore.memory import MemoryDatastore

    ds = MemoryDatastore()
    ds.create(load(lab.pool_for("none")))
    other = {**lab.POOL, "metadata": {"name": "other"},
             "spec": {**lab.pool_for("vxlan")["spec"], "cidr": "10.245.0.0/16"}}
    ds.create(load(other))
    modes = lab.pool_modes("vxlan")
    changed = [n for n in ("default-ipv4-ippool", "other") if lab._patch_pool(ds, n, modes)]
    assert changed == ["default-ipv4-ippool"]
    for name in ("default-ipv4-ippool", "other"):
        spec = ds.get("IPPool", name).spec
        assert (spec.ipip_mode, spec.vxlan_mode) == ("Never", "Always")
        assert spec.nat_outgoing  # the rest of the pool is kept


def _route(dst, reason, in_sync=True, state="ok"):
    return {"dst": dst, "reason": reason, "in_sync": in_sync, "state": state}


def test_remote_block_routes_count_any_way_of_routing_a_remote_block():
    routes = [
        _route("10.244.0.0/26", "local block"),
        _route("10.244.0.1/32", "local workload pod-1"),
        _route("10.244.0.64/26", "learned from 10.99.0.2"),
        _route("10.244.0.128/26", "vxlan to n3"),
        _route("10.244.0.192/26", "direct to n4 (block affinity)"),
        _route("10.244.1.0/26", "ipip to n5", in_sync=False, state="missing"),  # no tunl0 here
        _route("10.244.1.64/26", "not desired (stale)", in_sync=False, state="not-desired"),
        _route("10.244.1.130/32", "vxlan to n6"),  # a VTEP, not a block
    ]
    assert lab.remote_block_routes(routes) == 3


def test_route_reflector_topology_expected_sessions_and_cli():
    """lab up --route-reflectors K: the last K nodes reflect; clients peer with the K reflectors,
    a reflector with every other node (the other reflectors as non-clients)."""
    from ctl import main as ctl_main
    from lab import topology

    assert [topology.expected_peers(i, 3, 2) for i in range(1, 6)] == [2, 2, 2, 4, 4]
    assert [topology.expected_peers(i, 3, 0) for i in range(1, 4)] == [2, 2, 2]
    assert ctl_main.RR_CLUSTER_ID == topology.RR_CLUSTER_ID
    args = build_parser().parse_args(["lab", "up", "--name", "x", "--route-reflectors", "2"])
    assert args.route_reflectors == 2
    with pytest.raises(lab.LabError, match="--route-reflectors"):
        lab.up("x", 3, 0, route_reflectors=9)
    peer = load(topology.RR_PEER)  # the article's BGPPeer is a valid resource
    assert peer.spec.peer_selector == "route-reflector == 'true'"
