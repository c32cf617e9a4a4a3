"""felix.dataplane.RouteTable's bulk write and commit (``write_templates``, ``_commit``) with
failures scattered through a large incremental apply, against the real kernel: only the routes
the kernel took go into the cache of our routes, so a retry of the failed destinations writes
them (a failed route recorded as ours would never be written again), and the cache then
matches the kernel (a later apply of everything writes nothing).

Topology as in ``test_felix_dataplane``: ``eth0`` 192.168.5.1/24, the gateway 192.168.5.2."""
from __future__ import annotations

from ipaddress import IPv4Address as A

import pytest

from felix.calc import DesiredRoute, dst_key
from felix.dataplane import RouteTable
from tests.functional.test_felix_dataplane import ip, node, ours_in_kernel, run  # noqa: F401 (fixture)

pytestmark = pytest.mark.root


def learned(i: int, gateway: str) -> DesiredRoute:
    return DesiredRoute(dst_key(f"10.{200 + i // 16384}.{i // 64 % 256}.{i % 64 * 4}/30"), "unicast",
                        None, A(gateway), "universe", "learned from n2")


def test_failures_in_a_bulk_apply_stay_out_of_the_cache_and_are_written_on_retry(node):  # noqa: F811
    # Every 50th route via a gateway no route leads to yet (ENETUNREACH), among 6000 (several
    # chunks of one template, and a second template, interleaved).
    routes = [learned(i, "172.16.0.9" if i % 50 == 7 else "192.168.5.2") for i in range(6000)]
    desired = {r.key: r for r in routes}
    failing = {r.key for r in routes if r.gateway == A("172.16.0.9")}

    async def scenario():
        async with RouteTable(netns=node, incremental=True) as table:
            first = await table.apply(desired)
            ip(node, "addr", "add", "172.16.0.1/16", "dev", "eth0")  # the gateway is reachable now
            retry = await table.apply(desired, changed=list(first.failed))
            # Half go (the failed ones among them), a third of the rest move to the other gateway.
            keep = {r.key: r for r in routes[::2]}
            moved = {k: DesiredRoute(k, "unicast", None, A("172.16.0.9"), "universe", "learned")
                     for k in list(keep)[:1000]}
            final = {**keep, **moved}
            changed = await table.apply(final, changed=list(desired))
            again = await table.apply(final, changed=list(desired))
            return first, retry, changed, again, final

    first, retry, changed, again, final = run(scenario())
    assert set(first.failed) == failing and all(v.startswith("ENETUNREACH") for v in first.failed.values())
    assert first.added == 6000 - len(failing)
    assert retry.failed == {} and retry.added == len(failing)
    assert changed.failed == {} and (changed.deleted, changed.replaced) == (3000, 1000)
    assert again.writes == 0 and again.failed == {}
    kernel = ours_in_kernel(node)
    assert len(kernel) == len(final)
    assert sum("via 172.16.0.9" in line for line in kernel) == sum(
        r.gateway == A("172.16.0.9") for r in final.values())
