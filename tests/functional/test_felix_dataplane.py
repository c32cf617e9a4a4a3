"""felix.dataplane.RouteTable against the real kernel, inside throwaway namespaces.

Topology: namespace ``node`` with a workload veth (``cali0123456789a`` <-> ``wl0``, both ends local)
and ``eth0`` 192.168.5.1/24 joined to namespace ``peer`` (192.168.5.2/24), the gateway of learned
routes.
"""
from __future__ import annotations

import asyncio
import subprocess
from ipaddress import IPv4Address, IPv4Network

import pytest

from felix.calc import DesiredRoute, workload_route
from felix.dataplane import PROTO, RouteTable, route_is_ours
from felix.inspect import compare
from tests.helpers import veth_between, wait_for

pytestmark = pytest.mark.root

N = IPv4Network
A = IPv4Address
CALI = "cali0123456789a"
WL = workload_route(A("10.244.1.5"), CALI, "default/web")
BH = DesiredRoute(N("10.244.1.0/26"), "blackhole", None, None, "universe", "local block")
GW = DesiredRoute(N("10.244.2.0/26"), "unicast", None, A("192.168.5.2"), "universe", "learned from n2")
ALL = {r.dst: r for r in (WL, BH, GW)}


def ip(ns: str, *args: str) -> str:
    return subprocess.run(["ip", "-n", ns, *args], check=True, capture_output=True, text=True).stdout


def ours_in_kernel(ns: str) -> list[str]:
    """``ip route`` lines of proto 80, whitespace-normalised."""
    return sorted(" ".join(line.split()) for line in ip(ns, "route", "show", "proto", str(PROTO)).splitlines())


def toggle_marker(ns: str) -> bool:
    """(Re)create a foreign marker route, so every call emits an event once the monitor listens."""
    subprocess.run(["ip", "-n", ns, "route", "del", "10.99.0.1/32"], capture_output=True)
    ip(ns, "route", "add", "10.99.0.1/32", "dev", "eth0", "proto", "static")
    return True


@pytest.fixture
def node(netns) -> str:
    ns, peer = netns("node"), netns("peer")
    veth_between(ns, "eth0", "192.168.5.1/24", peer, "eth0", "192.168.5.2/24")
    ip(ns, "link", "add", CALI, "type", "veth", "peer", "name", "wl0")
    ip(ns, "link", "set", CALI, "up")
    ip(ns, "link", "set", "wl0", "up")
    return ns


def run(coro):
    return asyncio.run(coro)


async def apply_once(ns: str, desired, **kwargs):
    """A fresh RouteTable per call, like an agent that restarts between applies."""
    async with RouteTable(netns=ns) as table:
        return await table.apply(desired, **kwargs)


def test_apply_writes_all_three_shapes_with_our_proto(node):
    result = run(apply_once(node, ALL))
    assert (result.added, result.replaced, result.deleted, result.failed) == (3, 0, 0, {})
    assert ours_in_kernel(node) == [
        "10.244.1.5 dev cali0123456789a scope link",
        "10.244.2.0/26 via 192.168.5.2 dev eth0",
        "blackhole 10.244.1.0/26",
    ]
    assert "blackhole 10.244.1.0/26 proto 80" in ip(node, "route")

    async def inspect():
        async with RouteTable(netns=node) as table:
            return await table.kernel_routes()

    kernel = run(inspect())
    assert set(kernel) == set(ALL)
    assert kernel[GW.dst].dev == "eth0" and kernel[WL.dst].scope == "link"
    assert all(status.in_sync for status in compare(ALL, kernel))


def test_restarted_agent_adopts_routes_without_any_kernel_write(node, procs, tmp_path):
    """Two proofs: the write counters (an identical ``replace`` emits no event, so only counters
    can see one), and ``ip monitor`` showing no delete/re-add of any of our routes."""
    run(apply_once(node, ALL))
    log = tmp_path / "monitor.log"
    with log.open("w") as out:
        procs.add(subprocess.Popen(["ip", "-n", node, "monitor", "route"], stdout=out, stderr=out))
    # Markers (foreign routes) bracket the apply, so "nothing between them" is a real observation.
    wait_for(lambda: toggle_marker(node) and "10.99.0.1" in log.read_text(), 5,
             what="monitor to see the first marker")  # re-sent: the monitor may start late

    result = run(apply_once(node, ALL))

    ip(node, "route", "add", "10.99.0.2/32", "dev", "eth0", "proto", "static")
    text = wait_for(lambda: "10.99.0.2" in log.read_text() and log.read_text(), 5, what="second marker")
    between = text.rsplit("10.99.0.1", 1)[1].split("10.99.0.2", 1)[0]  # after the last marker
    assert [line for line in between.splitlines() if "10.244." in line] == []
    assert result.writes == 0 and result.failed == {}


def test_changed_desired_writes_only_the_difference(node):
    moved = DesiredRoute(GW.dst, "unicast", None, A("192.168.5.3"), "universe", "learned from n3")
    new = DesiredRoute(N("10.244.3.0/26"), "unicast", None, A("192.168.5.2"), "universe", "learned from n2")
    changed = {r.dst: r for r in (BH, moved, new)}  # WL gone, GW's gateway changed, one added

    async def scenario():
        async with RouteTable(netns=node) as table:  # one running agent: WL was its own route
            await table.apply(ALL)
            return await table.apply(changed)

    result = run(scenario())

    assert (result.added, result.replaced, result.deleted, result.failed) == (1, 1, 1, {})
    assert ours_in_kernel(node) == [
        "10.244.2.0/26 via 192.168.5.3 dev eth0",
        "10.244.3.0/26 via 192.168.5.2 dev eth0",
        "blackhole 10.244.1.0/26",
    ]


