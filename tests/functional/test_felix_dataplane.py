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

from felix.calc import CalcInput, DesiredRoute, RemoteRoute, RouteCalc, dst_key, workload_route
from felix import rtnl
from felix.dataplane import PROTO, RouteTable, route_is_ours
from felix.inspect import compare
from tests.helpers import veth_between, wait_for

pytestmark = pytest.mark.root

N, K = IPv4Network, dst_key
A = IPv4Address
CALI = "cali0123456789a"
WL = workload_route(A("10.244.1.5"), CALI, "default/web")
BH = DesiredRoute(K("10.244.1.0/26"), "blackhole", None, None, "universe", "local block")
GW = DesiredRoute(K("10.244.2.0/26"), "unicast", None, A("192.168.5.2"), "universe", "learned from n2")
ALL = {r.key: r for r in (WL, BH, GW)}


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
    assert kernel[GW.key].dev == "eth0" and kernel[WL.key].scope == "link"
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
    moved = DesiredRoute(GW.key, "unicast", None, A("192.168.5.3"), "universe", "learned from n3")
    new = DesiredRoute(K("10.244.3.0/26"), "unicast", None, A("192.168.5.2"), "universe", "learned from n2")
    changed = {r.key: r for r in (BH, moved, new)}  # WL gone, GW's gateway changed, one added

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
    occupied = DesiredRoute(K("10.244.7.0/26"), "unicast", None, A("192.168.5.2"), "universe", "learned")

    async def scenario():
        async with RouteTable(netns=node) as table:
            return await table.apply({**ALL, occupied.key: occupied}), await table.apply({})

    first, second = run(scenario())
    assert first.added == 3
    assert "proto 3" in first.failed[occupied.key] and "not ours" in first.failed[occupied.key]
    assert (second.deleted, second.failed) == (3, {})
    assert ours_in_kernel(node) == []
    after = ip(node, "route", "show", "proto", "static") + ip(node, "route", "show", "proto", "boot")
    assert after == foreign_before and "10.244.1.16/28" in after and "blackhole 10.244.7.0/26" in after


def test_one_failure_does_not_stop_the_rest_and_is_retried(node):
    absent = workload_route(A("10.244.1.6"), "cali00000000000", "default/late")
    unreachable = DesiredRoute(K("10.244.4.0/26"), "unicast", None, A("172.16.0.9"), "universe", "learned")
    desired = {**ALL, absent.key: absent, unreachable.key: unreachable}

    async def scenario():
        async with RouteTable(netns=node) as table:
            first = await table.apply(desired)
            ip(node, "link", "add", "cali00000000000", "type", "veth", "peer", "name", "wl1")
            ip(node, "link", "set", "cali00000000000", "up")
            ip(node, "link", "set", "wl1", "up")
            return first, await table.apply(desired)

    first, second = run(scenario())
    assert first.added == 3
    assert first.failed[absent.key].startswith("ENODEV")
    assert first.failed[unreachable.key].startswith("ENETUNREACH")
    assert (second.added, second.replaced, second.deleted) == (1, 0, 0)
    assert list(second.failed) == [unreachable.key]
    assert "10.244.1.6 dev cali00000000000 scope link" in ours_in_kernel(node)


def test_gateway_routes_kept_until_bgp_resynced(node):
    run(apply_once(node, ALL))
    only_workload = {WL.key: WL}

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
            return await table.apply({WL.key: WL})

    result = run(scenario())
    assert (result.added, result.replaced, result.deleted) == (0, 0, 1)  # only the metric-100 stray
    assert ours_in_kernel(node) == ["10.244.1.5 dev cali0123456789a scope link"]


def test_route_is_ours_reads_the_proto_of_a_dumped_route(node):
    ip(node, "route", "add", "10.244.6.0/26", "via", "192.168.5.2", "proto", "static")
    run(apply_once(node, {BH.key: BH}))

    async def dump():
        async with RouteTable(netns=node) as table:
            return [msg async for msg in await table._ipr.route("dump", family=2)]

    by_dst = {(m.get("dst"), m["dst_len"]): m for m in run(dump())}
    assert route_is_ours(by_dst[("10.244.1.0", 26)])
    assert not route_is_ours(by_dst[("10.244.6.0", 26)])
    assert route_is_ours(by_dst[("10.244.6.0", 26)], proto=4)


