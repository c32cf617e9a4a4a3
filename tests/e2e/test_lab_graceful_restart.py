"""Graceful restart end to end (issue 9 item 4): an agent killed with SIGKILL, or stopped with
SIGTERM as a rolling update stops it, and started again as the DaemonSet would (``lab restart
--signal KILL|TERM``: the signal by PID, then the manifest's container again) loses
zero packets of continuous pod-to-pod pings (20 a second) -- across the other nodes, and to and
from the killed node's own pods (its kernel routes survive the kill and are adopted, not flushed).

The pings run until every peer of the restarted agent has received its End-of-RIB (the counter
``end_of_rib_received`` went up on each of them): that is when a graceful-restart helper drops
whatever it still holds as stale. A route withdrawn too early and learned again shows as lost
packets or, when the gap falls between two pings, in ``ip monitor route``: no route of ours may be
deleted on any node.

Two labs: a 3-node mesh (node1 killed; node3 SIGTERMed while a BIRD router on a lab host peers
with every node by a global BGPPeer, pinging node3's pod from behind it), and two clients of a
lone route reflector (the reflector's agent killed: its clients hold each other's blocks as stale
through it, and an End-of-RIB sent before it has learned the blocks it reflects makes them flush
those)."""
from __future__ import annotations

import json
import secrets
import subprocess
from collections.abc import Callable

import pytest

from felix.status import query
from lab.lab import remote_block_routes
from tests import helpers
from tests.helpers import Pings, ctl, route_monitor, wait_for

MESH = f"g{secrets.token_hex(2)}"  # short: namespace and interface names derive from them
RR = f"q{secrets.token_hex(2)}"


def _lab(name: str, *args: str):
    try:
        ctl("lab", "up", "--name", name, "--pods-per-node", "1", *args, timeout=300)
        yield helpers.lab_state(name)
    finally:
        subprocess.run([helpers.CTL, "lab", "down", "--name", name], capture_output=True, timeout=120)


@pytest.fixture(scope="module")
def mesh_lab():
    yield from _lab(MESH, "--nodes", "3")


@pytest.fixture(scope="module")
def reflector_lab():
    yield from _lab(RR, "--nodes", "2", "--route-reflectors", "1")


def status(node: str) -> dict | None:
    """The node's agent status (None while no agent answers: it is being restarted)."""
    try:
        return query(node, "status")
    except (OSError, RuntimeError):
        return None


def eors(node: str) -> int:
    return query(node, "status")["counters"].get("end_of_rib_received", 0)


def settled(state: dict, killed: str, eors_before: dict[str, int]) -> str | None:
    """What is still missing after ``killed`` restarted (None: nothing): every session up, the
    restarted agent in sync, each peer past its End-of-RIB, every node routing to every block."""
    with_pods = {p["node"] for p in state["pods"]}
    for node in state["nodes"]:
        now = status(node)
        if now is None:
            return f"{node}: agent not answering"
        if not now["peers"] or any(p["state"] != "Established" for p in now["peers"]):
            return f"{node}: sessions {[(p['address'], p['info']) for p in now['peers']]}"
        if node == killed and not now["bgp_routes_in_sync"]:
            return f"{node}: BGP routes not in sync"
        if node in eors_before and now["counters"].get("end_of_rib_received", 0) <= eors_before[node]:
            return f"{node}: no End-of-RIB from {killed} yet"
        if remote_block_routes(query(node, "routes")) < len(with_pods - {node}):
            return f"{node}: a remote block route missing"
    return None


class RouteMonitors:
    """``ip monitor route`` in each of ``nodes``; ``stop()``: the routes of ours (proto 80) each
    saw deleted."""

    def __init__(self, nodes) -> None:
        self.procs: dict[str, subprocess.Popen] = {}
        try:
            for n in nodes:
                self.procs[n] = subprocess.Popen(["ip", "-n", n, "monitor", "route"],
                                                 stdout=subprocess.PIPE, text=True)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> dict[str, list[str]]:
        for proc in self.procs.values():
            proc.terminate()
        return {n: [ln for ln in proc.communicate(timeout=10)[0].splitlines()
                    if ln.startswith("Deleted") and " proto 80" in ln] for n, proc in self.procs.items()}


