"""Make-before-break with real ExaBGP (issue 9 item 3): three of our Speakers switch from a full
mesh to a route reflector in the source article's order, and back, through ``want_peers``; no
speaker is ever without a route to another's block, checked on every change it reports.

Topology from test_bgp_reflector: r's namespace holds the bridge, a and b join it.
"""
from __future__ import annotations

from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path

import pytest

from bgp.peers import BGPGlobal, NodeInfo, PeerSpec, bgp_peers
from bgp.speaker import DRAINING_REFLECTION, DRAINING_SESSION, Speaker
from bgp.transition import DEADLINE
from tests.functional.test_bgp_reflector import ARTICLE_PEER, CLUSTER, POOL, _fabric, _join
from tests.helpers import LoopThread, wait_for

pytestmark = pytest.mark.root

R, A, B = (IPv4Address(f"10.251.0.{i}") for i in (100, 1, 2))
BLOCKS = {"r": IPv4Network("10.244.9.0/26"), "a": IPv4Network("10.244.1.0/26"),
          "b": IPv4Network("10.244.2.0/26")}
ADDRESS = {"r": R, "a": A, "b": B}
RR_LABEL = frozenset({("route-reflector", "true")})


def nodes(reflector: bool) -> list[NodeInfo]:
    return [NodeInfo("r", IPv4Interface(f"{R}/24"), None, RR_LABEL if reflector else frozenset(),
                     rr_cluster_id=str(CLUSTER) if reflector else None),
            NodeInfo("a", IPv4Interface(f"{A}/24"), None), NodeInfo("b", IPv4Interface(f"{B}/24"), None)]


def sessions(name: str, *, reflector: bool, bgppeer: bool, mesh: bool) -> frozenset[PeerSpec]:
    infos = nodes(reflector)
    me = next(n for n in infos if n.name == name)
    return bgp_peers(me, infos, BGPGlobal(mesh_enabled=mesh), [ARTICLE_PEER] if bgppeer else [])


class Watched:
    """A Speaker whose every change is checked: does it still have a route to each other block?"""

    def __init__(self, lt: LoopThread, name: str, ns: str, run_dir: Path, deadline: float) -> None:
        self.name, self.gaps, self.lt = name, [], lt
        self.others = {b for n, b in BLOCKS.items() if n != name}
        self.watching = False
        me = ADDRESS[name]
        self.sp = Speaker(node_name=ns, router_id=me, local_address=me, local_asn=64512,
                          run_dir=run_dir, on_change=self._check, netns=ns, hold_time=9,
                          drain_deadline=deadline)

    def _check(self) -> None:
        if not self.watching:
            return
        missing = self.others - {r.prefix for r in self.sp.learned_routes()}
        if missing:
            self.gaps.append(sorted(map(str, missing)))

    def start(self, peers: frozenset[PeerSpec]) -> None:
        async def go() -> None:
            own = BLOCKS[self.name]
            self.sp.set_import_filter(frozenset({POOL}), frozenset({own}))
            await self.sp.want_peers(peers)
            await self.sp.set_advertisements(frozenset({own}))
            await self.sp.start()
        self.lt.run(go())

    def want(self, peers: frozenset[PeerSpec], reflector: bool) -> None:
        cluster = CLUSTER if reflector and self.name == "r" else None
        self.lt.run(self.sp.want_peers(peers, cluster))

    def configured(self) -> set[IPv4Address]:
        return {s.address for s in self.lt.call(self.sp.peer_status)}

    def learned(self) -> dict[IPv4Network, IPv4Address]:
        return {r.prefix: r.peer for r in self.lt.call(self.sp.learned_routes)}

    def settled(self, peers: set[IPv4Address]) -> bool:
        status = self.lt.call(self.sp.peer_status)
        return ({s.address for s in status} == peers and all(s.state == "up" for s in status)
                and set(self.learned()) == self.others)


def step(speakers: dict[str, Watched], *, reflector: bool, bgppeer: bool, mesh: bool) -> None:
    for name, w in speakers.items():
        w.want(sessions(name, reflector=reflector, bgppeer=bgppeer, mesh=mesh), reflector)


@pytest.fixture
def trio(request, netns, loop_thread, tmp_path):
    """r, a and b in a full mesh, every block learned; ``request.param``: the drain deadline."""
    lt, deadline = loop_thread, getattr(request, "param", DEADLINE)
    fabric, ns_a, ns_b = _fabric(netns), netns("mba"), netns("mbb")
    _join(fabric, ns_a, A)
    _join(fabric, ns_b, B)
    speakers = {n: Watched(lt, n, ns, tmp_path / n, deadline)
                for n, ns in (("r", fabric), ("a", ns_a), ("b", ns_b))}
    started = []
    try:
        for name, w in speakers.items():
            w.start(sessions(name, reflector=False, bgppeer=False, mesh=True))
            started.append(w)
        wait_for(lambda: all(w.settled(set(ADDRESS.values()) - {ADDRESS[n]}) for n, w in speakers.items()),
                 40, what="the mesh up, every block learned")
        for w in speakers.values():
            w.watching = True
        yield speakers
    finally:
        for w in started:
            lt.run(w.sp.stop())


def test_mesh_to_route_reflector_and_back_never_loses_a_route(trio):
    a, b, r = trio["a"], trio["b"], trio["r"]
    # The article's order: r becomes a reflector (it leaves the mesh), the BGPPeer, the mesh off.
    step(trio, reflector=True, bgppeer=False, mesh=True)
    assert a.configured() == {B, R}, "r left the mesh, but its session must stay while only r has r's block"
    [to_r] = [s for s in a.lt.call(a.sp.peer_status) if s.address == R]
    assert to_r.info == f"Established; {DRAINING_SESSION}"
    step(trio, reflector=True, bgppeer=True, mesh=True)
    step(trio, reflector=True, bgppeer=True, mesh=False)
    wait_for(lambda: a.settled({R}) and b.settled({R}) and r.settled({A, B}), 40,
             what="clients peer only with the reflector")
    assert a.learned() == {BLOCKS["b"]: R, BLOCKS["r"]: R}  # b's block now reflected by r
    assert (a.gaps, b.gaps, r.gaps) == ([], [], []), "a block was missing during the switch"

    # Back: the mesh on, the BGPPeer gone, r no longer a reflector.
    step(trio, reflector=True, bgppeer=True, mesh=True)
    step(trio, reflector=True, bgppeer=False, mesh=True)
    step(trio, reflector=False, bgppeer=False, mesh=True)
    wait_for(lambda: a.settled({B, R}) and b.settled({A, R}) and r.settled({A, B}), 40,
             what="the full mesh again")
    assert a.learned() == {BLOCKS["b"]: B, BLOCKS["r"]: R}
    assert (a.gaps, b.gaps, r.gaps) == ([], [], []), "a block was missing during the switch back"
    # r still reflects to its former clients (until the drain deadline), and says so
    assert {s.info for s in r.lt.call(r.sp.peer_status)} == {f"Established; {DRAINING_REFLECTION}"}


@pytest.mark.parametrize("trio", [4.0], indirect=True)
def test_a_session_nobody_replaces_stays_until_the_deadline_then_goes(trio):
    """r leaves the mesh and no BGPPeer follows: its sessions stay (its block has no other source)
    until the drain deadline (4 s here), then go, and its block with them."""
    a = trio["a"]
    step(trio, reflector=True, bgppeer=False, mesh=True)
    assert a.configured() == {B, R}
    wait_for(lambda: a.configured() == {B}, 15, what="r's session gone after the deadline")
    assert BLOCKS["r"] not in a.learned()