# -- incremental mode: a cache fed by our writes and the kernel's notifications --------------------


async def drift_seen(table: RouteTable, timeout: float = 5.0) -> bool:
    """Let the loop read the notifications; True once the table said something drifted."""
    try:
        await asyncio.wait_for(table.drifted.wait(), timeout)
    except asyncio.TimeoutError:
        return False
    return True


def test_incremental_applies_diff_against_the_cache_without_dumping(node):
    calls = []

    async def scenario():
        async with RouteTable(netns=node, incremental=True, on_drift=lambda: calls.append(1)) as table:
            first = await table.apply(ALL)
            again = await table.apply(ALL)
            quiet = not await drift_seen(table, 0.3)  # our own writes are not echoed back to us
            changed = await table.apply({BH.key: BH, GW.key: GW})
            return first, again, changed, quiet, table.dumps

    first, again, changed, quiet, dumps = run(scenario())
    assert (first.added, again.writes, changed.deleted, changed.writes) == (3, 0, 1, 1)
    assert quiet and calls == [] and dumps == 1
    assert ours_in_kernel(node) == ["10.244.2.0/26 via 192.168.5.2 dev eth0", "blackhole 10.244.1.0/26"]


def test_incremental_repairs_a_route_someone_else_deleted_or_replaced(node):
    calls = []

    async def scenario():
        async with RouteTable(netns=node, incremental=True, on_drift=lambda: calls.append(1)) as table:
            await table.apply(ALL)
            ip(node, "route", "del", "10.244.2.0/26", "proto", str(PROTO))
            deleted = await drift_seen(table)
            repaired = await table.apply(ALL)
            dumps_after_repair = table.dumps
            ip(node, "route", "replace", "10.244.2.0/26", "via", "192.168.5.2", "proto", "static")
            replaced = await drift_seen(table)
            blocked = await table.apply(ALL)
            return deleted, repaired, dumps_after_repair, replaced, blocked, table.dumps

    deleted, repaired, dumps_after_repair, replaced, blocked, dumps = run(scenario())
    assert deleted and (repaired.added, repaired.writes) == (1, 1) and dumps_after_repair == 1
    assert replaced and len(calls) >= 2
    assert list(blocked.failed) == [GW.key] and "proto 4" in blocked.failed[GW.key]
    assert dumps == 2  # another owner took our place: the kernel is asked, once
    assert "10.244.2.0/26 via 192.168.5.2 dev eth0 proto static" in ip(node, "route")


def test_incremental_notices_routes_that_went_with_their_link(node):
    run(apply_once(node, ALL))  # the cache then starts from a dump: it knows every route's device

    async def scenario():
        async with RouteTable(netns=node, incremental=True) as table:
            adopted = await table.apply(ALL)
            ip(node, "link", "del", CALI)  # its route goes with it, and no RTM_DELROUTE says so
            workload_gone = await drift_seen(table)
            without_wl = await table.apply(ALL)
            ip(node, "link", "set", "eth0", "down")
            eth0_down = await drift_seen(table)
            down = await table.apply(ALL)
            ip(node, "link", "set", "eth0", "up")
            eth0_up = await drift_seen(table)  # a failing route may work now
            up = await table.apply(ALL)
            return adopted, workload_gone, without_wl, eth0_down, down, eth0_up, up, table.dumps

    adopted, workload_gone, without_wl, eth0_down, down, eth0_up, up, dumps = run(scenario())
    assert adopted.writes == 0
    assert workload_gone and list(without_wl.failed) == [WL.key]
    assert without_wl.failed[WL.key].startswith("ENODEV")
    assert eth0_down and set(down.failed) == {WL.key, GW.key}
    assert down.failed[GW.key].startswith("ENETUNREACH")
    assert eth0_up and (up.added, list(up.failed)) == (1, [WL.key])
    assert dumps == 1  # the notifications said exactly which routes went
    assert ours_in_kernel(node) == ["10.244.2.0/26 via 192.168.5.2 dev eth0", "blackhole 10.244.1.0/26"]


