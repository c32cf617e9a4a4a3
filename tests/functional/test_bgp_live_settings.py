"""A change of our AS number or listen port takes effect without an agent restart (issue 9):
``Speaker.set_local`` restarts the ExaBGP child as a crash would, so both sides keep each other's
routes as stale (graceful restart) until the sessions are back with the new settings. Two real
Speakers in two namespaces; every change either reports is checked for a lost route."""
from __future__ import annotations

import dataclasses
import subprocess
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest

from bgp.peers import PeerSpec
from bgp.speaker import Speaker
from tests.helpers import LoopThread, veth_between, wait_for

pytestmark = pytest.mark.root

A, B = IPv4Address("10.250.0.1"), IPv4Address("10.250.0.2")
POOL = IPv4Network("10.244.0.0/16")
BLOCK = {A: IPv4Network("10.244.1.0/26"), B: IPv4Network("10.244.2.0/26")}


class Side:
    def __init__(self, lt: LoopThread, ns: str, me: IPv4Address, other: IPv4Address, run_dir: Path) -> None:
        self.lt, self.ns, self.me, self.other, self.run_dir = lt, ns, me, other, run_dir
        self.gaps: list[str] = []
        self.watching = False
        self.sp = Speaker(node_name=ns, router_id=me, local_address=me, local_asn=64512, run_dir=run_dir,
                          on_change=self._check, netns=ns, hold_time=9, listen_port=1790)

    def _check(self) -> None:
        if self.watching and BLOCK[self.other] not in {r.prefix for r in self.sp.learned_routes()}:
            self.gaps.append(str(self.sp.status()))

    def peer(self, asn: int, port: int = 1790) -> PeerSpec:
        """As bgp_peers makes it: our nodes connect to each other on the listen port."""
        return PeerSpec(address=self.other, asn=asn, local_asn=asn, passive=self.me > self.other,
                        peer_type="node-to-node mesh", name=str(self.other), port=port)

    def start(self) -> None:
        async def go() -> None:
            self.sp.set_import_filter(frozenset({POOL}), frozenset({BLOCK[self.me]}))
            await self.sp.want_peers(frozenset({self.peer(64512)}))
            await self.sp.set_advertisements(frozenset({BLOCK[self.me]}))
            await self.sp.start()
        self.lt.run(go())

    def synced(self) -> bool:
        status = self.lt.call(self.sp.peer_status)
        learned = {r.prefix for r in self.lt.call(self.sp.learned_routes)}
        return [s.state for s in status] == ["up"] and learned == {BLOCK[self.other]}

    def listening(self) -> set[int]:
        out = subprocess.run(["ip", "netns", "exec", self.ns, "ss", "-ltnH"], capture_output=True,
                             text=True, check=True).stdout
        return {int(line.split()[3].rpartition(":")[2]) for line in out.splitlines()
                if line.split()[3].startswith(f"{self.me}:")}

    def config(self) -> str:
        return (self.run_dir / "exabgp.conf").read_text()


@pytest.fixture
def sides(netns, loop_thread, tmp_path):
    lt = loop_thread
    ns_a, ns_b = netns("lsa"), netns("lsb")
    veth_between(ns_a, "eth0", f"{A}/24", ns_b, "eth0", f"{B}/24")
    a, b = Side(lt, ns_a, A, B, tmp_path / "a"), Side(lt, ns_b, B, A, tmp_path / "b")
    started = []
    try:
        for side in (a, b):
            side.start()
            started.append(side)
        wait_for(lambda: a.synced() and b.synced(), 30, what="both sessions up, blocks exchanged")
        a.watching = b.watching = True
        yield a, b
    finally:
        for side in started:
            lt.run(side.sp.stop())


def test_a_listen_port_change_restarts_exabgp_and_keeps_the_routes(sides):
    a, b = sides
    assert a.listening() == {1790}
    pids = {s: s.lt.call(lambda s=s: s.sp.child_pid) for s in sides}
    async def change(side: Side) -> None:  # as the agent does on a new BGPConfiguration listenPort
        side.sp.set_local(64512, 1791)
        await side.sp.want_peers(frozenset({side.peer(64512, 1791)}))
    for side in sides:
        side.lt.run(change(side))
    wait_for(lambda: all(s.lt.call(lambda s=s: s.sp.child_pid) not in (None, pids[s]) for s in sides), 10,
             what="both ExaBGP children restarted")
    wait_for(lambda: a.synced() and b.synced(), 40, what="the sessions back on the new port")
    assert a.listening() == {1791} and b.listening() == {1791}
    assert "connect 1791;" in a.config()
    assert (a.gaps, b.gaps) == ([], []), "a route was lost while ExaBGP restarted"


def test_an_as_number_change_restarts_exabgp_and_keeps_the_routes(sides):
    a, b = sides
    pids = {s: s.lt.call(lambda s=s: s.sp.child_pid) for s in sides}

    async def change(side: Side) -> None:  # as the agent does on a new BGPConfiguration asNumber
        side.sp.set_local(64600, 1790)
        await side.sp.want_peers(frozenset({side.peer(64600)}))
    for side in sides:
        side.lt.run(change(side))
    wait_for(lambda: all(s.lt.call(lambda s=s: s.sp.child_pid) not in (None, pids[s]) for s in sides), 10,
             what="both ExaBGP children restarted")
    # Established again: each side's OPEN carried 64600 and the other expected it (peer-as).
    wait_for(lambda: a.synced() and b.synced(), 40, what="the sessions back with AS 64600")
    assert "local-as 64600;" in a.config() and "peer-as 64600;" in a.config()
    assert (a.gaps, b.gaps) == ([], []), "a route was lost while ExaBGP restarted"


def test_unchanged_settings_restart_nothing(sides):
    a, _ = sides
    pid = a.lt.call(lambda: a.sp.child_pid)
    a.lt.call(a.sp.set_local, 64512, 1790)
    a.lt.run(a.sp.want_peers(frozenset({a.peer(64512)})))
    with pytest.raises(ValueError, match="asn: 0 is outside"):
        a.lt.call(a.sp.set_local, 0, 1790)
    with pytest.raises(ValueError, match="port: 70000"):
        a.lt.call(a.sp.set_local, 64512, 70000)
    assert a.lt.call(lambda: a.sp.child_pid) == pid and a.listening() == {1790}
    assert dataclasses.asdict(a.lt.call(a.sp.status))["state"] == "running"
