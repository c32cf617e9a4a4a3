"""felix.tunnels.TunnelManager against the real kernel, inside throwaway namespaces.

Topology: namespace ``fabric`` holds bridge ``br0``; ``n1`` (eth0 192.168.50.11/24) and ``n2``
(eth0 192.168.50.12/24) are joined to it by veths. A "pod" is an address on each node's ``lo``
(10.244.1.1 on n1, 10.244.2.1 on n2). Routes over ``vxlan.calico`` are someone else's module, so the
tests add them by hand; a ping between the pod addresses then proves device, neighbour and FDB.
"""
from __future__ import annotations

import asyncio
import secrets
import subprocess
from ipaddress import IPv4Address

import pytest

from felix.tunnels import (
    IPIP_DEVICE, VXLAN_DEVICE, IpipConfig, RemoteVtep, TunnelManager, VxlanConfig, desired_vtep_entries,
)

pytestmark = pytest.mark.root

A = IPv4Address
MAC1, MAC2, MAC3 = "66:00:00:00:00:01", "66:00:00:00:00:02", "66:00:00:00:00:03"
NODE_IP = {"n1": "192.168.50.11", "n2": "192.168.50.12"}
VTEP = {"n1": "10.244.1.0", "n2": "10.244.2.0"}
POD = {"n1": "10.244.1.1", "n2": "10.244.2.1"}
BLOCK = {"n1": "10.244.1.0/26", "n2": "10.244.2.0/26"}
MAC = {"n1": MAC1, "n2": MAC2}


def ip(ns: str, *args: str, check: bool = True) -> str:
    return subprocess.run(["ip", "-n", ns, *args], check=check, capture_output=True, text=True).stdout


def bridge_fdb(ns: str, dev: str) -> str:
    return subprocess.run(["bridge", "-n", ns, "fdb", "show", "dev", dev],
                          check=True, capture_output=True, text=True).stdout


def join_bridge(fabric: str, node: str, addr: str) -> None:
    """A veth from ``node`` (``eth0``, ``addr``) to the bridge in ``fabric`` (unique temporary names)."""
    near, far = f"v{secrets.token_hex(5)}", f"v{secrets.token_hex(5)}"
    subprocess.run(["ip", "link", "add", near, "type", "veth", "peer", "name", far], check=True)
    subprocess.run(["ip", "link", "set", near, "netns", node], check=True)
    subprocess.run(["ip", "link", "set", far, "netns", fabric], check=True)
    ip(node, "link", "set", near, "name", "eth0")
    ip(node, "addr", "add", addr, "dev", "eth0")
    ip(node, "link", "set", "eth0", "up")
    ip(fabric, "link", "set", far, "master", "br0")
    ip(fabric, "link", "set", far, "up")


@pytest.fixture
def nodes(netns) -> dict[str, str]:
    fabric = netns("fabric")
    ip(fabric, "link", "add", "br0", "type", "bridge")
    ip(fabric, "link", "set", "br0", "up")
    names = {}
    for node in ("n1", "n2"):
        names[node] = netns(node)
        join_bridge(fabric, names[node], NODE_IP[node] + "/24")
        ip(names[node], "addr", "add", POD[node] + "/32", "dev", "lo")
    return names


def config(node: str, **overrides) -> VxlanConfig:
    return VxlanConfig(**{"node": node, "node_ip": NODE_IP[node], "vtep_ip": VTEP[node],
                          "vtep_mac": MAC[node], **overrides})


def remote(node: str) -> RemoteVtep:
    return RemoteVtep(node, A(VTEP[node]), MAC[node], A(NODE_IP[node]))


def other(node: str) -> str:
    return "n2" if node == "n1" else "n1"


def run(coro):
    return asyncio.run(coro)


async def sync(ns: str, cfg: VxlanConfig, remotes):
    async with TunnelManager(netns=ns) as tunnels:
        return await tunnels.sync_vxlan(cfg, desired_vtep_entries(remotes))


def route_to_other_block(nodes: dict[str, str]) -> None:
    """What the route writer would do: ``<block> via <vtep> dev vxlan.calico onlink``."""
    for node, ns in nodes.items():
        peer = other(node)
        ip(ns, "route", "replace", BLOCK[peer], "via", VTEP[peer], "dev", VXLAN_DEVICE, "onlink")


def pod_ping(nodes: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", nodes["n1"], "ping", "-c", "1", "-W", "2",
                           "-I", POD["n1"], POD["n2"]], capture_output=True, text=True)


def sync_both(nodes):
    return {node: run(sync(ns, config(node), [remote(other(node))])) for node, ns in nodes.items()}


