"""Route reflectors end to end (issue 9 item 1), the source article's setup: ``lab up
--route-reflectors 2`` adds two nodes with cluster ID 244.0.0.1 and the route-reflector label, turns
the mesh off and applies the BGPPeer (nodeSelector all(), peerSelector route-reflector == 'true').
The lab converges only when every client has its two reflector sessions, the reflectors have
everybody, and every node has a route to every other node's block: each block reaches the other
clients only by reflection. Then every pod pings every other pod."""
from __future__ import annotations

import json
import secrets
import subprocess
from pathlib import Path

import pytest

from tests import helpers

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
