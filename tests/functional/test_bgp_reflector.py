"""Our Speaker as an RFC 4456 route reflector (real ExaBGP), with our Speakers and BIRD as clients.

The reflector's namespace holds a bridge (its address on it); every client joins the bridge by a
veth, so a reflected next hop (the originating client's address) is on-link for every client, as
on a Calico node network. Sessions come from ``bgp_peers`` with the source article's setup: no
mesh, the reflector has cluster ID 244.0.0.1 and the label route-reflector=true, and one BGPPeer
(nodeSelector all(), peerSelector route-reflector == 'true').
"""
from __future__ import annotations

import os
import secrets
import signal
import subprocess
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path

import pytest

from bgp.exabgp_share import SHARED_NOTICE
from bgp.peers import BGPGlobal, ExplicitPeer, NodeInfo, PeerSpec, bgp_peers
from bgp.rib import LearnedRoute
from bgp.speaker import Speaker
from crds.selector import parse_selector
from tests.helpers import LoopThread, wait_for

pytestmark = pytest.mark.root

R, A, B, BIRD, C = (IPv4Address(f"10.251.0.{i}") for i in (100, 1, 2, 3, 4))
CLUSTER = IPv4Address("244.0.0.1")
POOL = IPv4Network("10.244.0.0/16")
BLOCK_A, BLOCK_B, BLOCK_BIRD, BLOCK_R = (IPv4Network(f"10.244.{i}.0/26") for i in (1, 2, 7, 9))
ARTICLE_PEER = ExplicitPeer(name="peer-with-route-reflectors", node_selector=parse_selector("all()"),
                            peer_selector=parse_selector("route-reflector == 'true'"))
NODES = [NodeInfo("r", IPv4Interface(f"{R}/24"), None, frozenset({("route-reflector", "true")}),
                  rr_cluster_id=str(CLUSTER)),
         NodeInfo("a", IPv4Interface(f"{A}/24"), None), NodeInfo("b", IPv4Interface(f"{B}/24"), None)]
NO_MESH = BGPGlobal(mesh_enabled=False)


def _sessions(name: str, nodes: list[NodeInfo] = NODES) -> frozenset[PeerSpec]:
    me = next(n for n in nodes if n.name == name)
    return bgp_peers(me, nodes, NO_MESH, [ARTICLE_PEER])


def _fabric(netns) -> str:
    """The reflector's namespace, with br0 carrying its address."""
    ns = netns("rrr")
    subprocess.run(["ip", "-n", ns, "link", "add", "br0", "type", "bridge"], check=True)
    subprocess.run(["ip", "-n", ns, "addr", "add", f"{R}/24", "dev", "br0"], check=True)
    subprocess.run(["ip", "-n", ns, "link", "set", "br0", "up"], check=True)
    return ns


def _join(fabric: str, ns: str, address: IPv4Address) -> None:
    outer, inner = f"v{secrets.token_hex(5)}", f"v{secrets.token_hex(5)}"
    subprocess.run(["ip", "link", "add", outer, "type", "veth", "peer", "name", inner], check=True)
    subprocess.run(["ip", "link", "set", outer, "netns", fabric], check=True)
    subprocess.run(["ip", "-n", fabric, "link", "set", outer, "master", "br0", "up"], check=True)
    subprocess.run(["ip", "link", "set", inner, "netns", ns], check=True)
    subprocess.run(["ip", "-n", ns, "link", "set", inner, "name", "eth0"], check=True)
    subprocess.run(["ip", "-n", ns, "addr", "add", f"{address}/24", "dev", "eth0"], check=True)
    subprocess.run(["ip", "-n", ns, "link", "set", "eth0", "up"], check=True)


