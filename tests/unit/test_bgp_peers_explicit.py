"""bgp.peers.bgp_peers: route reflectors and BGPPeers, as Calico's confd computes them."""
from __future__ import annotations

from ipaddress import IPv4Address, IPv4Interface

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bgp.peers import (
    GLOBAL_PEER_TYPE, MESH_PEER_TYPE, NODE_PEER_TYPE, BGPGlobal, ExplicitPeer, NodeInfo, bgp_peers,
    explicit_peer,
)
from crds import load
from crds.selector import parse_selector

RR_LABEL = frozenset({("route-reflector", "true")})


def node(i: int, *, rr: str | None = None, asn: int | None = None, labels=frozenset()) -> NodeInfo:
    return NodeInfo(f"n{i}", IPv4Interface(f"10.0.0.{i}/24"), asn,
                    labels=labels | (RR_LABEL if rr else frozenset()), rr_cluster_id=rr)


def sessions(local, nodes, cfg=BGPGlobal(), explicit=()):
    return {(str(p.address), p.peer_type, p.rr_client, p.passive)
            for p in bgp_peers(local, nodes, cfg, explicit)}


# The source article: mesh off, two reflectors with cluster ID 244.0.0.1, and one global BGPPeer
# nodeSelector all(), peerSelector route-reflector == 'true'.
ARTICLE_PEER = ExplicitPeer("peer-with-route-reflectors", node_selector=parse_selector("all()"),
                            peer_selector=parse_selector("route-reflector == 'true'"))
NODES = [node(1), node(2), node(3), node(8, rr="244.0.0.1"), node(9, rr="244.0.0.1")]
NO_MESH = BGPGlobal(mesh_enabled=False)


# The article's peer has a nodeSelector: per node in Calico ("Per-node BGP peers apply to one or
# more nodes ... by the node's name exactly, or using a label selector"), so "node specific" in
# node status, as are the reflectors' reverse sessions.
def test_article_route_reflectors_clients_peer_with_both_reflectors():
    assert sessions(NODES[0], NODES, NO_MESH, [ARTICLE_PEER]) == {
        ("10.0.0.8", NODE_PEER_TYPE, False, False), ("10.0.0.9", NODE_PEER_TYPE, False, False)}


def test_article_reflector_has_every_node_as_client_and_the_other_reflector_as_non_client():
    assert sessions(NODES[3], NODES, NO_MESH, [ARTICLE_PEER]) == {
        ("10.0.0.1", NODE_PEER_TYPE, True, True), ("10.0.0.2", NODE_PEER_TYPE, True, True),
        ("10.0.0.3", NODE_PEER_TYPE, True, True), ("10.0.0.9", NODE_PEER_TYPE, False, False)}


def test_peer_types_as_calicoctl_shows_them():
    """Global only without node and nodeSelector; a reverse session is node specific (it exists
    for the selected node alone) even when its BGPPeer is global."""
    by_ip = ExplicitPeer("tor", peer_ip=IPv4Address("192.0.2.1"), asn=65000)
    to_rr = ExplicitPeer("to-rr", peer_selector=parse_selector("route-reflector == 'true'"))
    assert sessions(NODES[0], NODES, NO_MESH, [by_ip, to_rr]) == {
        ("192.0.2.1", GLOBAL_PEER_TYPE, False, False), ("10.0.0.8", GLOBAL_PEER_TYPE, False, False),
        ("10.0.0.9", GLOBAL_PEER_TYPE, False, False)}
    assert ("10.0.0.1", NODE_PEER_TYPE, True, True) in sessions(NODES[3], NODES, NO_MESH, [to_rr])


def test_reflectors_leave_the_mesh_on_both_sides():
    assert sessions(NODES[0], NODES) == {("10.0.0.2", MESH_PEER_TYPE, False, False),
                                         ("10.0.0.3", MESH_PEER_TYPE, False, False)}
    assert sessions(NODES[3], NODES) == set()


