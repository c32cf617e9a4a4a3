"""Route reflectors end to end (issue 9 item 1), the source article's setup: ``lab up
--route-reflectors 2`` adds two nodes with cluster ID 244.0.0.1 and the route-reflector label, turns
the mesh off and applies the BGPPeer (nodeSelector all(), peerSelector route-reflector == 'true').
The lab converges only when every client has its two reflector sessions, the reflectors have
everybody, and every node has a route to every other node's block: each block reaches the other
clients only by reflection. Then every pod pings every other pod."""
from __future__ import annotations

import json
import re
import secrets
import subprocess
from pathlib import Path

import pytest

from bgp.peers import NODE_PEER_TYPE
from felix.status import RUN_ROOT
from tests import helpers
from tests.helpers import Pings, wait_for

NAME = f"r{secrets.token_hex(2)}"  # short: namespace and interface names derive from it


def ctl(*args: str) -> subprocess.CompletedProcess:
    return helpers.ctl(*args, timeout=300)


@pytest.fixture(scope="module")
def reflector_lab():
    try:
        ctl("lab", "up", "--name", NAME, "--nodes", "3", "--pods-per-node", "1", "--route-reflectors", "2")
        yield json.loads(Path(f"/run/pycalico-lab/{NAME}/state.json").read_text())
    finally:
        subprocess.run([helpers.CTL, "lab", "down", "--name", NAME], capture_output=True, timeout=120)


def test_lab_with_two_reflectors_converges_and_pods_ping(reflector_lab):
    assert len(reflector_lab["nodes"]) == 5
    ctl("lab", "ping", "--name", NAME)


def test_clients_route_to_each_other_not_via_the_reflectors(reflector_lab):
    """node1's routes to the other clients' blocks go straight to those clients: the reflectors
    pass the next hop on unchanged."""
    nodes = reflector_lab["nodes"]  # name -> address/24; the last two are the reflectors
    names = list(nodes)
    clients, reflectors = names[:3], names[3:]
    routes = subprocess.run(["ip", "-n", clients[0], "route"], capture_output=True,
                            text=True, check=True).stdout
    gateways = {line.split(" via ")[1].split()[0] for line in routes.splitlines()
                if " via " in line and not line.startswith("default")}
    assert {nodes[c].split("/")[0] for c in clients[1:]} <= gateways, routes
    assert not {nodes[r].split("/")[0] for r in reflectors} & gateways, routes


# -- make-before-break (issue 9 item 3): a 3-node mesh lab switched to a reflector and back ---------

MESH = f"m{secrets.token_hex(2)}"
RR_PEER = {"apiVersion": "projectcalico.org/v3", "kind": "BGPPeer",
           "metadata": {"name": "peer-with-route-reflectors"},
           "spec": {"nodeSelector": "all()", "peerSelector": "route-reflector == 'true'"}}


def bgp_configuration(mesh: bool, asn: int = 64512, port: int | None = None) -> dict:
    spec = {"asNumber": asn, "nodeToNodeMeshEnabled": mesh, "logSeverityScreen": "Info"}
    if port is not None:
        spec["listenPort"] = port
    return {"apiVersion": "projectcalico.org/v3", "kind": "BGPConfiguration", "metadata": {"name": "default"},
            "spec": spec}


@pytest.fixture(scope="module")
def mesh_lab():
    try:
        ctl("lab", "up", "--name", MESH, "--nodes", "3", "--pods-per-node", "1")
        yield helpers.lab_state(MESH)
    finally:
        subprocess.run([helpers.CTL, "lab", "down", "--name", MESH], capture_output=True, timeout=120)


def apply(tmp_path: Path, doc: dict) -> None:
    path = tmp_path / f"{doc['kind']}.json"
    path.write_text(json.dumps(doc))
    ctl("lab", "apply", "--name", MESH, "-f", str(path))


