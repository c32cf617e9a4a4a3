from ipaddress import IPv4Address, IPv4Interface

import pytest

from bgp.peers import BGPGlobal, NodeInfo, PeerSpec, mesh_peers


def node(name, addr, asn=None):
    return NodeInfo(name, IPv4Interface(addr) if addr else None, asn)


NODES = [node("a", "10.0.0.1/24"), node("b", "10.0.0.2/24", 64513), node("c", "10.0.0.3/24"),
         node("noaddr", None)]


def test_mesh_excludes_self_and_nodes_without_address():
    peers = mesh_peers(NODES[1], NODES, BGPGlobal())
    assert {p.name for p in peers} == {"a", "c"}


def test_only_lower_address_connects():
    peers = {p.name: p for p in mesh_peers(NODES[1], NODES, BGPGlobal())}
    assert peers["a"] == PeerSpec(IPv4Address("10.0.0.1"), 64512, 64513, True, "node-to-node mesh", "a")
    assert peers["c"].passive is False  # b (10.0.0.2) < c (10.0.0.3): b connects
    # and the other side agrees: exactly one side of each pair is active
    for p in mesh_peers(NODES[0], NODES, BGPGlobal()):
        assert p.passive is False


def test_asn_inherits_global():
    peers = {p.name: p for p in mesh_peers(NODES[0], NODES, BGPGlobal(asn=65000))}
    assert (peers["b"].asn, peers["b"].local_asn, peers["c"].asn) == (64513, 65000, 65000)


def test_mesh_disabled_or_local_without_address_gives_no_peers():
    assert mesh_peers(NODES[0], NODES, BGPGlobal(mesh_enabled=False)) == frozenset()
    assert mesh_peers(NODES[3], NODES, BGPGlobal()) == frozenset()


def test_duplicate_address_resolved_deterministically():
    dup = [node("z", "10.0.0.2/24"), *NODES]
    peers = mesh_peers(NODES[0], dup, BGPGlobal())
    assert sorted(p.name for p in peers) == ["b", "c"]
    assert mesh_peers(NODES[0], list(reversed(dup)), BGPGlobal()) == peers


def test_same_address_as_local_under_another_name_is_not_a_peer():
    assert mesh_peers(NODES[0], [node("a2", "10.0.0.1/24")], BGPGlobal()) == frozenset()


@pytest.mark.parametrize("kwargs,field", [({"asn": 0}, "BGPGlobal.asn"), ({"listen_port": 70000}, "listen_port")])
def test_bad_global_names_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        BGPGlobal(**kwargs)