def test_incremental_knows_the_device_of_gateway_routes_it_wrote(node):
    """A gateway route written without a device: after an apply, and after ``set_route``, the
    table asks the kernel which device it chose, so losing that link drops exactly that route
    (no full dump)."""
    async def scenario(write):
        async with RouteTable(netns=node, incremental=True) as table:
            await table.apply({BH.key: BH})
            await write(table)  # GW, without a device: the kernel chooses eth0
            ip(node, "link", "set", "eth0", "down")
            eth0_down = await drift_seen(table)
            down = await table.apply({BH.key: BH, GW.key: GW}, changed=[])
            ip(node, "link", "set", "eth0", "up")
            return eth0_down, down, table.dumps, table.partial_diffs

    applied = run(scenario(lambda table: table.apply({BH.key: BH, GW.key: GW})))
    set_alone = run(scenario(lambda table: table.set_route(GW)))
    for eth0_down, down, _, _ in (applied, set_alone):
        assert eth0_down and list(down.failed) == [GW.key]
        assert down.failed[GW.key].startswith("ENETUNREACH")
    # (dumps, partial diffs): the link's loss was followed exactly
    assert applied[2:] == set_alone[2:] == (1, 1)


def test_incremental_resyncs_after_lost_notifications_and_when_asked(node, monkeypatch):
    monkeypatch.setattr(rtnl, "RCVBUF", 4096)  # tiny: a burst of notifications overflows it

    async def scenario():
        async with RouteTable(netns=node, incremental=True) as table:
            await table.apply(ALL)
            batch = "".join(f"route add 10.98.{i // 256}.{i % 256}/32 dev eth0 proto static\n"
                            for i in range(500))
            subprocess.run(["ip", "-n", node, "-batch", "-"], input=batch, text=True, check=True)
            ip(node, "route", "del", "10.244.1.0/26", "proto", str(PROTO))
            lost = await drift_seen(table)
            after_loss = await table.apply(ALL)
            dumps_after_loss = table.dumps
            table.resync()
            asked = await table.apply(ALL)
            return lost, after_loss, dumps_after_loss, asked, table.dumps

    lost, after_loss, dumps_after_loss, asked, dumps = run(scenario())
    assert lost and (after_loss.added, after_loss.writes) == (1, 1) and dumps_after_loss == 2
    assert asked.writes == 0 and dumps == 3


def test_incremental_cni_route_gets_grace_and_a_device_appearing_wakes_the_agent(node):
    late = workload_route(A("10.244.1.7"), "cali00000000001", "default/late")
    now = [100.0]

    async def scenario():
        async with RouteTable(netns=node, incremental=True, clock=lambda: now[0]) as table:
            missing = await table.apply({late.key: late})
            ip(node, "link", "add", "cali00000000001", "type", "veth", "peer", "name", "wl1")
            appeared = await drift_seen(table)
            ip(node, "link", "set", "cali00000000001", "up")
            ip(node, "link", "set", "wl1", "up")
            added = await table.apply({late.key: late})
            await table.set_route(WL)  # the CNI plugin's, before its workload reached the agent
            kept = await table.apply({late.key: late})
            now[0] += 11
            swept = await table.apply({late.key: late})
            return missing, appeared, added, kept, swept, table.dumps

    missing, appeared, added, kept, swept, dumps = run(scenario())
    assert list(missing.failed) == [late.key] and appeared and added.added == 1
    assert (kept.writes, kept.recheck_after) == (0, 10.0)
    assert swept.deleted == 1 and dumps == 1
    assert ours_in_kernel(node) == ["10.244.1.7 dev cali00000000001 scope link"]


# -- dirty destinations: apply(desired, changed=...) diffs and writes only those ------------------


def test_changed_diffs_only_the_dirty_destinations_while_the_cache_is_trusted(node):
    moved = DesiredRoute(GW.key, "unicast", None, A("192.168.5.3"), "universe", "learned from n3")
    extra = DesiredRoute(K("10.244.3.0/26"), "unicast", None, A("192.168.5.2"), "universe", "x")

    async def scenario():
        async with RouteTable(netns=node, incremental=True) as table:
            await table.apply(ALL)
            # GW moved too, but only ``extra`` is said to have changed: GW is not looked at
            partial = await table.apply({**ALL, GW.key: moved, extra.key: extra}, changed=[extra.key])
            kernel_then = ours_in_kernel(node)
            full = await table.apply({**ALL, GW.key: moved, extra.key: extra})
            gone = await table.apply({WL.key: WL, BH.key: BH, GW.key: moved},
                                     changed={extra.key, WL.key})
            nothing = await table.apply({WL.key: WL, BH.key: BH, GW.key: moved}, changed=())
            return partial, kernel_then, full, gone, nothing, table.dumps

    partial, kernel_then, full, gone, nothing, dumps = run(scenario())
    assert (partial.added, partial.writes) == (1, 1)
    assert "10.244.2.0/26 via 192.168.5.2 dev eth0" in kernel_then
    assert (full.replaced, full.writes) == (1, 1)
    assert (gone.deleted, gone.writes) == (1, 1) and nothing.writes == 0 and dumps == 1
    assert ours_in_kernel(node) == ["10.244.1.5 dev cali0123456789a scope link",
                                    "10.244.2.0/26 via 192.168.5.3 dev eth0",
                                    "blackhole 10.244.1.0/26"]


