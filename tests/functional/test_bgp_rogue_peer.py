"""The rogue mesh peer of issue 9, played by a real BIRD 2 against our Speaker (real ExaBGP):
it announces another node's pod as a /32, a /16 and a /17 aggregate and 20,000 /32s, beside
its own block. Origin validation keeps its own block only and counts the rest by reason; over
its max-prefix limit the session is torn down with Cease / Maximum Number of Prefixes Reached
and the peer shows ``max-prefix exceeded``.
"""
from __future__ import annotations

import subprocess
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest

from bgp.peers import PeerSpec
from bgp.rib import ORIGIN_HOLD, LearnedRoute
from bgp.speaker import Speaker
from ctl.node import health_lines
from tests.functional.test_bgp_interop import Bird
from tests.helpers import LoopThread, veth_between, wait_for

pytestmark = pytest.mark.root

US, ROGUE, OWNER = IPv4Address("10.250.0.1"), IPv4Address("10.250.0.2"), IPv4Address("10.250.0.3")
POOL = IPv4Network("10.244.0.0/16")
OUR_BLOCK = IPv4Network("10.244.1.0/26")
ROGUE_BLOCK = IPv4Network("10.244.7.0/26")  # affine to the rogue node: its to announce
OWNER_BLOCK = IPv4Network("10.244.2.0/26")  # another node's
STOLEN_POD = IPv4Network("10.244.2.5/32")  # a pod in OWNER_BLOCK
AGGREGATES = (IPv4Network("10.244.0.0/16"), IPv4Network("10.244.0.0/17"))
FLOOD = [IPv4Network(f"10.244.{128 + i // 256}.{i % 256}/32") for i in range(20_000)]

ROGUE_CONF = """\
router id {rogue};
log "{log}" all;
protocol device {{}}
protocol static originated {{
    ipv4;
{routes}
}}
protocol bgp calico {{
    local {rogue} as 64512;
    neighbor {us} as 64512;
    direct;
    passive on;
    hold time 9;
    ipv4 {{
        import none;
        export where source = RTS_STATIC;
        next hop self;
    }};
}}
"""


class RogueBird(Bird):
    """A BIRD announcing ``prefixes`` as a mesh peer (the control helpers are Bird's)."""

    def __init__(self, ns: str, workdir: Path, procs, prefixes: list[IPv4Network]) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.sock, self.log = workdir / "bird.ctl", workdir / "bird.log"
        conf = workdir / "bird.conf"
        routes = "\n".join(f"    route {p} blackhole;" for p in prefixes)
        conf.write_text(ROGUE_CONF.format(rogue=ROGUE, us=US, log=self.log, routes=routes))
        subprocess.run(["bird", "-p", "-c", str(conf)], check=True)
        with open(workdir / "bird.stderr", "wb") as stderr:
            self.proc = procs.add(subprocess.Popen(
                ["ip", "netns", "exec", ns, "bird", "-f", "-c", str(conf), "-s", str(self.sock),
                 "-P", str(workdir / "bird.pid")], stdout=subprocess.DEVNULL, stderr=stderr))
        wait_for(lambda: self._alive() and self.sock.exists(), 10, what="bird control socket")


def _speaker(lt: LoopThread, ns: str, run_dir: Path, max_prefixes: int | None,
             hold_down: float = 60.0) -> Speaker:
    async def make() -> Speaker:
        return Speaker(node_name="us", router_id=US, local_address=US, local_asn=64512,
                       run_dir=run_dir, on_change=lambda: None, netns=ns, hold_time=9,
                       sync_deadline=60.0, max_prefixes=max_prefixes, max_prefix_hold_down=hold_down)
    speaker = lt.run(make())
    speaker.set_import_filter(frozenset({POOL}), frozenset({OUR_BLOCK}))
    # What the agent takes from IPAM: each block's affine node, each borrowed /32's holder.
    speaker.set_origins({OUR_BLOCK: US, ROGUE_BLOCK: ROGUE, OWNER_BLOCK: OWNER}, {})
    peer = PeerSpec(address=ROGUE, asn=64512, local_asn=64512, passive=False,
                    peer_type="node-to-node mesh", name="rogue")
    lt.run(speaker.set_peers(frozenset({peer})))
    lt.run(speaker.start())
    return speaker


def _counters(lt: LoopThread, speaker: Speaker) -> dict[str, int]:
    return lt.call(speaker.counters)