def make_reflector(tmp_path: Path, node: str, on: bool) -> None:
    """As the article does it: the node's label route-reflector=true and its routeReflectorClusterID."""
    doc = json.loads(ctl("--lab", MESH, "get", "node", node, "-o", "json").stdout)
    labels, bgp = doc["metadata"].setdefault("labels", {}), doc["spec"]["bgp"]
    if on:
        labels["route-reflector"], bgp["routeReflectorClusterID"] = "true", "244.0.0.1"
    else:
        labels.pop("route-reflector", None)
        bgp.pop("routeReflectorClusterID", None)
    apply(tmp_path, doc)


def peers(node: str) -> dict[str, tuple[str, str]]:
    """address -> (peer type, info) of the node's sessions, from its agent's status."""
    from felix.status import query

    return {p["address"]: (p["peer_type"], p["info"]) for p in query(node, "status")["peers"]}


def test_mesh_to_reflector_and_back_loses_no_packet(mesh_lab, tmp_path):
    """The source article's order (the reflector leaves the mesh first, then the BGPPeer, then the
    mesh off) and back, while every pod pings every other: not one packet lost, no agent restarted."""
    nodes = sorted(mesh_lab["nodes"])
    address = {n: mesh_lab["nodes"][n].split("/")[0] for n in nodes}
    rr, clients = nodes[2], nodes[:2]
    pods = {p["node"]: p for p in mesh_lab["pods"]}
    pids = mesh_lab["agent_pids"]
    pings = Pings([(pods[a], pods[b]) for a in nodes for b in nodes if a < b])
    try:
        make_reflector(tmp_path, rr, True)
        apply(tmp_path, RR_PEER)
        apply(tmp_path, bgp_configuration(mesh=False))
        wait_for(lambda: all(peers(c) == {address[rr]: (NODE_PEER_TYPE, "Established")} for c in clients)
                 and set(peers(rr)) == {address[c] for c in clients}, timeout=60, interval=0.5,
                 what="the clients' only session is to the reflector")

        apply(tmp_path, bgp_configuration(mesh=True))
        ctl("--lab", MESH, "delete", "bgppeer", RR_PEER["metadata"]["name"])
        make_reflector(tmp_path, rr, False)
        mesh = {n: {address[o]: ("node-to-node mesh", "Established") for o in nodes if o != n} for n in nodes}
        # The reflector stops reflecting only at its drain deadline (bgp.transition): wait for it.
        wait_for(lambda: all(peers(n) == mesh[n] for n in nodes), timeout=90, interval=0.5,
                 what="the full mesh back, nothing draining")
    finally:
        counts = pings.stop()
    assert all(sent > 100 for sent, _ in counts.values()), counts
    assert {pair: sent - got for pair, (sent, got) in counts.items()} == {pair: 0 for pair in counts}, counts
    assert helpers.lab_state(MESH)["agent_pids"] == pids
    ctl("lab", "ping", "--name", MESH)


def exabgp_pid(node: str) -> int | None:
    from felix.status import query

    reason = query(node, "status")["bgp_speaker"]["reason"]  # "exabgp pid N" while running
    match = re.fullmatch(r"exabgp pid (\d+)", reason)
    return int(match[1]) if match else None


def listening(node: str, address: str) -> set[int]:
    out = subprocess.run(["ip", "netns", "exec", node, "ss", "-ltnH"], capture_output=True, text=True,
                         check=True).stdout
    return {int(ln.split()[3].rpartition(":")[2]) for ln in out.splitlines()
            if ln.split()[3].startswith(f"{address}:")}