class Missing:
    """``wait_for(m.nothing, what=m)``: polls ``lack()`` (None: nothing lacks); a timeout says
    what lacked last."""

    def __init__(self, lack, when: str) -> None:
        self.lack, self.when, self.last = lack, when, "not asked yet"

    def nothing(self) -> bool:
        self.last = self.lack()
        return self.last is None

    def __str__(self) -> str:
        return f"everything settled {self.when} (last missing: {self.last})"


def kill_and_restart(name: str, node: str, pairs: list[tuple[dict, dict]], sig: str = "KILL",
                     also: Callable[[], str | None] = lambda: None) -> dict[str, tuple[int, int]]:
    """End ``node``'s agent with SIG``sig`` and start it again while ``pairs`` ping; (sent,
    received) per pair once everything has settled (and ``also()`` says nothing is missing)."""
    state = helpers.lab_state(name)
    peers = [n for n in state["nodes"] if n != node and any(
        p["state"] == "Established" for p in query(n, "status")["peers"])]
    before = {n: eors(n) for n in peers}
    old = state["agent_pids"][node]
    monitors = RouteMonitors(state["nodes"])
    try:
        pings = Pings(pairs)
        try:
            ctl("lab", "restart", "--name", name, "--node", node, "--signal", sig)
            state = helpers.lab_state(name)
            assert state["agent_pids"][node] != old
            wait_for(lambda: (status(node) or {}).get("pid") == state["agent_pids"][node], timeout=20,
                     interval=0.2, what=f"{node}'s new agent answering")
            missing = Missing(lambda: settled(state, node, before) or also(), f"after {node}'s restart")
            wait_for(missing.nothing, timeout=45, interval=0.2, what=missing)
        finally:
            counts = pings.stop()
    finally:
        deleted = monitors.stop()
    # Not one route of ours withdrawn and put back anywhere, however briefly (a gap of a few
    # milliseconds may fall between two pings).
    assert deleted == dict.fromkeys(deleted, []), deleted
    for n in state["nodes"]:  # desired routes are in the kernel, nothing extra
        ctl("node", "routes", "--node", n)
    return counts


def assert_no_loss(counts: dict[str, tuple[int, int]]) -> None:
    assert all(sent > 40 for sent, _ in counts.values()), counts
    assert {pair: sent - got for pair, (sent, got) in counts.items()} == dict.fromkeys(counts, 0), counts


def test_a_sigkilled_mesh_agent_loses_no_packet(mesh_lab):
    killed, *others = sorted(mesh_lab["nodes"])
    pods = {p["node"]: p for p in mesh_lab["pods"]}
    pairs = [(pods[others[0]], pods[others[1]]), (pods[killed], pods[others[0]]),
             (pods[others[1]], pods[killed])]
    assert_no_loss(kill_and_restart(MESH, killed, pairs))


TOR_CONF = """\
router id {me};
log "{log}" all;
protocol device {{}}
protocol kernel {{
    ipv4 {{ export where source = RTS_BGP; }};
}}
{sessions}
"""
TOR_SESSION = """\
protocol bgp node_{i} {{
    local {me} as 64512;
    neighbor {node} as 64512;
    direct;
    passive on;
    hold time 9;
    debug {{ states, events }};
    graceful restart on;
    graceful restart time 120;
    ipv4 {{ import all; export none; }};
}}
"""


