"""A rolling update of the agent (SIGTERM, then a new agent) against BIRD 2, a graceful-restart
helper peering by a global BGPPeer: BIRD keeps our block in its RIB and its kernel throughout,
as stale while we are gone, until the new agent has re-announced it and sent End-of-RIB.

A stop that ended the session with a NOTIFICATION (Cease) would make BIRD flush our routes at
once (RFC 4724 without RFC 8538) and cut the node's pods off its peers until the new agent is
back; that is only right for a node leaving for good: its Node deleted (the running agent ends
every session with a Cease then) or PYCALICO_BGP_STOP=cease (every stop). The other way round,
a peer that ends its session with a Cease has its block removed from the agent's kernel at once.
Everything runs in namespaces: etcd and the agent in the node namespace, BIRD in the fabric
namespace at the other end of the node's eth0.
"""
from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import pytest

from lab.netns import in_netns
from tests.functional.agent_node import FABRIC_IP as BIRD_IP, NODE_IP, POOL, block, etcd_node, \
    node_namespace, start_agent, status_of
from tests.helpers import free_port, route_monitor, wait_for

pytestmark = pytest.mark.root

BLOCK = "10.244.1.0/26"
GR_ACTIVE = "Neighbor graceful restart active"
# In BIRD's log (debug states and events)
CEASED = "Received: Peer de-configured"
ESTABLISHED = "BGP session established"
GR_DETECTED = "Neighbor graceful restart detected"

BIRD_CONF = """\
router id {bird};
log "{log}" all;
protocol device {{}}
protocol kernel {{
    ipv4 {{ export where source = RTS_BGP; }};
}}
protocol bgp tor {{
    local {bird} as 64512;
    neighbor {node} as 64512;
    direct;
    passive on;
    hold time 9;
    debug {{ states, events }};  # into the log: 'Neighbor graceful restart detected/done'
    graceful restart on;
    graceful restart time 120;
    ipv4 {{ import all; export none; }};
}}
"""


def _docs(node: str) -> list[dict]:
    """A pool, our block, and BIRD as a global BGPPeer."""
    return [POOL, block(BLOCK, node),
            {"kind": "BGPPeer", "metadata": {"name": "tor"}, "spec": {"peerIP": BIRD_IP, "asNumber": 64512}}]