def test_apply_reads_desired_when_called_so_the_caller_may_go_on_changing_it(node):
    """The agent calculates the next burst while this apply waits for the table or writes."""
    extra = DesiredRoute(K("10.244.3.0/26"), "unicast", None, A("192.168.5.2"), "universe", "x")

    async def scenario():
        async with RouteTable(netns=node, incremental=True) as table:
            desired = dict(ALL)
            first = table.apply(desired)
            desired[extra.key] = extra  # after the call: the next apply's business
            second = table.apply(desired, changed=[extra.key])
            del desired[BH.key]  # not in either apply's changes, nor in what either read
            return await first, await second

    first, second = run(scenario())
    assert (first.added, second.added, second.deleted) == (3, 1, 0)
    assert ours_in_kernel(node) == ["10.244.1.5 dev cali0123456789a scope link",
                                    "10.244.2.0/26 via 192.168.5.2 dev eth0",
                                    "10.244.3.0/26 via 192.168.5.2 dev eth0",
                                    "blackhole 10.244.1.0/26"]


class CountingCopies(dict):
    """A desired mapping that counts how often all of its routes are read."""

    copies = 0

    def values(self):
        self.copies += 1
        return super().values()


def test_a_partial_apply_does_not_copy_every_desired_route(node):
    """A full diff's input (every desired route) is copied only when a full diff is due."""
    extra = DesiredRoute(K("10.244.3.0/26"), "unicast", None, A("192.168.5.2"), "universe", "x")

    async def scenario():
        async with RouteTable(netns=node, incremental=True) as table:
            desired = CountingCopies(ALL)
            await table.apply(desired, changed=[])  # no cache yet: a full diff
            first = desired.copies
            desired[extra.key] = extra
            partial = await table.apply(desired, changed=[extra.key])
            return first, desired.copies, partial, table.partial_diffs

    first, copies, partial, partial_diffs = run(scenario())
    assert (first, copies) == (1, 1)
    assert (partial.added, partial.writes, partial_diffs) == (1, 1, 1)


def test_cache_untrusted_while_an_uncopied_apply_waits_gets_a_full_diff_next(node):
    """The cache was trusted when the apply was asked for (its routes not copied) and stopped
    being so before it ran: it diffs its dirty destinations, and the next apply diffs them all."""
    moved = DesiredRoute(GW.key, "unicast", None, A("192.168.5.3"), "universe", "learned from n3")
    extra = DesiredRoute(K("10.244.3.0/26"), "unicast", None, A("192.168.5.2"), "universe", "x")

    async def scenario():
        async with RouteTable(netns=node, incremental=True) as table:
            await table.apply(ALL)
            desired = CountingCopies({**ALL, GW.key: moved, extra.key: extra})
            first = table.apply(ALL, changed=[])
            second = table.apply(desired, changed=[extra.key])  # GW moved, unsaid
            table.resync()  # e.g. lost notifications, before ``second`` runs
            await first
            fallback = await second
            kernel_then = ours_in_kernel(node)
            told = await drift_seen(table)
            full_before = table.full_diffs
            full = await table.apply(desired, changed=[])
            return (desired.copies, fallback, kernel_then, told, table.full_diffs - full_before,
                    full)

    copies, fallback, kernel_then, told, full_diffs, full = run(scenario())
    assert (fallback.added, fallback.writes) == (1, 1)
    assert "10.244.2.0/26 via 192.168.5.2 dev eth0" in kernel_then  # not dirty: not looked at
    assert "10.244.3.0/26 via 192.168.5.2 dev eth0" in kernel_then
    assert told and full_diffs == 1 and copies == 1
    assert (full.replaced, full.writes) == (1, 1)
    assert ours_in_kernel(node) == ["10.244.1.5 dev cali0123456789a scope link",
                                    "10.244.2.0/26 via 192.168.5.3 dev eth0",
                                    "10.244.3.0/26 via 192.168.5.2 dev eth0",
                                    "blackhole 10.244.1.0/26"]