def test_as_number_and_listen_port_change_live_losing_no_packet(mesh_lab, tmp_path):
    """BGPConfiguration asNumber, then listenPort, changed while every pod pings every other: each
    agent restarts its ExaBGP (graceful restart on both sides), no agent restarts, no packet lost."""
    nodes = sorted(mesh_lab["nodes"])
    address = {n: mesh_lab["nodes"][n].split("/")[0] for n in nodes}
    pods = {p["node"]: p for p in mesh_lab["pods"]}
    pids = helpers.lab_state(MESH)["agent_pids"]
    mesh = {n: {address[o]: ("node-to-node mesh", "Established") for o in nodes if o != n} for n in nodes}
    pings = Pings([(pods[a], pods[b]) for a in nodes for b in nodes if a < b])
    try:
        for asn, port in ((64600, None), (64600, 1790), (64512, None)):
            before = {n: exabgp_pid(n) for n in nodes}
            apply(tmp_path, bgp_configuration(mesh=True, asn=asn, port=port))
            wait_for(lambda: all(exabgp_pid(n) not in (None, before[n]) for n in nodes), timeout=30,
                     interval=0.5, what=f"every node's ExaBGP restarted for AS {asn} port {port}")
            wait_for(lambda: all(peers(n) == mesh[n] for n in nodes), timeout=60, interval=0.5,
                     what=f"the mesh back with AS {asn} port {port}")
            for n in nodes:
                assert listening(n, address[n]) == {port or 179}
                conf = (RUN_ROOT / n / "exabgp.conf").read_text()
                assert f"local-as {asn};" in conf and f"connect {port or 179};" in conf
    finally:
        counts = pings.stop()
    assert all(sent > 100 for sent, _ in counts.values()), counts
    assert {pair: sent - got for pair, (sent, got) in counts.items()} == {pair: 0 for pair in counts}, counts
    assert helpers.lab_state(MESH)["agent_pids"] == pids


def set_node_asn(tmp_path: Path, node: str, asn: int | None) -> None:
    doc = json.loads(ctl("--lab", MESH, "get", "node", node, "-o", "json").stdout)
    if asn is None:
        doc["spec"]["bgp"].pop("asNumber", None)
    else:
        doc["spec"]["bgp"]["asNumber"] = asn
    apply(tmp_path, doc)


def sessions_since(node: str) -> dict[str, str]:
    from felix.status import query

    return {p["address"]: p["since"] for p in query(node, "status")["peers"]}


def test_a_node_as_number_change_restarts_only_that_nodes_exabgp(mesh_lab, tmp_path):
    """Node bgp.asNumber on node1 (eBGP to the others), then back: node1's ExaBGP restarts, the
    others reconfigure only their session to node1 -- their session to each other does not flap --
    and no packet is lost."""
    nodes = sorted(mesh_lab["nodes"])
    one, others = nodes[0], nodes[1:]
    address = {n: mesh_lab["nodes"][n].split("/")[0] for n in nodes}
    pods = {p["node"]: p for p in mesh_lab["pods"]}
    mesh = {n: {address[o]: ("node-to-node mesh", "Established") for o in nodes if o != n} for n in nodes}
    wait_for(lambda: all(peers(n) == mesh[n] for n in nodes), timeout=60, interval=0.5, what="the mesh")
    between = sessions_since(others[0])[address[others[1]]]
    pings = Pings([(pods[a], pods[b]) for a in nodes for b in nodes if a < b])
    try:
        for asn in (64601, None):
            before = {n: exabgp_pid(n) for n in nodes}
            set_node_asn(tmp_path, one, asn)
            wait_for(lambda: exabgp_pid(one) not in (None, before[one]), timeout=30, interval=0.5,
                     what=f"{one}'s ExaBGP restarted for AS {asn}")
            to_one = re.compile(rf"neighbor {re.escape(address[one])} {{[^{{}}]*peer-as {asn or 64512};")
            wait_for(lambda: all(to_one.search((RUN_ROOT / o / "exabgp.conf").read_text()) for o in others),
                     timeout=30, interval=0.5, what="the others reconfigured their session to it")
            wait_for(lambda: all(peers(n) == mesh[n] for n in nodes), timeout=60, interval=0.5,
                     what=f"the mesh back with {one} in AS {asn}")
            assert {o: exabgp_pid(o) for o in others} == {o: before[o] for o in others}
    finally:
        counts = pings.stop()
    assert sessions_since(others[0])[address[others[1]]] == between, "an unrelated session flapped"
    assert all(sent > 100 for sent, _ in counts.values()), counts
    assert {pair: sent - got for pair, (sent, got) in counts.items()} == {pair: 0 for pair in counts}, counts
