"""bgp.peers: TCP MD5 passwords (``nodeMeshPassword``, BGPPeer ``password``) on the sessions."""
from __future__ import annotations

from ipaddress import IPv4Address, IPv4Interface

from bgp.peers import (
    GLOBAL_PEER_TYPE, MESH_PEER_TYPE, NODE_PEER_TYPE, BGPGlobal, ExplicitPeer, NodeInfo, SecretRef,
    bgp_peers, explicit_peer, password_problems, secret_refs,
)
from crds import load

MESH_REF, PEER_REF = SecretRef("bgp-secrets", "mesh"), SecretRef("bgp-secrets", "router")
ROUTER = IPv4Address("192.0.2.1")


def node(i: int) -> NodeInfo:
    return NodeInfo(f"n{i}", IPv4Interface(f"10.0.0.{i}/24"), None)


NODES = [node(1), node(2), node(3)]


def passwords_by_address(peers) -> dict[str, str | None]:
    return {str(p.address): p.password for p in peers}


def test_mesh_sessions_carry_the_mesh_password():
    cfg = BGPGlobal(mesh_password=MESH_REF)
    peers = bgp_peers(NODES[0], NODES, cfg, passwords={MESH_REF: "m3sh"})
    assert passwords_by_address(peers) == {"10.0.0.2": "m3sh", "10.0.0.3": "m3sh"}
    assert {p.peer_type for p in peers} == {MESH_PEER_TYPE}


def test_without_a_password_reference_sessions_have_none():
    peers = bgp_peers(NODES[0], NODES, BGPGlobal(), passwords={MESH_REF: "unused"})
    assert passwords_by_address(peers) == {"10.0.0.2": None, "10.0.0.3": None}


def test_a_bgppeer_password_applies_to_its_sessions_only():
    router = ExplicitPeer("router", peer_ip=ROUTER, asn=65000, password=PEER_REF)
    peers = bgp_peers(NODES[0], NODES, BGPGlobal(), [router], passwords={PEER_REF: "r0uter"})
    assert passwords_by_address(peers) == {"10.0.0.2": None, "10.0.0.3": None, "192.0.2.1": "r0uter"}


def test_an_unresolved_password_leaves_the_sessions_out_and_says_why():
    """A missing Secret, a missing key, an empty or too long value: never a session without it."""
    cfg = BGPGlobal(mesh_password=MESH_REF)
    router = ExplicitPeer("router", peer_ip=ROUTER, asn=65000, password=PEER_REF)
    for passwords in ({}, {MESH_REF: "", PEER_REF: "x" * 81}):
        assert bgp_peers(NODES[0], NODES, cfg, [router], passwords=passwords) == frozenset()
    problems = password_problems(cfg, [router], {PEER_REF: "x" * 81})
    assert problems == [
        "BGPConfiguration default: nodeMeshPassword: secret 'bgp-secrets' key 'mesh' not found; "
        "its sessions are not configured",
        "BGPPeer router: password: secret 'bgp-secrets' key 'router' is 81 bytes, more than the "
        "kernel's 80; its sessions are not configured",
    ]
    assert password_problems(cfg, [router], {MESH_REF: "a", PEER_REF: "b"}) == []


def test_a_blocked_bgppeer_session_is_not_replaced_by_the_mesh_session_to_that_node():
    """A node-specific BGPPeer wins over the mesh for its address; while its password cannot be
    read, the mesh session (without that password) must not come up in its place."""
    peer = ExplicitPeer("to-n2", node="n1", peer_ip=IPv4Address("10.0.0.2"), password=PEER_REF)
    peers = bgp_peers(NODES[0], NODES, BGPGlobal(), [peer], passwords={})
    assert passwords_by_address(peers) == {"10.0.0.3": None}
    peers = bgp_peers(NODES[0], NODES, BGPGlobal(), [peer], passwords={PEER_REF: "pw"})
    assert {(str(p.address), p.peer_type, p.password) for p in peers} == {
        ("10.0.0.2", NODE_PEER_TYPE, "pw"), ("10.0.0.3", MESH_PEER_TYPE, None)}


def test_a_changed_password_changes_the_session():
    """The speaker compares PeerSpecs: a new password is a changed session (ExaBGP reconnects)."""
    cfg = BGPGlobal(mesh_password=MESH_REF)
    old = bgp_peers(NODES[0], NODES, cfg, passwords={MESH_REF: "old"})
    new = bgp_peers(NODES[0], NODES, cfg, passwords={MESH_REF: "new"})
    assert old != new and {p.address for p in old} == {p.address for p in new}


def test_secret_refs_and_the_bgppeer_model():
    spec = load({"apiVersion": "projectcalico.org/v3", "kind": "BGPPeer", "metadata": {"name": "r"},
                 "spec": {"peerIP": "192.0.2.1", "asNumber": 65000, "password": {
                     "secretKeyRef": {"name": "bgp-secrets", "key": "router"}}}}).spec
    router = explicit_peer("r", spec, 120.0)
    assert router.password == PEER_REF and router.peer_type == GLOBAL_PEER_TYPE
    assert secret_refs(BGPGlobal(mesh_password=MESH_REF), [router]) == {MESH_REF, PEER_REF}
    assert secret_refs(BGPGlobal(), []) == frozenset()