def _speaker(lt: LoopThread, ns: str, me: IPv4Address, run_dir: Path, peers: frozenset[PeerSpec],
             own: frozenset[IPv4Network], cluster_id: IPv4Address | None = None,
             on_change=lambda: None) -> Speaker:
    async def make() -> Speaker:
        sp = Speaker(node_name=ns, router_id=me, local_address=me, local_asn=64512, run_dir=run_dir,
                     on_change=on_change, netns=ns, hold_time=9, sync_deadline=60.0)
        sp.set_import_filter(frozenset({POOL}), own)
        await sp.set_peers(peers, cluster_id=cluster_id)
        await sp.set_advertisements(own)
        await sp.start()
        return sp
    return lt.run(make())


def _learned(lt: LoopThread, sp: Speaker) -> frozenset[LearnedRoute]:
    return lt.call(sp.learned_routes)


def _all_up(lt: LoopThread, sp: Speaker, count: int) -> bool:
    states = [s.state for s in lt.call(sp.peer_status)]
    return states == ["up"] * count


def test_reflector_carries_a_clients_block_to_the_other_client(netns, loop_thread, tmp_path):
    lt = loop_thread
    fabric, ns_a, ns_b = _fabric(netns), netns("rra"), netns("rrb")
    _join(fabric, ns_a, A)
    _join(fabric, ns_b, B)
    assert {(p.address, p.rr_client) for p in _sessions("r")} == {(A, True), (B, True)}
    speakers = []
    try:
        r = _speaker(lt, fabric, R, tmp_path / "r", _sessions("r"), frozenset(), CLUSTER)
        speakers.append(r)
        a = _speaker(lt, ns_a, A, tmp_path / "a", _sessions("a"), frozenset({BLOCK_A}))
        speakers.append(a)
        b = _speaker(lt, ns_b, B, tmp_path / "b", _sessions("b"), frozenset({BLOCK_B}))
        speakers.append(b)
        wait_for(lambda: _all_up(lt, r, 2) and _all_up(lt, a, 1) and _all_up(lt, b, 1), 30,
                 what="both clients' sessions to the reflector up")

        via_r = LearnedRoute(BLOCK_A, A, R, originator_id=A, cluster_list=(CLUSTER,))
        wait_for(lambda: _learned(lt, b) == {via_r}, 15, what="b learns a's block through r")
        wait_for(lambda: _learned(lt, a) == {LearnedRoute(BLOCK_B, B, R, B, (CLUSTER,))}, 15,
                 what="a learns b's block through r")
        assert _learned(lt, r) == {LearnedRoute(BLOCK_A, A, A), LearnedRoute(BLOCK_B, B, B)}
        assert set(lt.call(r.reflected)) == {A, B}
        assert lt.call(a.counters).get("rejected_originator_loop", 0) == 0  # never sent back to a

        lt.run(a.set_advertisements(frozenset()))
        wait_for(lambda: _learned(lt, b) == frozenset(), 15, what="a's withdrawal reaches b")
        assert lt.call(r.reflected) == {A: {BLOCK_B: lt.call(r.reflected)[A][BLOCK_B]}}

        lt.run(a.set_advertisements(frozenset({BLOCK_A})))
        wait_for(lambda: _learned(lt, b) == {via_r}, 15, what="a's block back on b")
    finally:
        for sp in speakers:
            lt.run(sp.stop())