def test_changed_is_ignored_after_drift_or_resync_and_without_a_cache(node):
    async def scenario():
        async with RouteTable(netns=node, incremental=True) as table:
            await table.apply(ALL)
            ip(node, "route", "del", "10.244.2.0/26", "proto", str(PROTO))
            await drift_seen(table)
            repaired = await table.apply(ALL, changed=[])  # drifted: a full diff repairs it
            ip(node, "route", "del", "10.244.1.0/26", "proto", str(PROTO))
            table.resync()
            resynced = await table.apply(ALL, changed=[])
            return repaired, resynced, table.dumps

    repaired, resynced, dumps = run(scenario())
    assert (repaired.added, resynced.added, dumps) == (1, 1, 2)
    ip(node, "route", "del", "10.244.1.0/26", "proto", str(PROTO))
    assert run(apply_once(node, ALL, changed=[])).added == 1  # not incremental: always full


def test_changed_keeps_the_failures_and_grace_of_the_other_destinations(node):
    missing = workload_route(A("10.244.1.9"), "cali00000000009", "default/late")
    now = [100.0]

    async def scenario():
        async with RouteTable(netns=node, incremental=True, clock=lambda: now[0]) as table:
            first = await table.apply({**ALL, missing.key: missing})
            other = await table.apply({BH.key: BH, GW.key: GW, missing.key: missing},
                                      changed=[WL.key])  # WL was desired: gone without grace
            await table.set_route(workload_route(A("10.244.1.6"), CALI, "cni"))  # unknown: grace
            kept = await table.apply({BH.key: BH, GW.key: GW, missing.key: missing},
                                     changed=[K("10.244.1.6/32")])
            now[0] += 5
            still = await table.apply({BH.key: BH, GW.key: GW, missing.key: missing}, changed=[BH.key])
            now[0] += 6
            swept = await table.apply({BH.key: BH, GW.key: GW, missing.key: missing},
                                      changed=[K("10.244.1.6/32")])
            return first, other, kept, still, swept

    first, other, kept, still, swept = run(scenario())
    assert list(first.failed) == [missing.key] and list(other.failed) == [missing.key]
    assert other.deleted == 1
    assert (kept.writes, kept.recheck_after) == (0, 10.0) and still.writes == 0
    assert swept.deleted == 1 and list(swept.failed) == [missing.key]
    assert ours_in_kernel(node) == ["10.244.2.0/26 via 192.168.5.2 dev eth0", "blackhole 10.244.1.0/26"]


def test_a_cancelled_apply_finishes_its_batch_before_the_table_moves_on(node):
    desired = {r.key: r for r in (
        DesiredRoute(K(N((int(A("100.64.0.0")) + 4 * i, 30))), "blackhole", None, None, "universe", "b")
        for i in range(20_000))}

    async def scenario():
        async with RouteTable(netns=node) as table:
            task = asyncio.create_task(table.apply(desired))
            await asyncio.sleep(0.01)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert not table._lock.locked()  # released only once the worker thread was done
            return await table.apply(desired), await table.apply(desired)

    after, again = run(scenario())
    assert after.failed == {} and again.writes == 0
    assert len(ours_in_kernel(node)) == 20_000