def test_vxlan_device_neighbour_and_fdb_carry_a_pod_ping(nodes):
    results = sync_both(nodes)

    assert all(r.ok and r.mac == MAC[n] for n, r in results.items()), results
    n1 = nodes["n1"]
    details = " ".join(ip(n1, "-d", "link", "show", VXLAN_DEVICE).split())
    for part in ("mtu 1450", f"link/ether {MAC1}", "vxlan id 4096", "local 192.168.50.11",
                 "dev eth0", "dstport 4789", "nolearning", ",UP,"):
        assert part in details, details
    assert "inet 10.244.1.0/32" in ip(n1, "-4", "addr", "show", VXLAN_DEVICE)
    assert f"10.244.2.0 lladdr {MAC2} PERMANENT" in ip(n1, "neigh", "show", "dev", VXLAN_DEVICE)
    assert f"{MAC2} dst 192.168.50.12 self permanent" in bridge_fdb(n1, VXLAN_DEVICE)

    route_to_other_block(nodes)
    ping = pod_ping(nodes)
    assert ping.returncode == 0, ping.stdout + ping.stderr


def test_second_sync_with_the_same_input_writes_nothing(nodes):
    n1 = nodes["n1"]
    first = run(sync(n1, config("n1"), [remote("n2")]))

    async def again():
        async with TunnelManager(netns=n1) as tunnels:
            result = await tunnels.sync_vxlan(config("n1"), desired_vtep_entries([remote("n2")]))
            in_sync = await tunnels.in_sync(desired_vtep_entries([remote("n2")]), config("n1"))
            return result, in_sync, tunnels.writes

    second, in_sync, writes = run(again())
    assert first.writes == 5  # link add, link up, address, FDB, neighbour
    assert (second.writes, second.failed, second.problem, writes, in_sync) == (0, {}, None, 0, True)


def test_removed_remote_loses_its_entries_and_foreign_ones_survive(nodes):
    n1 = nodes["n1"]
    extra = RemoteVtep("n3", A("10.244.3.0"), MAC3, A("192.168.50.13"))
    run(sync(n1, config("n1"), [remote("n2"), extra]))
    ip(n1, "neigh", "add", "192.168.50.99", "lladdr", "66:00:00:00:00:99", "dev", "eth0", "nud", "permanent")
    ip(n1, "link", "add", "vxlan.other", "type", "vxlan", "id", "9", "dstport", "4790", "nolearning")
    subprocess.run(["bridge", "-n", n1, "fdb", "append", MAC3, "dev", "vxlan.other",
                    "dst", "192.168.50.13", "self", "permanent"], check=True)
    assert "10.244.3.0" in ip(n1, "neigh", "show", "dev", VXLAN_DEVICE)

    result = run(sync(n1, config("n1"), [remote("n2")]))

    assert (result.writes, result.failed) == (2, {})  # one neighbour, one FDB entry deleted
    neigh = ip(n1, "neigh", "show", "dev", VXLAN_DEVICE)
    fdb = bridge_fdb(n1, VXLAN_DEVICE)
    assert "10.244.3.0" not in neigh and MAC3 not in fdb
    assert "10.244.2.0" in neigh and MAC2 in fdb
    assert "192.168.50.99 lladdr 66:00:00:00:00:99 PERMANENT" in ip(n1, "neigh", "show", "dev", "eth0")
    assert f"{MAC3} dst 192.168.50.13 self permanent" in bridge_fdb(n1, "vxlan.other")

    async def remove_twice():
        async with TunnelManager(netns=n1) as tunnels:
            return await tunnels.remove_vxlan(), await tunnels.remove_vxlan()

    assert run(remove_twice()) == (True, False)
    assert ip(n1, "link", "show", VXLAN_DEVICE, check=False) == ""
    assert "vxlan.other" in ip(n1, "link", "show", "vxlan.other")
    assert f"{MAC3} dst 192.168.50.13" in bridge_fdb(n1, "vxlan.other")
    assert "192.168.50.99" in ip(n1, "neigh", "show", "dev", "eth0")


def test_drift_is_seen_and_repaired(nodes):
    n1 = nodes["n1"]
    desired = desired_vtep_entries([remote("n2")])
    run(sync(n1, config("n1"), [remote("n2")]))
    subprocess.run(["bridge", "-n", n1, "fdb", "del", MAC2, "dev", VXLAN_DEVICE, "dst", "192.168.50.12"],
                   check=True)
    ip(n1, "neigh", "replace", "10.244.2.0", "lladdr", "66:00:00:00:00:42", "dev", VXLAN_DEVICE,
       "nud", "permanent")

    async def check_and_repair():
        async with TunnelManager(netns=n1) as tunnels:
            before = await tunnels.in_sync(desired)
            result = await tunnels.sync_vxlan(config("n1"), desired)
            return before, result, await tunnels.in_sync(desired), await tunnels.vtep_state()

    before, result, after, state = run(check_and_repair())
    assert (before, result.writes, result.failed, after) == (False, 2, {}, True)
    assert state.permanent() == ({A("10.244.2.0"): MAC2}, {MAC2: [A("192.168.50.12")]})

    run(sync(nodes["n2"], config("n2"), [remote("n1")]))
    route_to_other_block(nodes)
    assert pod_ping(nodes).returncode == 0