def test_one_route_to_two_clients_and_a_client_reset(netns, loop_thread, tmp_path):
    """A's block reaches b and c through one route object in the reflector's ExaBGP
    (bgp/exabgp_share.py): c's session reset and a's withdrawal still reach each client right."""
    lt = loop_thread
    nodes = [*NODES, NodeInfo("c", IPv4Interface(f"{C}/24"), None)]
    fabric, ns_a, ns_b, ns_c = _fabric(netns), netns("rra"), netns("rrb"), netns("rrc")
    for ns, address in ((ns_a, A), (ns_b, B), (ns_c, C)):
        _join(fabric, ns, address)
    speakers = []
    try:
        r = _speaker(lt, fabric, R, tmp_path / "r", _sessions("r", nodes), frozenset(), CLUSTER)
        speakers.append(r)
        a = _speaker(lt, ns_a, A, tmp_path / "a", _sessions("a", nodes), frozenset({BLOCK_A}))
        speakers.append(a)
        b = _speaker(lt, ns_b, B, tmp_path / "b", _sessions("b", nodes), frozenset())
        speakers.append(b)
        c = _speaker(lt, ns_c, C, tmp_path / "c", _sessions("c", nodes), frozenset())
        speakers.append(c)
        wait_for(lambda: _all_up(lt, r, 3), 30, what="the three clients' sessions up")
        assert SHARED_NOTICE in (tmp_path / "r" / "exabgp.log").read_text()

        via_r = LearnedRoute(BLOCK_A, A, R, originator_id=A, cluster_list=(CLUSTER,))
        for client, name in ((b, "b"), (c, "c")):
            wait_for(lambda client=client: _learned(lt, client) == {via_r}, 15,
                     what=f"{name} learns a's block through r")

        lt.run(c.stop())
        speakers.remove(c)
        wait_for(lambda: [s.state for s in lt.call(r.peer_status)].count("up") == 2, 30,
                 what="r sees c's session down")
        c = _speaker(lt, ns_c, C, tmp_path / "c2", _sessions("c", nodes), frozenset())
        speakers.append(c)
        wait_for(lambda: _learned(lt, c) == {via_r}, 30, what="a restarted c learns a's block again")
        assert _learned(lt, b) == {via_r}

        lt.run(a.set_advertisements(frozenset()))
        for client, name in ((b, "b"), (c, "c")):
            wait_for(lambda client=client: _learned(lt, client) == frozenset(), 15,
                     what=f"a's withdrawal reaches {name}")
        lt.run(a.set_advertisements(frozenset({BLOCK_A})))
        for client, name in ((b, "b"), (c, "c")):
            wait_for(lambda client=client: _learned(lt, client) == {via_r}, 15,
                     what=f"a's block back on {name}")
    finally:
        for sp in speakers:
            lt.run(sp.stop())


def test_a_restarted_reflector_defers_end_of_rib_until_it_has_what_it_reflects(netns, loop_thread,
                                                                               tmp_path):
    """RFC 4724 4.1 for a lone reflector: r restarts (its ExaBGP gone without a Cease, as when
    its agent is SIGKILLed) while b is slow to come back (its ExaBGP stopped). a keeps b's block
    as stale; the restarted r must not send a End-of-RIB (on which a drops what is still stale)
    before b's session is up and b's block reflected: a's best routes hold b's block throughout."""
    lt = loop_thread
    fabric, ns_a, ns_b = _fabric(netns), netns("rra"), netns("rrb")
    _join(fabric, ns_a, A)
    _join(fabric, ns_b, B)
    via_r = LearnedRoute(BLOCK_B, B, R, originator_id=B, cluster_list=(CLUSTER,))
    seen: list[frozenset[LearnedRoute]] = []  # a's best routes at each change, from b's stop on
    watching: list[Speaker] = []  # a, once its routes are to be recorded
    speakers, stopped = [], None
    try:
        r = _speaker(lt, fabric, R, tmp_path / "r", _sessions("r"), frozenset(), CLUSTER)
        speakers.append(r)
        a = _speaker(lt, ns_a, A, tmp_path / "a", _sessions("a"), frozenset({BLOCK_A}),
                     on_change=lambda: watching and seen.append(watching[0].learned_routes()))
        speakers.append(a)
        b = _speaker(lt, ns_b, B, tmp_path / "b", _sessions("b"), frozenset({BLOCK_B}))
        speakers.append(b)
        wait_for(lambda: _learned(lt, a) == {via_r}, 30, what="a learns b's block through r")

        stopped = lt.call(lambda: b.child_pid)
        os.kill(stopped, signal.SIGSTOP)
        watching.append(a)
        os.kill(lt.call(lambda: r.child_pid), signal.SIGKILL)  # no Cease: what a SIGKILLed agent leaves
        lt.run(r.stop())
        speakers.remove(r)
        wait_for(lambda: not _all_up(lt, a, 1), 15, what="a sees r go")
        eors = lt.call(a.counters).get("end_of_rib_received", 0)
        r = _speaker(lt, fabric, R, tmp_path / "r2", _sessions("r"), frozenset(), CLUSTER)
        speakers.append(r)
        wait_for(lambda: _all_up(lt, a, 1), 30, what="a's session to the restarted r")
        # A probe r sends a after whatever it sent at session up (an End-of-RIB included).
        lt.run(r.set_advertisements(frozenset({BLOCK_R})))
        wait_for(lambda: BLOCK_R in {x.prefix for x in _learned(lt, a)}, 15, what="a learns r's probe")
        assert lt.call(a.counters).get("end_of_rib_received", 0) == eors, "End-of-RIB before b's block"

        os.kill(stopped, signal.SIGCONT)
        stopped = None
        wait_for(lambda: _all_up(lt, r, 2), 40, what="b's session to the restarted r")
        wait_for(lambda: lt.call(a.counters).get("end_of_rib_received", 0) > eors, 15,
                 what="r's End-of-RIB to a once it has b's block")
        assert {x.prefix for x in _learned(lt, a)} == {BLOCK_B, BLOCK_R}
    finally:
        if stopped is not None:
            os.kill(stopped, signal.SIGCONT)
        for sp in speakers:
            lt.run(sp.stop())
    assert seen and all(BLOCK_B in {x.prefix for x in routes} for routes in seen), seen