def test_a_deleted_pod_veth_makes_its_route_dirty_not_a_full_diff(node):
    """A pod's veth goes: the kernel drops its /32 without an RTM_DELROUTE. Only that destination
    becomes dirty: the next apply stays incremental (at 100k routes a full diff per pod delete
    was the cost), while a route of ours someone else deletes is still repaired by a full diff."""
    moved = DesiredRoute(GW.key, "unicast", None, A("192.168.5.3"), "universe", "learned from n3")
    calls = []

    async def scenario():
        async with RouteTable(netns=node, incremental=True, on_drift=lambda: calls.append(1)) as table:
            await table.apply(ALL)
            ip(node, "link", "del", CALI)  # the pod is deleted: its veth and its route go
            told = await drift_seen(table)
            # The pod's deletion has not reached the calculation yet: nothing changed for it, and
            # GW moved without being said to (a full diff would rewrite it; a partial one does not)
            after_veth = await table.apply({**ALL, GW.key: moved}, changed=[])
            kernel_then, partial = ours_in_kernel(node), (table.full_diffs, table.partial_diffs)
            pod_gone = await table.apply({BH.key: BH, GW.key: GW}, changed=[WL.key])
            kernel_after_pod = ours_in_kernel(node)
            ip(node, "route", "del", "10.244.1.0/26", "proto", str(PROTO))  # genuine drift
            drift = await drift_seen(table, timeout=1.0)
            repaired = await table.apply({BH.key: BH, GW.key: GW}, changed=[])
            return (told, after_veth, kernel_then, partial, pod_gone, kernel_after_pod, drift,
                    repaired, (table.full_diffs, table.partial_diffs), table.dumps)

    (told, after_veth, kernel_then, partial, pod_gone, kernel_after_pod, drift, repaired,
     diffs, dumps) = run(scenario())
    assert told and calls
    assert list(after_veth.failed) == [WL.key] and after_veth.failed[WL.key].startswith("ENODEV")
    assert after_veth.awaiting_device == {WL.key}  # the table says when the device is back
    assert after_veth.writes == 0 and partial == (1, 1)  # the first apply was the only full diff
    assert kernel_then == ["10.244.2.0/26 via 192.168.5.2 dev eth0", "blackhole 10.244.1.0/26"]
    assert (pod_gone.writes, pod_gone.failed) == (0, {})
    assert kernel_after_pod == ["10.244.2.0/26 via 192.168.5.2 dev eth0", "blackhole 10.244.1.0/26"]
    assert drift and (repaired.added, repaired.writes) == (1, 1)
    assert diffs == (2, 2) and dumps == 1  # the repair diffed everything, from the cache
    assert ours_in_kernel(node) == ["10.244.2.0/26 via 192.168.5.2 dev eth0", "blackhole 10.244.1.0/26"]


def test_a_route_set_outside_an_apply_is_cached_with_its_device(node):
    """``set_route`` (the CNI path) of a gateway route without a device: cached with the device
    the kernel chose, as an apply's write is, so a pod's veth deleted later makes exactly its
    own route dirty instead of forcing a full dump (the cache would not know which device the
    gateway route went through)."""
    async def scenario():
        async with RouteTable(netns=node, incremental=True) as table:
            await table.apply({BH.key: BH, WL.key: WL})
            await table.set_route(GW)
            ip(node, "link", "del", CALI)
            told = await drift_seen(table)
            with table._cache_lock:
                state = (set(table._touched), table._stale, WL.key in table._cache.ours)
            after = await table.apply({BH.key: BH, GW.key: GW}, changed=[WL.key])
            return told, state, after, table.dumps, table.partial_diffs

    told, state, after, dumps, partial = run(scenario())
    assert told and state == ({WL.key}, False, False)
    assert (after.writes, after.failed, dumps, partial) == (0, {}, 1, 1)
    assert ours_in_kernel(node) == ["10.244.2.0/26 via 192.168.5.2 dev eth0", "blackhole 10.244.1.0/26"]


def test_a_full_diff_of_a_calculations_view_deletes_only_what_is_not_desired(node):
    """``RouteCalc.desired`` builds learned routes as they are read (``snapshot()``). A full diff
    against the cache reads the desired routes twice when some route of ours is not desired (the
    second pass finds which): a one-pass snapshot made that pass empty, so every route of ours was
    deleted, as a restarted agent did to its local routes in the lab."""
    calc = RouteCalc()
    calc.rebuild(CalcInput(node="n1", pools=frozenset({N("10.244.0.0/16")}), blocks=frozenset(),
                           workloads=frozenset(),
                           learned=frozenset({RemoteRoute(GW.key, GW.gateway, "n2")})))
    assert dict(calc.desired) == {GW.key: GW}
    extra = DesiredRoute(K("10.244.3.0/26"), "unicast", None, A("192.168.5.2"), "universe", "learned from n2")
    run(apply_once(node, {GW.key: GW, extra.key: extra}))

    async def restarted():
        async with RouteTable(netns=node, incremental=True) as table:
            return await table.apply(calc.desired)

    result = run(restarted())

    assert (result.deleted, result.added, result.failed) == (1, 0, {})
    assert ours_in_kernel(node) == ["10.244.2.0/26 via 192.168.5.2 dev eth0"]
