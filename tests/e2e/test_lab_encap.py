"""``lab up --encap vxlan-crosssubnet``: 3 nodes on two subnets behind a router, 1 pod each, and
``lab set-encap`` switching the pool in place (issue 8, item 8). Through the real CLI."""
from __future__ import annotations

import ipaddress
import json
import os
import secrets
import subprocess
from pathlib import Path

import pytest

from tests import helpers
from tests.helpers import ctl, wait_for

LAB = f"x{secrets.token_hex(2)}"  # lab names are short: namespace/interface names derive from them
SUBNET_A, SUBNET_B = ipaddress.ip_network("10.99.0.0/24"), ipaddress.ip_network("10.99.1.0/24")


def lab_state() -> dict:
    return helpers.lab_state(LAB)


def lab_namespaces() -> list[str]:
    return helpers.lab_namespaces(LAB)


def pools() -> dict[str, dict]:
    items = json.loads(ctl("--lab", LAB, "get", "ippool", "-o", "json").stdout)
    items = items.get("items", items) if isinstance(items, dict) else items
    return {p["metadata"]["name"]: p["spec"] for p in items}


def node_ip(node: str) -> str:
    return str(ipaddress.ip_interface(lab_state()["nodes"][node]).ip)


def pings(ns: str, address: str, attempts: int = 3) -> bool:
    return any(subprocess.run(["ip", "netns", "exec", ns, "ping", "-c", "1", "-W", "1", address],
                              capture_output=True).returncode == 0 for _ in range(attempts))


@pytest.fixture(scope="module")
def lab():
    try:
        up = ctl("lab", "up", "--name", LAB, "--nodes", "3", "--pods-per-node", "1",
                 "--encap", "vxlan-crosssubnet")
        print(up.stdout)
        yield lab_state()
    finally:
        subprocess.run([helpers.CTL, "lab", "down", "--name", LAB], capture_output=True, timeout=120)


def test_the_state_records_the_mode(lab):
    assert lab["encap"] == "vxlan-crosssubnet"


def test_odd_nodes_on_subnet_a_even_nodes_on_subnet_b(lab):
    nets = {n: ipaddress.ip_interface(a).network for n, a in lab["nodes"].items()}
    assert nets == {f"{LAB}-node1": SUBNET_A, f"{LAB}-node2": SUBNET_B, f"{LAB}-node3": SUBNET_A}
    for node, address in lab["nodes"].items():  # the kernel agrees with the state file
        out = subprocess.run(["ip", "-n", node, "-4", "-o", "addr", "show", "dev", "eth0"],
                             capture_output=True, text=True, check=True).stdout
        assert f"inet {address} " in out, out
        gateway = str(nets[node].network_address + 253)
        route = subprocess.run(["ip", "-n", node, "route", "show", "default"],
                               capture_output=True, text=True, check=True).stdout
        assert route.startswith(f"default via {gateway} dev eth0"), route


def test_a_router_forwards_between_the_subnets(lab):
    assert f"{LAB}-router" in lab_namespaces()
    addrs = subprocess.run(["ip", "-n", f"{LAB}-router", "-4", "-o", "addr"], capture_output=True,
                           text=True, check=True).stdout
    assert "inet 10.99.0.253/24" in addrs and "inet 10.99.1.253/24" in addrs, addrs
    forward = subprocess.run(["ip", "netns", "exec", f"{LAB}-router", "cat",
                              "/proc/sys/net/ipv4/ip_forward"], capture_output=True, text=True)
    assert forward.stdout.strip() == "1"
    bridges = subprocess.run(["ip", "-n", f"{LAB}-fabric", "-o", "link", "show", "type", "bridge"],
                             capture_output=True, text=True, check=True).stdout
    assert " br0:" in bridges and " br1:" in bridges, bridges


def test_every_node_reaches_every_other_node(lab):
    nodes = sorted(lab["nodes"])
    assert pings(nodes[0], node_ip(nodes[-1])), "node1 cannot reach the last node"
    failed = [f"{a} -> {b}" for a in nodes for b in nodes if a != b and not pings(a, node_ip(b))]
    assert not failed, failed


def test_the_datastore_is_reachable_from_both_subnets(lab):
    # every agent registered itself (subnet B's through the router), with its address and /24
    items = json.loads(ctl("--lab", LAB, "get", "nodes", "-o", "json").stdout)
    items = items.get("items", items) if isinstance(items, dict) else items
    got = {n["metadata"]["name"]: n["spec"]["bgp"]["ipv4Address"] for n in items}
    assert got == lab["nodes"]
    assert ipaddress.ip_interface(got[f"{LAB}-node2"]).network == SUBNET_B


def test_the_pool_is_vxlan_crosssubnet(lab):
    spec = pools()["default-ipv4-ippool"]
    assert (spec.get("ipipMode", "Never"), spec["vxlanMode"]) == ("Never", "CrossSubnet")


def test_pods_on_the_same_subnet_reach_each_other(lab):
    """node1 and node3 share subnet A: CrossSubnet routes them directly, without VXLAN."""
    by_node = {p["node"]: p for p in lab["pods"]}
    one, three = by_node[f"{LAB}-node1"], by_node[f"{LAB}-node3"]
    wait_for(lambda: pings(one["netns"], three["ip"], 1) and pings(three["netns"], one["ip"], 1),
             timeout=20, interval=0.5, what="pods on node1 and node3 to reach each other")


def test_every_pod_reaches_every_other_pod_across_subnets(lab):
    out = ctl("lab", "ping", "--name", LAB, check=False)
    assert out.returncode == 0 and "6/6 pod pairs reachable" in out.stdout, out.stdout


def test_set_encap_refuses_a_topology_change(lab):
    before = pools()
    out = ctl("lab", "set-encap", "--name", LAB, "vxlan", check=False)
    assert out.returncode == 1
    assert "topology is fixed at 'lab up'" in out.stderr, out.stderr
    assert pools() == before and lab_state()["encap"] == "vxlan-crosssubnet"


def test_set_encap_switches_the_pool_in_place(lab):
    pids = lab_state()["agent_pids"]
    try:
        ctl("lab", "set-encap", "--name", LAB, "ipip-crosssubnet")
        spec = pools()["default-ipv4-ippool"]
        assert (spec["ipipMode"], spec.get("vxlanMode", "Never")) == ("CrossSubnet", "Never")
        assert lab_state()["encap"] == "ipip-crosssubnet"
        again = ctl("lab", "set-encap", "--name", LAB, "ipip-crosssubnet")
        assert "no pool needed a change" in again.stdout
    finally:
        ctl("lab", "set-encap", "--name", LAB, "vxlan-crosssubnet")
    spec = pools()["default-ipv4-ippool"]
    assert (spec.get("ipipMode", "Never"), spec["vxlanMode"]) == ("Never", "CrossSubnet")
    assert lab_state()["encap"] == "vxlan-crosssubnet"
    # nothing was restarted: the same agents still run
    assert lab_state()["agent_pids"] == pids
    for node, pid in pids.items():
        os.kill(pid, 0)
        assert str(pid) in subprocess.run(["ip", "netns", "pids", node], capture_output=True,
                                          text=True).stdout.split()


def test_pods_reach_each_other_again_after_switching_back(lab):
    out = ctl("lab", "ping", "--name", LAB, check=False)
    assert out.returncode == 0 and "6/6 pod pairs reachable" in out.stdout, out.stdout


def test_down_leaves_nothing(lab):
    ctl("lab", "down", "--name", LAB)
    assert lab_namespaces() == []
    assert not Path(f"/run/pycalico-lab/{LAB}").exists()