def test_a_rogue_mesh_peer_gets_only_its_own_block_in_and_every_other_route_counted(
        netns, procs, loop_thread, tmp_path):
    lt = loop_thread
    ns_us, ns_rogue = netns("rgu"), netns("rgb")
    veth_between(ns_us, "eth0", f"{US}/24", ns_rogue, "eth0", f"{ROGUE}/24")
    RogueBird(ns_rogue, tmp_path / "bird", procs, [ROGUE_BLOCK, STOLEN_POD, *AGGREGATES, *FLOOD])
    speaker = _speaker(lt, ns_us, tmp_path / "us", max_prefixes=None)
    try:
        total = 1 + 1 + len(AGGREGATES) + len(FLOOD)
        wait_for(lambda: _counters(lt, speaker).get("received", 0) >= total, 60,
                 what=f"all {total} announcements received")
        assert lt.call(speaker.learned_routes) == {LearnedRoute(ROGUE_BLOCK, ROGUE, ROGUE)}
        # Counted once their hold is over (bgp.rib ORIGIN_HOLD), still rejected: never programmed.
        counters = wait_for(lambda: (c := _counters(lt, speaker)).get("rejected_origin_unknown", 0)
                            >= len(AGGREGATES) + len(FLOOD) and c, ORIGIN_HOLD + 20,
                            what="the rogue routes counted at the end of their hold")
        assert lt.call(speaker.learned_routes) == {LearnedRoute(ROGUE_BLOCK, ROGUE, ROGUE)}
        assert counters["rejected_origin_mismatch"] == 1  # the stolen pod: OWNER's block
        assert counters["rejected_origin_unknown"] == len(AGGREGATES) + len(FLOOD)
        dropped = [line for line in health_lines({"counters": counters}) if "Dropped" in line]
        assert dropped == ["Dropped BGP input: rejected_origin_mismatch=1, "
                           f"rejected_origin_unknown={len(AGGREGATES) + len(FLOOD)}"]
        # Ownership changes apply to what is held: OWNER's block moving to the rogue node adds
        # nothing (the rogue never announced that block), the pod's address borrowed by it does.
        lt.call(speaker.set_origins, {OUR_BLOCK: US, ROGUE_BLOCK: ROGUE, OWNER_BLOCK: ROGUE}, {})
        assert lt.call(speaker.learned_routes) == {LearnedRoute(ROGUE_BLOCK, ROGUE, ROGUE)}
        lt.call(speaker.set_origins, {OUR_BLOCK: US, ROGUE_BLOCK: ROGUE, OWNER_BLOCK: OWNER},
                {STOLEN_POD.network_address: ROGUE})  # the pod's address is now borrowed by it
        assert lt.call(speaker.learned_routes) == {LearnedRoute(ROGUE_BLOCK, ROGUE, ROGUE),
                                                   LearnedRoute(STOLEN_POD, ROGUE, ROGUE)}
    finally:
        lt.run(speaker.stop())


def test_a_peer_over_its_max_prefix_limit_is_torn_down_with_cease_and_shown(
        netns, procs, loop_thread, tmp_path):
    lt = loop_thread
    ns_us, ns_rogue = netns("rmu"), netns("rmb")
    veth_between(ns_us, "eth0", f"{US}/24", ns_rogue, "eth0", f"{ROGUE}/24")
    bird = RogueBird(ns_rogue, tmp_path / "bird", procs, [ROGUE_BLOCK, *FLOOD[:300]])
    speaker = _speaker(lt, ns_us, tmp_path / "us", max_prefixes=100, hold_down=3.0)
    conf = tmp_path / "us" / "exabgp.conf"
    try:
        wait_for(lambda: _counters(lt, speaker).get("max_prefix_exceeded", 0) >= 1, 30,
                 what="the limit of 100 exceeded")
        wait_for(lambda: "Maximum number of prefixes reached" in bird.protocol(), 10,
                 what="BIRD receives Cease / Maximum Number of Prefixes Reached")
        wait_for(lambda: [s.info for s in lt.call(speaker.peer_status)] == ["Idle max-prefix exceeded"]
                 or [s.info for s in lt.call(speaker.peer_status)] == ["Active max-prefix exceeded"],
                 10, what="node status shows the peer down with reason max-prefix exceeded")
        assert lt.call(speaker.learned_routes) == frozenset()  # nothing of it is kept
        assert _counters(lt, speaker)["rejected_max_prefix"] >= 101
        # Held down: out of ExaBGP's config (no reconnect and flood every few seconds), then back
        # after the hold-down, when it floods again and is torn down again.
        wait_for(lambda: f"neighbor {ROGUE}" not in conf.read_text(), 10,
                 what="the peer left out of ExaBGP's config during its hold-down")
        wait_for(lambda: f"neighbor {ROGUE}" in conf.read_text(), 10,
                 what="the peer back in ExaBGP's config after its hold-down")
        wait_for(lambda: _counters(lt, speaker).get("max_prefix_exceeded", 0) >= 2, 30,
                 what="the peer over its limit again after the hold-down")
        assert lt.call(speaker.learned_routes) == frozenset()
    finally:
        lt.run(speaker.stop())