def test_a_sigtermed_mesh_agent_loses_no_packet_even_to_a_bird_router(mesh_lab, procs, tmp_path):
    """A rolling update: the agent is SIGTERMed, stops as for a restart, and starts again. Its
    peers include a router on the segment -- BIRD, a graceful-restart helper by RFC 4724 that
    would drop the node's routes at once on a Cease (our own agents keep them as stale even
    then) -- peering by a global BGPPeer: a host behind it pings the stopped node's pod
    throughout, and BIRD never removes a route via that node from its kernel."""
    *others, stopped = sorted(mesh_lab["nodes"])
    pods = {p["node"]: p for p in mesh_lab["pods"]}
    out = ctl("lab", "add-host", "--name", MESH, "tor").stdout
    host = dict(line.split(" ", 1) for line in out.splitlines() if " " in line)
    me = host["address"].split("/")[0]
    conf, sock, log = tmp_path / "bird.conf", tmp_path / "bird.ctl", tmp_path / "bird.log"
    conf.write_text(TOR_CONF.format(me=me, log=log, sessions="".join(
        TOR_SESSION.format(i=i, me=me, node=addr.split("/")[0])
        for i, addr in enumerate(sorted(mesh_lab["nodes"].values())))))
    subprocess.run(["bird", "-p", "-c", str(conf)], check=True)
    bird = subprocess.Popen(["ip", "netns", "exec", host["namespace"], "bird", "-f", "-c", str(conf),
                             "-s", str(sock)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        peer = tmp_path / "tor.json"
        peer.write_text(json.dumps({"apiVersion": "projectcalico.org/v3", "kind": "BGPPeer",
                                    "metadata": {"name": "tor"},
                                    "spec": {"peerIP": me, "asNumber": 64512}}))
        ctl("lab", "apply", "--name", MESH, "-f", str(peer))
        stopped_ip = mesh_lab["nodes"][stopped].split("/")[0]

        def bird_routes() -> str:
            return subprocess.run(["ip", "-n", host["namespace"], "route", "show", "proto", "bird"],
                                  capture_output=True, text=True, check=True).stdout

        def bird_settled() -> str | None:
            if bird.poll() is not None:
                return f"bird exited: {log.read_text(errors='replace')}"
            info = subprocess.run(["birdc", "-s", str(sock), "show", "protocols", "all"],
                                  capture_output=True, text=True, check=False).stdout
            if info.count("BGP state:          Established") != len(mesh_lab["nodes"]):
                return "BIRD: not every session Established"
            if "Neighbor graceful restart active" in info:
                return "BIRD: a graceful restart still active"
            return None if f"via {stopped_ip}" in bird_routes() else f"BIRD: no route via {stopped}"

        wait_for(lambda: bird_settled() is None, timeout=60, interval=0.2,
                 what="BIRD peering with every node")
        monitor = route_monitor(procs, host["namespace"], tmp_path / "monitor.log")
        tor = {"node": "tor", "netns": host["namespace"], "ip": me}
        pairs = [(pods[others[0]], pods[others[1]]), (pods[stopped], pods[others[0]]),
                 (pods[others[1]], pods[stopped]), (tor, pods[stopped])]
        assert_no_loss(kill_and_restart(MESH, stopped, pairs, sig="TERM", also=bird_settled))
        assert "Neighbor graceful restart detected" in log.read_text(), "BIRD saw no restart"
        assert "Received: Administrative shutdown" not in log.read_text()
        deleted = [ln for ln in monitor.read_text().splitlines()
                   if ln.startswith("Deleted") and f"via {stopped_ip}" in ln]
        assert deleted == [], f"BIRD removed routes via {stopped} from its kernel: {deleted}"
    finally:
        bird.terminate()
        bird.wait(timeout=10)


def test_a_sigkilled_lone_reflector_loses_no_client_packet(reflector_lab):
    """The reflector's clients route to each other only through what it reflected: while it
    restarts they keep those routes as stale, and the restarted reflector must not send them
    End-of-RIB before it has learned, and reflected, the other client's block."""
    *clients, reflector = sorted(reflector_lab["nodes"], key=lambda n: int(n.rsplit("node", 1)[1]))
    pods = {p["node"]: p for p in reflector_lab["pods"]}
    assert set(pods) == set(clients)
    assert_no_loss(kill_and_restart(RR, reflector, [(pods[clients[0]], pods[clients[1]])]))
