"""Unchanged sessions do not flap when the peer set changes (issue 9 item 2): a session that stays
(same address) while the cluster moves between the mesh, route reflectors and BGPPeers renders the
same ExaBGP neighbor but for its comment, so ExaBGP's reload keeps it (it tears down a neighbor
only when its definition changes: AS numbers, addresses, passive, connect port, hold time...)."""
from ipaddress import IPv4Address, IPv4Interface

from hypothesis import given, settings
from hypothesis import strategies as st

from bgp.exabgp_conf import ExaBGPConfig, render
from bgp.peers import BGPGlobal, ExplicitPeer, NodeInfo, PeerSpec, bgp_peers
from crds.selector import parse_selector

NAMES = ["a", "b", "c", "d"]
ARTICLE_PEER = ExplicitPeer(name="peer-with-route-reflectors", node_selector=parse_selector("all()"),
                            peer_selector=parse_selector("route-reflector == 'true'"))


def cluster(reflectors: frozenset[str]) -> list[NodeInfo]:
    return [NodeInfo(n, IPv4Interface(f"10.0.0.{i + 1}/24"), None,
                     frozenset({("route-reflector", "true")}) if n in reflectors else frozenset(),
                     rr_cluster_id="244.0.0.1" if n in reflectors else None)
            for i, n in enumerate(NAMES)]


def sessions(me: str, reflectors: frozenset[str], mesh: bool, bgppeer: bool,
             port: int) -> dict[IPv4Address, PeerSpec]:
    nodes = cluster(reflectors)
    local = next(n for n in nodes if n.name == me)
    specs = bgp_peers(local, nodes, BGPGlobal(mesh_enabled=mesh, listen_port=port),
                      [ARTICLE_PEER] if bgppeer else [])
    return {s.address: s for s in specs}


def neighbor(spec: PeerSpec, port: int) -> list[str]:
    """The neighbor as ExaBGP parses it: its block without the comment line."""
    cfg = ExaBGPConfig(router_id=IPv4Address("10.0.0.9"), local_address=IPv4Address("10.0.0.9"),
                       relay_command=("/usr/bin/socat",), peers=frozenset({spec}), port=port)
    block = render(cfg).split("neighbor ", 1)[1]
    return [line for line in block.splitlines() if not line.strip().startswith("#")]


states = st.tuples(st.frozensets(st.sampled_from(NAMES)), st.booleans(), st.booleans())


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(NAMES), states, states, st.sampled_from([179, 1790]))
def test_a_session_that_stays_renders_the_same_neighbor(me, before, after, port):
    old, new = sessions(me, *before, port), sessions(me, *after, port)
    for address in old.keys() & new.keys():
        assert neighbor(old[address], port) == neighbor(new[address], port), (old[address], new[address])


def test_the_article_switch_keeps_every_reflector_session():
    """Mesh -> c a reflector -> the BGPPeer -> mesh off: a's and c's session is the same one
    throughout (mesh, then node specific); only a's session to b goes."""
    steps = [(frozenset(), True, False), (frozenset("c"), True, False), (frozenset("c"), True, True),
             (frozenset("c"), False, True)]
    a_c = [sessions("a", *s, 179).get(IPv4Address("10.0.0.3")) for s in steps]
    assert a_c[1] is None  # c left the mesh and no BGPPeer yet: bgp.transition keeps it meanwhile
    assert a_c[0].peer_type == "node-to-node mesh" and a_c[3].peer_type == "node specific"
    assert neighbor(a_c[0], 179) == neighbor(a_c[2], 179) == neighbor(a_c[3], 179)
    assert set(sessions("a", *steps[3], 179)) == {IPv4Address("10.0.0.3")}


def test_each_session_connects_to_its_own_port():
    """Our nodes connect to each other on listenPort (mesh and BGPPeer sessions alike); a router
    named by a BGPPeer's peerIP 'address:port' on that port, whatever our listenPort is."""
    nodes = cluster(frozenset())
    router = ExplicitPeer("office", peer_ip=IPv4Address("192.168.1.1"), peer_port=1179, asn=65001)
    plain = ExplicitPeer("edge", peer_ip=IPv4Address("192.168.1.2"), asn=65002)
    specs = {str(s.address): s for s in bgp_peers(nodes[0], nodes, BGPGlobal(listen_port=1790), [router, plain])}
    assert {a: s.port for a, s in specs.items()} == {
        "10.0.0.2": 1790, "10.0.0.3": 1790, "10.0.0.4": 1790, "192.168.1.1": 1179, "192.168.1.2": 179}
    assert "    connect 1179;" in neighbor(specs["192.168.1.1"], 1790)
    assert "    connect 179;" in neighbor(specs["192.168.1.2"], 1790)
    assert "    connect 1790;" in neighbor(specs["10.0.0.2"], 1790)