def test_mesh_and_reflectors_together_during_a_migration_keep_one_session_per_address():
    """Make-before-break: with the mesh still on, the BGPPeer adds the reflector sessions and the
    mesh sessions stay; a session to one address is there once, as the most specific type."""
    both = sessions(NODES[0], NODES, BGPGlobal(), [ARTICLE_PEER])
    assert {a for a, *_ in both} == {"10.0.0.2", "10.0.0.3", "10.0.0.8", "10.0.0.9"}
    specific = ExplicitPeer("to-n2", node="n1", peer_ip=IPv4Address("10.0.0.2"), asn=64512)
    types = {a: t for a, t, *_ in sessions(NODES[0], NODES, BGPGlobal(), [ARTICLE_PEER, specific])}
    assert types["10.0.0.2"] == NODE_PEER_TYPE and types["10.0.0.3"] == MESH_PEER_TYPE


def test_external_peer_by_ip_applies_per_node_and_is_active_ebgp():
    router = ExplicitPeer("office", node="n2", peer_ip=IPv4Address("192.168.1.1"), peer_port=1179,
                          asn=65001)
    [spec] = bgp_peers(NODES[1], NODES, NO_MESH, [router])
    assert (str(spec.address), spec.asn, spec.local_asn, spec.passive, spec.port, spec.peer_type) == (
        "192.168.1.1", 65001, 64512, False, 1179, NODE_PEER_TYPE)
    assert bgp_peers(NODES[0], NODES, NO_MESH, [router]) == frozenset()  # another node: not its peer


def test_a_peer_selector_never_selects_ourselves():
    everyone = ExplicitPeer("all", peer_selector=parse_selector("all()"))
    assert "10.0.0.1" not in {a for a, *_ in sessions(NODES[0], NODES, NO_MESH, [everyone])}


@settings(max_examples=100, deadline=None)
@given(st.permutations(NODES), st.permutations([ARTICLE_PEER, ExplicitPeer(
    "ext", peer_ip=IPv4Address("10.0.0.8"), asn=64512)]), st.booleans())
def test_any_order_gives_the_same_sessions(nodes, explicit, mesh):
    cfg = BGPGlobal(mesh_enabled=mesh)
    for local in NODES:
        assert bgp_peers(local, nodes, cfg, explicit) == bgp_peers(local, NODES, cfg, [ARTICLE_PEER, ExplicitPeer(
            "ext", peer_ip=IPv4Address("10.0.0.8"), asn=64512)])


def _bgppeer(spec: dict):
    return load({"apiVersion": "projectcalico.org/v3", "kind": "BGPPeer",
                 "metadata": {"name": "p"}, "spec": spec})


def test_explicit_peer_from_a_bgppeer_resource():
    res = _bgppeer({"nodeSelector": "all()", "peerSelector": "route-reflector == 'true'"})
    assert explicit_peer("p", res.spec, 120.0).applies_to(NODES[0])
    res = _bgppeer({"node": "n2", "peerIP": "192.168.1.1:1179", "asNumber": 65001})
    peer = explicit_peer("p", res.spec, 60.0)
    assert (peer.peer_ip, peer.peer_port, peer.asn, peer.max_restart_time) == (
        IPv4Address("192.168.1.1"), 1179, 65001, 60.0)
    with pytest.raises(ValueError, match="peerIP: fd00::1 is IPv6"):
        explicit_peer("p", _bgppeer({"peerIP": "fd00::1", "asNumber": 65001}).spec, 120.0)


def test_an_explicit_peer_needs_exactly_one_target_and_one_scope():
    with pytest.raises(ValueError, match="exactly one of peerIP and peerSelector"):
        ExplicitPeer("x")
    with pytest.raises(ValueError, match="node and nodeSelector cannot both be set"):
        ExplicitPeer("x", node="n1", node_selector=parse_selector("all()"),
                     peer_ip=IPv4Address("1.2.3.4"))


def test_reverse_peering_manual_leaves_the_selected_node_alone():
    manual = ExplicitPeer("manual", node_selector=parse_selector("all()"),
                          peer_selector=parse_selector("route-reflector == 'true'"), reverse=False)
    assert sessions(NODES[3], NODES, NO_MESH, [manual]) == {("10.0.0.9", NODE_PEER_TYPE, False, False)}
    res = _bgppeer({"peerSelector": "all()", "reversePeering": "Manual"})
    assert explicit_peer("p", res.spec, 120.0).reverse is False
