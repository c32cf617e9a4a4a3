"""Our Speaker (real ExaBGP) against other BGP implementations: BIRD 2 and GoBGP.

Each peer runs in its own namespace, joined to the Speaker's namespace by a veth. The Speaker
runs on an asyncio loop in a background thread (as in test_bgp_speaker.py), so the tests poll
both sides with the shared synchronous ``wait_for``. Peers are queried through their own CLIs:
``birdc -s SOCK`` (a unix socket: no need to enter the namespace) and ``gobgp -p PORT`` inside
the peer's namespace.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest

from bgp.peers import PeerSpec
from bgp.rib import LearnedRoute
from bgp.speaker import Speaker
from tests.helpers import LoopThread, route_monitor, veth_between, wait_for

pytestmark = pytest.mark.root

US, PEER = IPv4Address("10.250.0.1"), IPv4Address("10.250.0.2")
POOL = IPv4Network("10.244.0.0/16")
OUR_BLOCK = IPv4Network("10.244.1.0/26")
PEER_BLOCK = IPv4Network("10.244.7.0/26")  # inside POOL: learned
OUTSIDE = IPv4Network("192.0.2.0/24")  # outside every pool: rejected and counted
GOBGP_API_PORT = 50051  # inside the peer's own namespace, so it cannot clash with anything


BIRD_PEER = PeerSpec(address=PEER, asn=64512, local_asn=64512, passive=False,
                     peer_type="global", name="bird")


def _us_and_bird(netns, procs, tmp_path: Path, short: str, **bird_kw) -> tuple[str, str, Bird]:
    """(our namespace, BIRD's, BIRD) on a veth between the two: US and PEER, iBGP AS 64512."""
    ns_us, ns_bird = netns(f"{short}u"), netns(f"{short}b")
    veth_between(ns_us, "eth0", f"{US}/24", ns_bird, "eth0", f"{PEER}/24")
    return ns_us, ns_bird, Bird(ns_bird, tmp_path / "bird", procs, **bird_kw)


def _start_speaker(lt: LoopThread, ns: str, run_dir: Path, peer: PeerSpec) -> Speaker:
    async def make() -> Speaker:
        return Speaker(node_name="us", router_id=US, local_address=US, local_asn=64512,
                       run_dir=run_dir, on_change=lambda: None, netns=ns, hold_time=9,
                       sync_deadline=60.0)
    speaker = lt.run(make())
    speaker.set_import_filter(frozenset({POOL}), frozenset({OUR_BLOCK}))
    lt.run(speaker.set_peers(frozenset({peer})))
    lt.run(speaker.set_advertisements(frozenset({OUR_BLOCK})))
    lt.run(speaker.start())
    return speaker


def _established(lt: LoopThread, speaker: Speaker) -> bool:
    return [(s.state, s.info) for s in lt.call(speaker.peer_status)] == [("up", "Established")]


def _learned(lt: LoopThread, speaker: Speaker) -> frozenset[LearnedRoute]:
    return lt.call(speaker.learned_routes)


def _rejected_outside(lt: LoopThread, speaker: Speaker) -> int:
    return lt.call(speaker.counters).get("rejected_outside_pools", 0)


def _check_speaker_learns_only_the_pool_prefix(lt: LoopThread, speaker: Speaker) -> None:
    wait_for(lambda: _learned(lt, speaker) == {LearnedRoute(PEER_BLOCK, PEER, PEER)}, 15,
             what="speaker learns the in-pool prefix with the peer as next hop")
    wait_for(lambda: _rejected_outside(lt, speaker) >= 1, 10,
             what="speaker counts the prefix outside the pools")
    assert _learned(lt, speaker) == {LearnedRoute(PEER_BLOCK, PEER, PEER)}
    assert _established(lt, speaker)


# -- BIRD 2 --------------------------------------------------------------------------------------

BIRD_CONF = """\
router id {peer};
log "{log}" all;
protocol device {{}}
protocol static originated {{
    ipv4;
    route {peer_block} blackhole;
    route {outside} blackhole;
}}
protocol bgp calico {{
    local {peer} as 64512;
    neighbor {us} as 64512;
    direct;                  # iBGP is multihop by default; our next hop is on the link
    passive on;              # the Speaker (lower address) connects, as in Calico's mesh
    hold time 9;
    debug {{ states, events }};  # into the log: 'Neighbor graceful restart detected/done'
    graceful restart on;
    graceful restart time 120;
    ipv4 {{
        import all;
        export where source = RTS_STATIC;
        next hop self;       # iBGP: static routes have no next hop of their own to send
    }};
}}
"""


# Only for a Bird(kernel=True): BGP routes into BIRD's kernel table, so a flush shows there too.
BIRD_KERNEL = """\
protocol kernel {
    ipv4 { export where source = RTS_BGP; };
}
"""

GR_ACTIVE = "Neighbor graceful restart active"


class Bird:
    def __init__(self, ns: str, workdir: Path, procs, *, kernel: bool = False) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.ns, self.kernel = ns, kernel
        self.sock = workdir / "bird.ctl"
        self.log = workdir / "bird.log"
        conf = workdir / "bird.conf"
        conf.write_text(self._conf())
        subprocess.run(["bird", "-p", "-c", str(conf)], check=True)  # parse only: clear errors
        with open(workdir / "bird.stderr", "wb") as stderr:
            self.proc = procs.add(subprocess.Popen(
                ["ip", "netns", "exec", ns, "bird", "-f", "-c", str(conf), "-s", str(self.sock),
                 "-P", str(workdir / "bird.pid")],
                stdout=subprocess.DEVNULL, stderr=stderr))
        wait_for(lambda: self._alive() and self.sock.exists(), 10, what="bird control socket")

    def _conf(self) -> str:
        conf = BIRD_CONF.format(peer=PEER, us=US, peer_block=PEER_BLOCK, outside=OUTSIDE, log=self.log)
        return conf + (BIRD_KERNEL if self.kernel else "")

    def _alive(self) -> bool:
        if self.proc.poll() is not None:
            pytest.fail(f"bird exited with {self.proc.returncode}: {self.log.read_text(errors='replace')}")
        return True

    def cli(self, *args: str) -> str:
        self._alive()
        out = subprocess.run(["birdc", "-s", str(self.sock), *args], capture_output=True, text=True,
                             timeout=10, check=False)
        # birdc exits 1 on any error reply, "Network not found" (an empty answer) included.
        assert out.returncode == 0 or "Network not found" in out.stdout, \
            f"birdc {' '.join(args)}: {out.stdout}{out.stderr}"
        return out.stdout

    def route(self, prefix: IPv4Network) -> str:
        """`show route for P all` restricted to routes from our session ('' when there is none)."""
        text = self.cli("show", "route", "for", str(prefix), "protocol", "calico", "all")
        return text if str(prefix) in text else ""

    def protocol(self) -> str:
        return self.cli("show", "protocols", "all", "calico")

    def kernel_route(self, prefix: IPv4Network) -> str:
        """BIRD's kernel route to ``prefix`` in its namespace ('' when there is none)."""
        return subprocess.run(["ip", "-n", self.ns, "route", "show", "exact", str(prefix), "proto", "bird"],
                              capture_output=True, text=True, check=True, timeout=10).stdout.strip()

    def bgp_state(self, info: str | None = None) -> str:
        """The 'BGP state:' line of `show protocols all` (Established, Active, Connect...)."""
        for line in (self.protocol() if info is None else info).splitlines():
            if line.strip().startswith("BGP state:"):
                return line.split(":", 1)[1].strip()
        return ""


def test_bird_ibgp_exchange_filter_and_withdraw(netns, procs, loop_thread, tmp_path):
    lt = loop_thread
    ns_us, ns_bird, bird = _us_and_bird(netns, procs, tmp_path, "io")
    peer = BIRD_PEER
    speaker = _start_speaker(lt, ns_us, tmp_path / "us", peer)
    try:
        wait_for(lambda: _established(lt, speaker), 20, what="our session to BIRD established")
        wait_for(lambda: bird.bgp_state() == "Established", 10, what="BIRD's session established")
        _check_speaker_learns_only_the_pool_prefix(lt, speaker)

        route = wait_for(lambda: bird.route(OUR_BLOCK), 10, what="BIRD learns our block")
        assert f"via {US} on eth0" in route, route
        assert f"BGP.next_hop: {US}" in route, route
        assert "BGP.local_pref: 100" in route, route  # iBGP: local pref travels
        assert bird.route(OUTSIDE) == "", "BIRD got something we never announced"

        lt.run(speaker.set_advertisements(frozenset()))
        wait_for(lambda: bird.route(OUR_BLOCK) == "", 10, what="BIRD drops our withdrawn block")
        assert bird.bgp_state() == "Established", "a withdrawal must not reset the session"
        assert _learned(lt, speaker) == {LearnedRoute(PEER_BLOCK, PEER, PEER)}
    finally:
        lt.run(speaker.stop())
    wait_for(lambda: bird.bgp_state() != "Established", 10, what="BIRD sees our session close")


def test_bird_drops_our_routes_when_we_remove_the_peer(netns, procs, loop_thread, tmp_path):
    """Issue 9: removing a peer reloaded ExaBGP, which closed the TCP session without a NOTIFICATION;
    BIRD (a graceful-restart helper) took that for a restart and kept our routes stale for 120 s.
    Now the speaker sends Cease (Peer De-configured) and waits for the session to go down."""
    lt = loop_thread
    ns_us, ns_bird, bird = _us_and_bird(netns, procs, tmp_path, "ir")
    peer = BIRD_PEER
    speaker = _start_speaker(lt, ns_us, tmp_path / "us", peer)
    try:
        wait_for(lambda: bird.route(OUR_BLOCK), 20, what="BIRD learns our block")
        lt.run(speaker.set_peers(frozenset()))
        wait_for(lambda: bird.bgp_state() != "Established", 10, what="BIRD sees the session close")
        # A de-configured peer must not keep routing to us (BIRD flushes at once on a Cease).
        wait_for(lambda: bird.route(OUR_BLOCK) == "", 3, what="BIRD drops our block")
        assert GR_ACTIVE not in bird.protocol()
    finally:
        lt.run(speaker.stop())
    # ExaBGP gone, BIRD's log is the whole story: the Cease ended the last session. ExaBGP used
    # to connect again right after its Cease, and the reload removing BIRD closed that session
    # without a NOTIFICATION.
    log = bird.log.read_text()
    assert "Received: Peer de-configured" in log, log
    assert "BGP session established" not in log.split("Received: Peer de-configured", 1)[1], log


def test_a_peer_wanted_again_right_after_its_cease_comes_back_without_sitting_out_the_hold(
        netns, procs, loop_thread, tmp_path):
    """A BGPPeer deleted and created again at once (a replace done as delete + create): the Cease
    went out, and ExaBGP holds a peer torn down through the API down for TEARDOWN_HOLD unless a
    reload changes or removes it. The config that wants the peer again is the one ExaBGP already
    has, so the speaker reloaded nothing and the session sat out the whole hold. The deadline
    below is under the hold: the session must come back because it was told to, not because
    the hold ran out."""
    from bgp.exabgp_main import TEARDOWN_HOLD

    lt = loop_thread
    ns_us, ns_bird, bird = _us_and_bird(netns, procs, tmp_path, "ia")
    peer = BIRD_PEER
    speaker = _start_speaker(lt, ns_us, tmp_path / "us", peer)
    try:
        wait_for(lambda: _established(lt, speaker), 30, what="the session is up")
        lt.run(speaker.set_peers(frozenset()))
        lt.run(speaker.set_peers(frozenset({peer})))
        wait_for(lambda: "Received: Peer de-configured" in bird.log.read_text(), 10,
                 what="BIRD gets our Cease")
        wait_for(lambda: "BGP session established" in
                 bird.log.read_text().split("Received: Peer de-configured", 1)[1],
                 TEARDOWN_HOLD / 2, what="BIRD has a new session with us before the hold ends")
        wait_for(lambda: bird.route(OUR_BLOCK), 10, what="BIRD learns our block again")
    finally:
        lt.run(speaker.stop())


def test_a_peer_removed_before_we_read_that_its_session_is_up_still_gets_a_cease(
        netns, procs, loop_thread, tmp_path):
    """The speaker knows a session is up only once it has read ExaBGP's ``up``, and sends its own
    Cease only to sessions it knows are up. A peer removed before that was closed by ExaBGP's
    reload without a NOTIFICATION, and BIRD, a graceful-restart helper, kept our routes as stale
    for 120 s. Here the speaker's loop is held (ExaBGP's events wait unread) from its start until
    ExaBGP has established the session and the peer is removed."""
    lt = loop_thread
    ns_us, ns_bird, bird = _us_and_bird(netns, procs, tmp_path, "iq")
    peer = BIRD_PEER
    run_dir = tmp_path / "us"
    speaker = _start_speaker(lt, ns_us, run_dir, peer)

    async def remove_before_up_is_read() -> None:
        # Synchronous on purpose: nothing else runs on the loop meanwhile.
        wait_for(lambda: "connected to peer-" in (run_dir / "exabgp.log").read_text(), 30,
                 what="ExaBGP establishes the session")
        assert [s.state for s in speaker.peer_status()] != ["up"], "the loop read ExaBGP's up"
        await speaker.set_peers(frozenset())

    try:
        lt.run(remove_before_up_is_read(), timeout=60)
        wait_for(lambda: bird.bgp_state() != "Established", 10, what="BIRD sees the session close")
    finally:
        lt.run(speaker.stop())
    log = bird.log.read_text()
    assert "Received: Peer de-configured" in log and "graceful restart detected" not in log, log


def test_bird_drops_our_routes_when_we_stop_for_good(netns, procs, loop_thread, tmp_path):
    """A node leaving for good: its speaker's stop sends every session a Cease (Administrative
    Shutdown) before ExaBGP ends, and BIRD flushes our routes at once instead of holding them
    stale for its restart time."""
    lt = loop_thread
    ns_us, ns_bird, bird = _us_and_bird(netns, procs, tmp_path, "if", kernel=True)
    peer = BIRD_PEER
    speaker = _start_speaker(lt, ns_us, tmp_path / "us", peer)
    try:
        wait_for(lambda: bird.kernel_route(OUR_BLOCK), 20, what="BIRD installs our block")
    finally:
        lt.run(speaker.stop(for_good=True))
    info = bird.protocol()
    assert bird.bgp_state(info) != "Established", "stop returns once the session is down"
    assert "Received: Administrative shutdown" in info and GR_ACTIVE not in info, info
    wait_for(lambda: bird.route(OUR_BLOCK) == "" and bird.kernel_route(OUR_BLOCK) == "", 3,
             what="BIRD drops our block from its RIB and kernel")


def test_a_bird_that_ceases_loses_its_routes_at_once_and_a_killed_one_keeps_them(
        netns, procs, loop_thread, tmp_path):
    """`birdc disable` ends the session with a Cease (Administrative Shutdown): RFC 4724 ends
    graceful restart on a NOTIFICATION, so our RIB drops BIRD's block at once (its restart time is
    120 s). The next session, ended by a SIGKILLed BIRD (a TCP close, no NOTIFICATION), still
    restarts gracefully: the block stays as stale."""
    lt = loop_thread
    ns_us, ns_bird, bird = _us_and_bird(netns, procs, tmp_path, "ic")
    peer = BIRD_PEER
    speaker = _start_speaker(lt, ns_us, tmp_path / "us", peer)
    learned = {LearnedRoute(PEER_BLOCK, PEER, PEER)}
    try:
        wait_for(lambda: _learned(lt, speaker) == learned, 20, what="speaker learns BIRD's block")
        bird.cli("disable", "calico")
        wait_for(lambda: _learned(lt, speaker) == frozenset(), 10,
                 what="speaker drops BIRD's block on its Cease")
        [status] = lt.call(speaker.peer_status)
        assert status.reason.startswith("Received: Administrative shutdown (6/2)"), status

        bird.cli("enable", "calico")
        wait_for(lambda: _learned(lt, speaker) == learned, 40, what="speaker relearns BIRD's block")
        os.kill(bird.proc.pid, signal.SIGKILL)
        bird.proc.wait(timeout=10)
        wait_for(lambda: not _established(lt, speaker), 15, what="speaker sees BIRD's session close")
        assert _learned(lt, speaker) == learned, "a TCP close keeps BIRD's block as stale"
    finally:
        lt.run(speaker.stop())


def test_bird_keeps_our_route_stale_while_exabgp_restarts(netns, procs, loop_thread, tmp_path):
    """RFC 4724 with BIRD as the helper: our ExaBGP child is SIGKILLed and the Speaker restarts it."""
    lt = loop_thread
    ns_us, ns_bird, bird = _us_and_bird(netns, procs, tmp_path, "ig")
    peer = BIRD_PEER
    speaker = _start_speaker(lt, ns_us, tmp_path / "us", peer)
    try:
        wait_for(lambda: bird.route(OUR_BLOCK), 20, what="BIRD learns our block")
        wait_for(lambda: _learned(lt, speaker) == {LearnedRoute(PEER_BLOCK, PEER, PEER)}, 10,
                 what="speaker learns BIRD's block")
        old_pid = lt.call(lambda: speaker.child_pid)
        os.kill(old_pid, signal.SIGKILL)

        # While our side is down BIRD keeps the route as stale (the Speaker waits >= 1 s before it
        # restarts ExaBGP, so the window is wide enough to be seen by polling). BIRD 2.0.12 does
        # not mark stale routes in `show route`; `show protocols all` says the restart is on.
        def kept_while_down() -> bool:
            info = bird.protocol()
            return (bird.bgp_state(info) not in ("", "Established")
                    and GR_ACTIVE in info and bool(bird.route(OUR_BLOCK)))
        wait_for(kept_while_down, 10, what="BIRD's session down, helper active, our route kept")
        assert _learned(lt, speaker) == {LearnedRoute(PEER_BLOCK, PEER, PEER)}, \
            "our Rib keeps BIRD's route too: BIRD offered graceful restart in its OPEN"

        wait_for(lambda: lt.call(lambda: speaker.child_pid) not in (None, old_pid), 10,
                 what="ExaBGP restarted")
        wait_for(lambda: bird.bgp_state() == "Established" and _established(lt, speaker), 20,
                 what="session re-established")
        # BIRD ends its helper role only on our End-of-RIB (manual-eor: sent after re-announcing).
        wait_for(lambda: GR_ACTIVE not in bird.protocol(), 10, what="BIRD's restart done after our EoR")
        assert "Neighbor graceful restart done" in bird.log.read_text()
        assert f"BGP.next_hop: {US}" in bird.route(OUR_BLOCK)
    finally:
        lt.run(speaker.stop())


def test_bird_keeps_our_route_while_the_stopped_speaker_restarts(netns, procs, loop_thread, tmp_path):
    """A signalled agent (SIGTERM: a rolling update) stops its speaker and a new one starts: BIRD,
    a graceful-restart helper, keeps our block as stale in its RIB and its kernel until the new
    speaker has re-announced it and sent End-of-RIB (a Cease instead would make BIRD flush it:
    RFC 4724 without RFC 8538 ends graceful restart on any NOTIFICATION)."""
    lt = loop_thread
    ns_us, ns_bird, bird = _us_and_bird(netns, procs, tmp_path, "is", kernel=True)
    peer = BIRD_PEER
    speaker = _start_speaker(lt, ns_us, tmp_path / "us", peer)
    stopped = False
    try:
        wait_for(lambda: bird.kernel_route(OUR_BLOCK), 20, what="BIRD installs our block")
        monitor_log = route_monitor(procs, ns_bird, tmp_path / "monitor.log")
        lt.run(speaker.stop())  # what the agent does on SIGTERM
        stopped = True

        def kept_while_down() -> bool:
            info = bird.protocol()
            return (bird.bgp_state(info) not in ("", "Established")
                    and GR_ACTIVE in info and bool(bird.route(OUR_BLOCK)))
        wait_for(kept_while_down, 10, what="BIRD's session down, helper active, our route kept")
        assert f"via {US}" in bird.kernel_route(OUR_BLOCK), "BIRD's kernel route must stay"
        assert "Received: Cease" not in bird.protocol()

        speaker = _start_speaker(lt, ns_us, tmp_path / "us", peer)  # the restarted agent's
        stopped = False
        wait_for(lambda: bird.bgp_state() == "Established" and _established(lt, speaker), 20,
                 what="session re-established")
        wait_for(lambda: GR_ACTIVE not in bird.protocol(), 10, what="BIRD's restart done after our EoR")
        assert "Neighbor graceful restart done" in bird.log.read_text()
        assert f"via {US}" in bird.kernel_route(OUR_BLOCK)
        deleted = [ln for ln in monitor_log.read_text().splitlines()
                   if ln.startswith("Deleted") and str(OUR_BLOCK) in ln]
        assert deleted == [], f"BIRD removed our block from its kernel meanwhile: {deleted}"
    finally:
        if not stopped:
            lt.run(speaker.stop())


# -- GoBGP ---------------------------------------------------------------------------------------

GOBGP_ASN = 64513
GOBGP_CONF = """\
[global.config]
  as = {asn}
  router-id = "{peer}"
  local-address-list = ["{peer}"]

[[neighbors]]
  [neighbors.config]
    neighbor-address = "{us}"
    peer-as = 64512
  [neighbors.transport.config]
    local-address = "{peer}"
    # GoBGP waits a random 5-10 s before its first connect: let the Speaker connect instead.
    passive-mode = true
  [neighbors.timers.config]
    connect-retry = 1
    hold-time = 9
    keepalive-interval = 3
"""


class GoBGP:
    def __init__(self, ns: str, workdir: Path, procs) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.ns = ns
        conf = workdir / "gobgpd.toml"
        conf.write_text(GOBGP_CONF.format(asn=GOBGP_ASN, peer=PEER, us=US))
        self.log = workdir / "gobgpd.log"
        with open(self.log, "wb") as stderr:
            self.proc = procs.add(subprocess.Popen(
                ["ip", "netns", "exec", ns, "gobgpd", "-f", str(conf), "-t", "toml",
                 "--api-hosts", f"127.0.0.1:{GOBGP_API_PORT}", "--pprof-disable", "--log-plain"],
                stdout=stderr, stderr=subprocess.STDOUT))
        wait_for(lambda: self._cli_ok("global"), 10, what="gobgpd API")

    def _alive(self) -> None:
        if self.proc.poll() is not None:
            pytest.fail(f"gobgpd exited with {self.proc.returncode}: {self.log.read_text(errors='replace')}")

    def _run(self, *args: str) -> subprocess.CompletedProcess:
        self._alive()
        argv = ["ip", "netns", "exec", self.ns, "gobgp", "-p", str(GOBGP_API_PORT), *args]
        return subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)

    def _cli_ok(self, *args: str) -> bool:
        return self._run(*args).returncode == 0

    def cli(self, *args: str) -> str:
        out = self._run(*args)
        assert out.returncode == 0, f"gobgp {' '.join(args)}: {out.stderr}"
        return out.stdout

    def originate(self, prefix: IPv4Network) -> None:
        self.cli("global", "rib", "add", str(prefix), "-a", "ipv4")

    def rib(self) -> dict[IPv4Network, list[dict]]:
        """The global RIB: prefix -> paths (as gobgp -j prints them)."""
        rib = json.loads(self.cli("global", "rib", "-a", "ipv4", "-j"))
        return {IPv4Network(prefix): paths for prefix, paths in rib.items()}

    def established(self) -> bool:
        [nb] = json.loads(self.cli("neighbor", "-j"))
        return nb["state"]["session_state"] == 6  # gobgp -j prints the API enum: 6 = ESTABLISHED