def test_foreign_routes_survive_every_apply_and_are_never_overwritten(node):
    ip(node, "route", "add", "10.244.1.16/28", "via", "192.168.5.2", "proto", "static")
    ip(node, "route", "add", "blackhole", "10.244.7.0/26", "proto", "boot")
    foreign_before = ip(node, "route", "show", "proto", "static") + ip(node, "route", "show", "proto", "boot")
    occupied = DesiredRoute(N("10.244.7.0/26"), "unicast", None, A("192.168.5.2"), "universe", "learned")

    async def scenario():
        async with RouteTable(netns=node) as table:
            return await table.apply({**ALL, occupied.dst: occupied}), await table.apply({})

    first, second = run(scenario())
    assert first.added == 3
    assert "proto 3" in first.failed[occupied.dst] and "not ours" in first.failed[occupied.dst]
    assert (second.deleted, second.failed) == (3, {})
    assert ours_in_kernel(node) == []
    after = ip(node, "route", "show", "proto", "static") + ip(node, "route", "show", "proto", "boot")
    assert after == foreign_before and "10.244.1.16/28" in after and "blackhole 10.244.7.0/26" in after


def test_one_failure_does_not_stop_the_rest_and_is_retried(node):
    absent = workload_route(A("10.244.1.6"), "cali00000000000", "default/late")
    unreachable = DesiredRoute(N("10.244.4.0/26"), "unicast", None, A("172.16.0.9"), "universe", "learned")
    desired = {**ALL, absent.dst: absent, unreachable.dst: unreachable}

    async def scenario():
        async with RouteTable(netns=node) as table:
            first = await table.apply(desired)
            ip(node, "link", "add", "cali00000000000", "type", "veth", "peer", "name", "wl1")
            ip(node, "link", "set", "cali00000000000", "up")
            ip(node, "link", "set", "wl1", "up")
            return first, await table.apply(desired)

    first, second = run(scenario())
    assert first.added == 3
    assert first.failed[absent.dst].startswith("ENODEV")
    assert first.failed[unreachable.dst].startswith("ENETUNREACH")
    assert (second.added, second.replaced, second.deleted) == (1, 0, 0)
    assert list(second.failed) == [unreachable.dst]
    assert "10.244.1.6 dev cali00000000000 scope link" in ours_in_kernel(node)


def test_gateway_routes_kept_until_bgp_resynced(node):
    run(apply_once(node, ALL))
    only_workload = {WL.dst: WL}

    kept = run(apply_once(node, only_workload, delete_unknown_gateway_routes=False))
    assert (kept.deleted, kept.writes) == (1, 1)  # the blackhole: it has no gateway
    assert ours_in_kernel(node) == [
        "10.244.1.5 dev cali0123456789a scope link",
        "10.244.2.0/26 via 192.168.5.2 dev eth0",
    ]

    swept = run(apply_once(node, only_workload))
    assert swept.deleted == 1
    assert ours_in_kernel(node) == ["10.244.1.5 dev cali0123456789a scope link"]


def test_unknown_workload_route_gets_a_grace_period(node):
    """A CNI plugin's route that reached the kernel before its workload reached the agent."""
    now = [100.0]

    async def scenario():
        async with RouteTable(netns=node, clock=lambda: now[0]) as table:
            await table.set_route(WL)  # as the CNI plugin would
            early = await table.apply({})
            now[0] += 4.0
            later = await table.apply({})
            now[0] += 6.0
            late = await table.apply({})
            return early, later, late

    early, later, late = run(scenario())
    assert (early.writes, early.recheck_after) == (0, 10.0)
    assert (later.writes, later.recheck_after) == (0, 6.0)  # counted from first sight, not reset
    assert late.deleted == 1 and late.recheck_after is None and ours_in_kernel(node) == []


def test_restarted_agent_gives_workload_routes_grace_but_sweeps_the_rest(node):
    """After a restart nothing says whether a cali route is stale or a CNI race: grace for it only."""
    run(apply_once(node, ALL))
    result = run(apply_once(node, {}))
    assert result.deleted == 2
    assert ours_in_kernel(node) == ["10.244.1.5 dev cali0123456789a scope link"]


def test_route_written_by_cni_is_adopted_and_strays_of_ours_are_removed(node):
    ip(node, "route", "add", "10.244.5.0/26", "via", "192.168.5.2", "metric", "100", "proto", str(PROTO))

    async def scenario():
        async with RouteTable(netns=node) as table:
            await table.set_route(WL)
            return await table.apply({WL.dst: WL})

    result = run(scenario())
    assert (result.added, result.replaced, result.deleted) == (0, 0, 1)  # only the metric-100 stray
    assert ours_in_kernel(node) == ["10.244.1.5 dev cali0123456789a scope link"]


def test_route_is_ours_reads_the_proto_of_a_dumped_route(node):
    ip(node, "route", "add", "10.244.6.0/26", "via", "192.168.5.2", "proto", "static")
    run(apply_once(node, {BH.dst: BH}))

    async def dump():
        async with RouteTable(netns=node) as table:
            return [msg async for msg in await table._ipr.route("dump", family=2)]

    by_dst = {(m.get("dst"), m["dst_len"]): m for m in run(dump())}
    assert route_is_ours(by_dst[("10.244.1.0", 26)])
    assert not route_is_ours(by_dst[("10.244.6.0", 26)])
    assert route_is_ours(by_dst[("10.244.6.0", 26)], proto=4)
