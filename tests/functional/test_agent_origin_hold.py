"""Origin validation's hold across a datastore outage, with the agent process, a real etcd and a
BIRD mesh peer (issue 9, origin validation).

A route whose block's affinity the agent has not seen is held, not programmed, and counted as
rejected only if it is still rejected ``ORIGIN_HOLD`` later. While the datastore is away, that
affinity may well exist: the agent is the one behind. So nothing held is counted during the
outage, however long; once the datastore is back and listed again, the block's affinity arrives
and the route is programmed, never counted; a route whose block nobody owns is counted
``ORIGIN_HOLD`` after the datastore is back.
"""
from __future__ import annotations

import time
from ipaddress import IPv4Network

import pytest

from bgp.rib import ORIGIN_HOLD
from tests.functional.agent_node import FABRIC_IP as BIRD_IP, NODE_IP, POOL, block, create, etcd_node, \
    routes, start_agent, start_etcd_in, status_of, wait_for_agent
from tests.functional.test_bgp_interop import Bird
from tests.helpers import stop_process, wait_for

pytestmark = pytest.mark.root

BIRD_NODE = "birdnode"
BIRD_BLOCK = IPv4Network("10.244.7.0/26")
NOBODYS = IPv4Network("10.244.8.0/26")  # no node has its affinity, before or after the outage

BIRD_CONF = """\
router id {bird};
log "{log}" all;
protocol device {{}}
protocol static originated {{
    disabled;                # enabled by the test once the datastore is away
    ipv4;
    route {block} blackhole;
    route {nobodys} blackhole;
}}
protocol bgp calico {{
    local {bird} as 64512;
    neighbor {node} as 64512;
    direct;
    passive on;              # the agent (lower address) connects, as in Calico's mesh
    hold time 9;
    ipv4 {{ import all; export where source = RTS_STATIC; next hop self; }};
}}
"""


class MeshBird(Bird):
    """BIRD as a mesh node: a Node ``BIRD_NODE`` at ``BIRD_IP``, announcing ``BIRD_BLOCK`` and
    ``NOBODYS`` once its static protocol is enabled."""

    def _conf(self) -> str:
        return BIRD_CONF.format(bird=BIRD_IP, node=NODE_IP, log=self.log, block=BIRD_BLOCK,
                                nobodys=NOBODYS)


def _docs(node: str) -> list[dict]:
    """A pool, our block, and BIRD's Node (its blocks' affinities are not there)."""
    return [POOL, block("10.244.1.0/26", node),
            {"kind": "Node", "metadata": {"name": BIRD_NODE}, "spec": {"bgp": {"ipv4Address": f"{BIRD_IP}/24"}}}]


def test_no_origin_rejection_is_counted_while_the_datastore_is_away(netns, procs, tmp_path):
    n = etcd_node(netns, procs, tmp_path, "ohold", _docs)
    node_ns, node, url = n.ns, n.node, n.url
    bird = MeshBird(n.fabric, tmp_path / "bird", procs)
    agent = start_agent(procs, node_ns, node, url, tmp_path)
    log_path = tmp_path / "agent.log"

    def status() -> dict:
        return status_of(node, tmp_path)

    wait_for_agent(agent, log_path, lambda: bird.bgp_state() == "Established", 90,
                   "the agent's mesh session with BIRD")
    stop_process(n.etcd)
    wait_for(lambda: status()["datastore"]["state"] == "unreachable", 45,
             what="node status to show the datastore unreachable")

    bird.cli("enable", "originated")  # a block BIRD's node claimed: the agent cannot see it
    wait_for(lambda: status()["counters"].get("received", 0) >= 2, 20,
             what="the agent to receive BIRD's blocks")
    # A measurement window longer than the hold, polled: the route stays held, unprogrammed and
    # uncounted for as long as the datastore is away.
    deadline = time.monotonic() + ORIGIN_HOLD + 5
    while time.monotonic() < deadline:
        st = status()
        assert st["datastore"]["state"] != "connected", "the datastore came back by itself"
        assert st["counters"].get("rejected_origin_unknown", 0) == 0, st["counters"]
        assert str(BIRD_BLOCK) not in routes(node_ns)
        time.sleep(0.5)  # the polling interval of this check, not a synchronisation

    start_etcd_in(procs, node_ns, url, tmp_path / "etcd")
    create(node_ns, url, block(str(BIRD_BLOCK), BIRD_NODE))
    wait_for(lambda: f"{BIRD_BLOCK} via {BIRD_IP} dev eth0 proto 80" in routes(node_ns), 45,
             what="BIRD's block programmed once the datastore shows its affinity")
    wait_for(lambda: status()["counters"].get("rejected_origin_unknown", 0) == 1, ORIGIN_HOLD + 30,
             what="the block nobody owns counted once its hold after the outage is over")
    assert str(NOBODYS) not in routes(node_ns)
    assert agent.poll() is None