class Bird:
    def __init__(self, ns: str, workdir: Path, procs) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.ns, self.sock, self.log = ns, workdir / "bird.ctl", workdir / "bird.log"
        conf = workdir / "bird.conf"
        conf.write_text(BIRD_CONF.format(bird=BIRD_IP, node=NODE_IP, log=self.log))
        subprocess.run(["bird", "-p", "-c", str(conf)], check=True)  # parse only: clear errors
        self.proc = procs.add(subprocess.Popen(
            ["ip", "netns", "exec", ns, "bird", "-f", "-c", str(conf), "-s", str(self.sock),
             "-P", str(workdir / "bird.pid")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_for(lambda: self.proc.poll() is None and self.sock.exists(), 10, what="bird socket")

    def protocol(self) -> str:
        assert self.proc.poll() is None, f"bird exited: {self.log.read_text(errors='replace')}"
        return subprocess.run(["birdc", "-s", str(self.sock), "show", "protocols", "all", "tor"],
                              capture_output=True, text=True, timeout=10, check=False).stdout

    def state(self, info: str | None = None) -> str:
        for line in (self.protocol() if info is None else info).splitlines():
            if line.strip().startswith("BGP state:"):
                return line.split(":", 1)[1].strip()
        return ""

    def kernel_route(self) -> str:
        return subprocess.run(["ip", "-n", self.ns, "route", "show", "exact", BLOCK, "proto", "bird"],
                              capture_output=True, text=True, check=True, timeout=10).stdout.strip()


def test_a_sigtermed_agent_leaves_its_routes_with_a_graceful_restart_helper(netns, procs, tmp_path):
    n = etcd_node(netns, procs, tmp_path, "gts", _docs)
    node_ns, node, fabric, url = n.ns, n.node, n.fabric, n.url
    bird = Bird(fabric, tmp_path / "bird", procs)
    agent = start_agent(procs, node_ns, node, url, tmp_path)
    wait_for(lambda: f"via {NODE_IP}" in bird.kernel_route(), 40, what="BIRD installs our block")
    monitor_log = route_monitor(procs, fabric, tmp_path / "monitor.log")

    agent.send_signal(signal.SIGTERM)  # a rolling update
    assert agent.wait(timeout=15) == 0
    info = wait_for(lambda: (i := bird.protocol()) and bird.state(i) not in ("", "Established") and i,
                    10, what="BIRD sees our session close")
    assert GR_ACTIVE in info, f"BIRD must take the stop for a restart:\n{info}"
    assert "Received: Cease" not in info, info
    assert f"via {NODE_IP}" in bird.kernel_route(), "BIRD flushed our block while we restart"

    start_agent(procs, node_ns, node, url, tmp_path)  # the DaemonSet's new pod
    wait_for(lambda: bird.state() == "Established", 40, what="the new agent's session")
    wait_for(lambda: GR_ACTIVE not in bird.protocol(), 20, what="BIRD's restart done after our End-of-RIB")
    assert "Neighbor graceful restart done" in bird.log.read_text()
    assert f"via {NODE_IP}" in bird.kernel_route()
    deleted = [ln for ln in monitor_log.read_text().splitlines()
               if ln.startswith("Deleted") and BLOCK in ln]
    assert deleted == [], f"BIRD removed our block from its kernel meanwhile: {deleted}"
    status = status_of(node, tmp_path)
    assert [(p["address"], p["state"]) for p in status["peers"]] == [(BIRD_IP, "Established")]


def _delete_node(url: str, node: str) -> None:
    import datastore

    ds = datastore.connect("etcdv3", etcd_endpoints=url)
    try:
        ds.delete("Node", node)
    finally:
        ds.close()


def _agent_with_bird(netns, procs, tmp_path, short: str, env: dict[str, str] | None = None):
    """etcd seeded, BIRD in the fabric, the agent started; returns (node, url, bird, agent) once
    BIRD has our block in its kernel."""
    n = etcd_node(netns, procs, tmp_path, short, _docs)
    bird = Bird(n.fabric, tmp_path / "bird", procs)
    agent = start_agent(procs, n.ns, n.node, n.url, tmp_path, env=env)
    wait_for(lambda: f"via {NODE_IP}" in bird.kernel_route(), 40, what="BIRD installs our block")
    return n.ns, n.node, n.url, bird, agent


def test_bgp_switched_off_by_deleting_the_node_ceases_every_session_at_once(netns, procs, tmp_path):
    """The node leaves the cluster (its Node deleted): the running agent's sessions get a Cease
    (Peer De-configured), and BIRD drops our block at once instead of holding it stale; the
    agent's stop afterwards has nothing left to say."""
    node_ns, node, url, bird, agent = _agent_with_bird(netns, procs, tmp_path, "gtc")
    in_netns(node_ns, _delete_node, url, node)
    # BIRD's log, not its state now: a poll of the state can miss a close and see a later one.
    wait_for(lambda: CEASED in bird.log.read_text(), 20, what="BIRD receives our Cease")
    wait_for(lambda: bird.kernel_route() == "", 3, what="BIRD drops our block from its kernel")
    agent.send_signal(signal.SIGTERM)
    assert agent.wait(timeout=15) == 0
    assert "leaving for good" in (tmp_path / "agent.log").read_text()
    # The whole story, our ExaBGP gone: no session after the Cease (ExaBGP connected again right
    # after it, and the reload that removed BIRD closed that session without a NOTIFICATION).
    log = bird.log.read_text()
    assert ESTABLISHED not in log.split(CEASED, 1)[1] and GR_DETECTED not in log, log


def test_pycalico_bgp_stop_cease_makes_every_stop_a_cease(netns, procs, tmp_path):
    _, _, _, bird, agent = _agent_with_bird(netns, procs, tmp_path, "gtx", {"PYCALICO_BGP_STOP": "cease"})
    agent.send_signal(signal.SIGTERM)
    assert agent.wait(timeout=15) == 0
    info = bird.protocol()
    assert bird.state(info) != "Established", "the agent exits once its sessions are down"
    assert "Received: Administrative shutdown" in info and GR_ACTIVE not in info, info
    wait_for(lambda: bird.kernel_route() == "", 3, what="BIRD drops our block from its kernel")


def test_a_bad_pycalico_bgp_stop_stops_the_agent_naming_it(netns, procs, tmp_path):
    node_ns, node = node_namespace(netns, "gtb")
    agent = start_agent(procs, node_ns, node, f"http://127.0.0.1:{free_port()}", tmp_path,
                        env={"PYCALICO_BGP_STOP": "later"})
    assert agent.wait(timeout=30) == 2
    assert "PYCALICO_BGP_STOP: 'later' is not graceful or cease" in (tmp_path / "agent.log").read_text()


TOR_BLOCK = "10.244.7.0/26"
# BIRD as the mesh peer of a Node ("tor", BIRD's address) that owns TOR_BLOCK, announcing it.
TOR_CONF = """\
router id {bird};
log "{log}" all;
protocol device {{}}
protocol static tor_block {{
    ipv4;
    route {block} blackhole;
}}
protocol bgp tor {{
    local {bird} as 64512;
    neighbor {node} as 64512;
    direct;
    passive on;
    hold time 9;
    graceful restart on;
    graceful restart time 120;
    ipv4 {{ import all; export where source = RTS_STATIC; next hop self; }};
}}
"""


def _tor_docs(node: str) -> list[dict]:
    """A pool, our block, and BIRD as the mesh Node "tor" owning TOR_BLOCK."""
    return [POOL, block(BLOCK, node),
            {"kind": "Node", "metadata": {"name": "tor"}, "spec": {"bgp": {"ipv4Address": f"{BIRD_IP}/24"}}},
            block(TOR_BLOCK, "tor")]


def test_a_mesh_peer_that_ceases_has_its_block_removed_from_our_kernel_at_once(netns, procs, tmp_path):
    """`birdc disable` ends the mesh session with a Cease (Administrative Shutdown), as a node
    leaving for good does: RFC 4724 ends graceful restart on a NOTIFICATION, so the agent removes
    the peer's block from its kernel at once, not at the 120 s restart time."""
    n = etcd_node(netns, procs, tmp_path, "gtb", _tor_docs)
    node_ns, node, fabric, url = n.ns, n.node, n.fabric, n.url
    workdir = tmp_path / "bird"
    workdir.mkdir()
    conf = workdir / "bird.conf"
    conf.write_text(TOR_CONF.format(bird=BIRD_IP, node=NODE_IP, block=TOR_BLOCK, log=workdir / "bird.log"))
    subprocess.run(["bird", "-p", "-c", str(conf)], check=True)
    sock = workdir / "bird.ctl"
    bird = procs.add(subprocess.Popen(
        ["ip", "netns", "exec", fabric, "bird", "-f", "-c", str(conf), "-s", str(sock),
         "-P", str(workdir / "bird.pid")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    wait_for(lambda: bird.poll() is None and sock.exists(), 10, what="bird socket")
    start_agent(procs, node_ns, node, url, tmp_path)

    def kernel_route() -> str:
        return subprocess.run(["ip", "-n", node_ns, "route", "show", "exact", TOR_BLOCK],
                              capture_output=True, text=True, check=True, timeout=10).stdout.strip()
    wait_for(lambda: f"via {BIRD_IP}" in kernel_route(), 40, what="the agent installs BIRD's block")
    out = subprocess.run(["birdc", "-s", str(sock), "disable", "tor"], capture_output=True, text=True,
                         timeout=10, check=True).stdout
    assert "disabled" in out, out
    wait_for(lambda: kernel_route() == "", 10, what="the agent removes BIRD's block from its kernel")
    status = status_of(node, tmp_path)
    assert [p["address"] for p in status["peers"]] == [BIRD_IP], status["peers"]
    assert status["peers"][0]["state"] != "Established", status["peers"]