def _attr(path: dict, type_code: int) -> dict:
    """One path attribute from gobgp -j output, by its BGP type code (2 AS_PATH, 3 NEXT_HOP)."""
    [attr] = [a for a in path["attrs"] if a["type"] == type_code]
    return attr


def test_gobgp_ebgp_exchange_filter_and_withdraw(netns, procs, loop_thread, tmp_path):
    """eBGP to GoBGP (AS 64513), which is passive: our Speaker connects."""
    lt = loop_thread
    ns_us, ns_gobgp = netns("gou"), netns("gog")
    veth_between(ns_us, "eth0", f"{US}/24", ns_gobgp, "eth0", f"{PEER}/24")
    gobgp = GoBGP(ns_gobgp, tmp_path / "gobgp", procs)
    for prefix in (PEER_BLOCK, OUTSIDE):
        gobgp.originate(prefix)
    peer = PeerSpec(address=PEER, asn=GOBGP_ASN, local_asn=64512, passive=False,
                    peer_type="global", name="gobgp")
    speaker = _start_speaker(lt, ns_us, tmp_path / "us", peer)
    try:
        wait_for(lambda: _established(lt, speaker), 20, what="our session to GoBGP established")
        _check_speaker_learns_only_the_pool_prefix(lt, speaker)

        paths = wait_for(lambda: gobgp.rib().get(OUR_BLOCK), 10, what="GoBGP learns our block")
        [path] = paths
        assert path["neighbor-ip"] == str(US) and _attr(path, 3)["nexthop"] == str(US), path
        assert [seg["asns"] for seg in _attr(path, 2)["as_paths"]] == [[64512]], "eBGP: our AS prepended"
        assert gobgp.established()

        lt.run(speaker.set_advertisements(frozenset()))
        wait_for(lambda: OUR_BLOCK not in gobgp.rib(), 10, what="GoBGP drops our withdrawn block")
        assert set(gobgp.rib()) == {PEER_BLOCK, OUTSIDE}, "GoBGP keeps its own routes only"

        gobgp.cli("global", "rib", "del", str(PEER_BLOCK), "-a", "ipv4")
        wait_for(lambda: _learned(lt, speaker) == frozenset(), 10,
                 what="speaker drops GoBGP's withdrawn block")
        assert _established(lt, speaker)
    finally:
        lt.run(speaker.stop())