BIRD_CONF = """\
router id {bird};
log "{log}" all;
protocol device {{}}
protocol static originated {{
    ipv4;
    route {block} blackhole;
}}
protocol bgp reflector {{
    local {bird} as 64512;
    neighbor {r} as 64512;   # a plain iBGP session: `rr client` belongs on the reflector's side
    direct;
    passive on;
    hold time 9;
    ipv4 {{
        import all;
        export filter {{
            if source != RTS_STATIC then reject;
            bgp_community.add((64512, 100));  # passed on unchanged by the reflector
            bgp_local_pref = 200;
            accept;
        }};
        next hop self;
    }};
}}
"""


def _bird(ns: str, workdir: Path, procs, template: str = BIRD_CONF) -> Path:
    workdir.mkdir(parents=True, exist_ok=True)
    conf, sock = workdir / "bird.conf", workdir / "bird.ctl"
    conf.write_text(template.format(bird=BIRD, r=R, block=BLOCK_BIRD, log=workdir / "bird.log"))
    subprocess.run(["bird", "-p", "-c", str(conf)], check=True)
    procs.add(subprocess.Popen(["ip", "netns", "exec", ns, "bird", "-f", "-c", str(conf), "-s", str(sock),
                                "-P", str(workdir / "bird.pid")],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    wait_for(sock.exists, 10, what="bird control socket")
    return sock


def _birdc(sock: Path, *args: str) -> str:
    return subprocess.run(["birdc", "-s", str(sock), *args], capture_output=True, text=True,
                          timeout=10, check=False).stdout


def test_bird_as_a_client_of_our_reflector(netns, procs, loop_thread, tmp_path):
    lt = loop_thread
    fabric, ns_a, ns_bird = _fabric(netns), netns("rra"), netns("rrbird")
    _join(fabric, ns_a, A)
    _join(fabric, ns_bird, BIRD)
    sock = _bird(ns_bird, tmp_path / "bird", procs)
    bird_peer = PeerSpec(address=BIRD, asn=64512, local_asn=64512, passive=False, peer_type="global",
                         name="bird", rr_client=True)
    speakers = []
    try:
        r = _speaker(lt, fabric, R, tmp_path / "r", frozenset({*_sessions("r"), bird_peer})
                     - {p for p in _sessions("r") if p.address == B}, frozenset(), CLUSTER)
        speakers.append(r)
        a = _speaker(lt, ns_a, A, tmp_path / "a", _sessions("a"), frozenset({BLOCK_A}))
        speakers.append(a)
        wait_for(lambda: _all_up(lt, r, 2) and _all_up(lt, a, 1), 30, what="a's and BIRD's sessions up")

        def bird_route() -> str:
            text = _birdc(sock, "show", "route", "for", str(BLOCK_A), "all")
            return text if str(BLOCK_A) in text else ""
        route = wait_for(bird_route, 15, what="BIRD learns a's block through our reflector")
        assert f"via {A} on eth0" in route, route  # next hop unchanged: a, not the reflector
        assert f"BGP.originator_id: {A}" in route, route
        assert f"BGP.cluster_list: {CLUSTER}" in route, route
        wait_for(lambda: _learned(lt, a) == {LearnedRoute(BLOCK_BIRD, BIRD, R, BIRD, (CLUSTER,))}, 15,
                 what="a learns BIRD's block through r")
        [learned] = _learned(lt, a)
        assert "local-preference 200" in learned.attributes, learned.attributes
        assert "community [ 64512:100 ]" in learned.attributes, learned.attributes
        assert "BGP.local_pref: 100" in route, route  # ours: ExaBGP's iBGP default, passed on

        lt.run(a.set_advertisements(frozenset()))
        wait_for(lambda: bird_route() == "", 15, what="BIRD drops a's withdrawn block")
    finally:
        for sp in speakers:
            lt.run(sp.stop())


# BIRD as a graceful-restart helper of our reflector: it keeps what r sent as stale while r is
# down, and drops whatever is still stale at r's End-of-RIB (its log says when, 'debug states').
BIRD_GR_CONF = BIRD_CONF.replace("    hold time 9;\n", "    hold time 9;\n    graceful restart on;\n"
                                 "    debug {{ states, events }};\n")
GR_ACTIVE = "Neighbor graceful restart active"


def test_a_bird_client_keeps_the_other_clients_block_while_our_reflector_restarts(netns, procs,
                                                                                 loop_thread, tmp_path):
    """The restarted-reflector test above with BIRD as the client that holds the other client's
    block: BIRD keeps a's block, its graceful restart still active, until a is back and r has
    reflected a's block to it; only then does r's End-of-RIB end BIRD's restart."""
    lt = loop_thread
    fabric, ns_a, ns_bird = _fabric(netns), netns("rra"), netns("rrbird")
    _join(fabric, ns_a, A)
    _join(fabric, ns_bird, BIRD)
    sock = _bird(ns_bird, tmp_path / "bird", procs, BIRD_GR_CONF)
    bird_peer = PeerSpec(address=BIRD, asn=64512, local_asn=64512, passive=False, peer_type="global",
                         name="bird", rr_client=True)
    r_sessions = frozenset({*_sessions("r"), bird_peer}) - {p for p in _sessions("r") if p.address == B}

    def bird_has(block: IPv4Network) -> bool:
        return str(block) in _birdc(sock, "show", "route", "for", str(block))

    def gr_active() -> bool:
        return GR_ACTIVE in _birdc(sock, "show", "protocols", "all", "reflector")

    speakers, stopped = [], None
    try:
        r = _speaker(lt, fabric, R, tmp_path / "r", r_sessions, frozenset(), CLUSTER)
        speakers.append(r)
        a = _speaker(lt, ns_a, A, tmp_path / "a", _sessions("a"), frozenset({BLOCK_A}))
        speakers.append(a)
        wait_for(lambda: bird_has(BLOCK_A), 30, what="BIRD learns a's block through r")

        stopped = lt.call(lambda: a.child_pid)
        os.kill(stopped, signal.SIGSTOP)
        os.kill(lt.call(lambda: r.child_pid), signal.SIGKILL)  # no Cease: what a SIGKILLed agent leaves
        lt.run(r.stop())
        speakers.remove(r)
        wait_for(gr_active, 15, what="BIRD's graceful restart for r active")
        r = _speaker(lt, fabric, R, tmp_path / "r2", r_sessions, frozenset(), CLUSTER)
        speakers.append(r)
        wait_for(lambda: any(p.address == BIRD and p.state == "up" for p in lt.call(r.peer_status)), 30,
                 what="BIRD's session to the restarted r")
        lt.run(r.set_advertisements(frozenset({BLOCK_R})))  # a probe after what r sent at session up
        wait_for(lambda: bird_has(BLOCK_R), 15, what="BIRD learns r's probe")
        assert bird_has(BLOCK_A) and gr_active(), "r's End-of-RIB came before a's block"

        os.kill(stopped, signal.SIGCONT)
        stopped = None
        wait_for(lambda: not gr_active(), 40, what="r's End-of-RIB ends BIRD's graceful restart")
        assert bird_has(BLOCK_A) and bird_has(BLOCK_R)
        assert "Neighbor graceful restart done" in (tmp_path / "bird" / "bird.log").read_text()
    finally:
        if stopped is not None:
            os.kill(stopped, signal.SIGCONT)
        for sp in speakers:
            lt.run(sp.stop())


BIRD_REFLECTOR_CONF = """\
router id {r};
log "{log}" all;
protocol device {{}}
template bgp our_node {{
    local {r} as 64512;
    direct;
    rr client;
    rr cluster id {cluster};
    hold time 9;
    ipv4 {{ import all; export all; }};
}}
protocol bgp node_a from our_node {{ neighbor {a} as 64512; }}
protocol bgp node_b from our_node {{ neighbor {b} as 64512; }}
"""


def test_bird_as_the_reflector_for_our_nodes(netns, procs, loop_thread, tmp_path):
    """Issue 9 item 8: BIRD 2 is the route reflector (the source article's cluster ID), two of our
    speakers its clients. Each of ours learns the other's block with the next hop unchanged, the
    originator and BIRD's cluster ID; BIRD's RIB holds both; a withdrawal passes through it."""
    lt = loop_thread
    fabric, ns_a, ns_b = _fabric(netns), netns("rra"), netns("rrb")
    _join(fabric, ns_a, A)
    _join(fabric, ns_b, B)
    workdir = tmp_path / "bird"
    workdir.mkdir()
    conf, sock = workdir / "bird.conf", workdir / "bird.ctl"
    conf.write_text(BIRD_REFLECTOR_CONF.format(r=R, a=A, b=B, cluster=CLUSTER, log=workdir / "bird.log"))
    subprocess.run(["bird", "-p", "-c", str(conf)], check=True)
    procs.add(subprocess.Popen(["ip", "netns", "exec", fabric, "bird", "-f", "-c", str(conf),
                                "-s", str(sock), "-P", str(workdir / "bird.pid")],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    wait_for(sock.exists, 10, what="bird control socket")
    assert {p.address for p in _sessions("a")} == {p.address for p in _sessions("b")} == {R}
    speakers = []
    try:
        a = _speaker(lt, ns_a, A, tmp_path / "a", _sessions("a"), frozenset({BLOCK_A}))
        speakers.append(a)
        b = _speaker(lt, ns_b, B, tmp_path / "b", _sessions("b"), frozenset({BLOCK_B}))
        speakers.append(b)
        wait_for(lambda: _all_up(lt, a, 1) and _all_up(lt, b, 1), 30,
                 what="both of our nodes' sessions to BIRD up")

        wait_for(lambda: _learned(lt, b) == {LearnedRoute(BLOCK_A, A, R, A, (CLUSTER,))}, 15,
                 what="b learns a's block through BIRD")
        wait_for(lambda: _learned(lt, a) == {LearnedRoute(BLOCK_B, B, R, B, (CLUSTER,))}, 15,
                 what="a learns b's block through BIRD")
        for block, node in ((BLOCK_A, A), (BLOCK_B, B)):
            route = _birdc(sock, "show", "route", "for", str(block), "all")
            assert f"via {node} on br0" in route, route
        assert lt.call(a.counters).get("rejected_originator_loop", 0) == 0

        lt.run(a.set_advertisements(frozenset()))
        wait_for(lambda: _learned(lt, b) == frozenset(), 15, what="a's withdrawal reaches b")
        wait_for(lambda: str(BLOCK_A) not in _birdc(sock, "show", "route", "for", str(BLOCK_A)), 15,
                 what="BIRD drops a's block")
    finally:
        for sp in speakers:
            lt.run(sp.stop())