def test_vni_change_recreates_the_device_and_mtu_change_is_in_place(nodes):
    n1 = nodes["n1"]
    run(sync(n1, config("n1"), [remote("n2")]))
    index_before = ip(n1, "-o", "link", "show", VXLAN_DEVICE).split(":")[0]

    mtu_changed = run(sync(n1, config("n1", mtu=1400), [remote("n2")]))
    assert mtu_changed.writes == 1
    assert ip(n1, "-o", "link", "show", VXLAN_DEVICE).split(":")[0] == index_before
    assert "mtu 1400" in ip(n1, "link", "show", VXLAN_DEVICE)

    recreated = run(sync(n1, config("n1", vni=5000, port=4790, mtu=1400), [remote("n2")]))
    assert (recreated.writes, recreated.failed, recreated.problem) == (6, {}, None)  # del + the 5 of a new one
    details = " ".join(ip(n1, "-d", "link", "show", VXLAN_DEVICE).split())
    assert "vxlan id 5000" in details and "dstport 4790" in details and "mtu 1400" in details
    assert f"{MAC2} dst 192.168.50.12 self permanent" in bridge_fdb(n1, VXLAN_DEVICE)
    assert "10.244.2.0" in ip(n1, "neigh", "show", "dev", VXLAN_DEVICE)


def test_generated_mac_is_returned_and_used(nodes):
    n1 = nodes["n1"]
    result = run(sync(n1, VxlanConfig(node="node-1", node_ip=NODE_IP["n1"], vtep_ip=VTEP["n1"]), []))
    assert result.ok and result.mac is not None
    assert f"link/ether {result.mac}" in ip(n1, "link", "show", VXLAN_DEVICE)


def test_no_device_holding_the_node_ip_is_a_problem_not_a_crash(nodes):
    n1 = nodes["n1"]
    result = run(sync(n1, config("n1", node_ip="192.168.77.1"), [remote("n2")]))
    assert result.writes == 0 and "192.168.77.1" in result.problem
    assert ip(n1, "link", "show", VXLAN_DEVICE, check=False) == ""


# -- IPIP --------------------------------------------------------------------------------------

def tunl0_missing_reason(netns) -> str | None:
    """None when a fresh namespace gets a ``tunl0`` (after trying ``modprobe ipip``), else why not."""
    try:
        probe = subprocess.run(["modprobe", "ipip"], capture_output=True, text=True)
        modprobe = f"modprobe ipip: rc {probe.returncode} {probe.stderr.strip()}"
    except FileNotFoundError:
        modprobe = "modprobe is not installed"
    ns = netns("ipipprobe")
    shown = subprocess.run(["ip", "netns", "exec", ns, "ip", "link", "show", IPIP_DEVICE],
                           capture_output=True, text=True)
    if shown.returncode == 0:
        return None
    return f"{modprobe}; a fresh namespace has no tunl0: {shown.stderr.strip()}"


def test_ipip_configures_the_kernels_tunl0(nodes, netns):
    reason = tunl0_missing_reason(netns)
    if reason is not None:
        pytest.skip(f"kernel has no ipip module: {reason}")
    n1 = nodes["n1"]

    async def twice():
        async with TunnelManager(netns=n1) as tunnels:
            cfg = IpipConfig(tunnel_ip="10.244.1.0", node_ip=NODE_IP["n1"])
            return await tunnels.sync_ipip(cfg), await tunnels.sync_ipip(cfg)

    first, second = run(twice())
    assert first.ok and first.writes >= 2 and (second.writes, second.problem) == (0, None)
    shown = ip(n1, "addr", "show", IPIP_DEVICE)
    assert "mtu 1480" in shown and "inet 10.244.1.0/32" in shown and ",UP" in shown


def test_ipip_without_kernel_support_is_reported(nodes, netns):
    if tunl0_missing_reason(netns) is None:
        pytest.skip("this kernel has the ipip module: the no-support path cannot be shown here")

    async def attempt():
        async with TunnelManager(netns=nodes["n1"]) as tunnels:
            return await tunnels.sync_ipip(IpipConfig(tunnel_ip="10.244.1.0", node_ip=NODE_IP["n1"]))

    result = run(attempt())
    assert result.writes == 0 and "the kernel has no ipip support" in result.problem
    assert ip(nodes["n1"], "link", "show", IPIP_DEVICE, check=False) == ""


def test_a_tunl0_that_is_not_ipip_is_left_alone(nodes):
    n1 = nodes["n1"]
    ip(n1, "link", "add", IPIP_DEVICE, "type", "veth", "peer", "name", "tunl0peer")
    before = ip(n1, "addr", "show", IPIP_DEVICE)

    async def attempt():
        async with TunnelManager(netns=n1) as tunnels:
            return (await tunnels.sync_ipip(IpipConfig(tunnel_ip="10.244.1.0", mtu=1480)),
                    await tunnels.remove_ipip())

    result, removed = run(attempt())
    assert result.writes == 0 and removed == 0 and "not the kernel's ipip" in result.problem
    assert ip(n1, "addr", "show", IPIP_DEVICE) == before
