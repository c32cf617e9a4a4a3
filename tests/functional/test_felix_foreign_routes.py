"""Issue 8 item 6: foreign routes are never touched, across 100 resyncs of a RouteTable.

"Foreign": another protocol in our table (even on a ``cali*`` device, even inside our pool, even at
a destination we want), our protocol in another table, and the kernel's own routes. Every resync
is a full dump and diff (``resync()`` then ``apply``): none of them may write, and the whole
routing state other than our proto-80 routes in table 254 must be byte-for-byte what it was.
"""
from __future__ import annotations

import asyncio
import subprocess
from ipaddress import IPv4Address, IPv4Network

import pytest

from felix.calc import DesiredRoute, dst_key, workload_route
from felix.dataplane import PROTO, RouteTable

pytestmark = pytest.mark.root

N, A, K = IPv4Network, IPv4Address, dst_key
CALI = "cali0123456789a"
DESIRED = {r.key: r for r in (
    workload_route(A("10.244.1.5"), CALI, "default/web"),
    DesiredRoute(K("10.244.1.0/26"), "blackhole", None, None, "universe", "local block"),
    DesiredRoute(K("10.244.2.0/26"), "unicast", None, A("192.168.5.2"), "universe", "learned from n2"),
)}
FOREIGN = [
    ["10.244.3.0/26", "via", "192.168.5.2", "proto", "static"],  # inside our pool, another owner
    ["10.244.1.9/32", "dev", CALI, "proto", "boot"],  # on a cali* device, not ours
    ["10.244.2.0/26", "via", "192.168.5.2", "proto", "bird", "metric", "10"],  # a dst we want too
    ["10.244.4.0/26", "via", "192.168.5.2", "proto", str(PROTO), "table", "100"],  # ours, other table
    ["blackhole", "10.244.5.0/26", "proto", "kernel"],
]


def ip(ns: str, *args: str) -> str:
    return subprocess.run(["ip", "-n", ns, *args], check=True, capture_output=True, text=True).stdout


def not_ours(ns: str) -> list[str]:
    """Every route in every table, IPv4, except our proto in the main table."""
    lines = ip(ns, "-4", "route", "show", "table", "all").splitlines()
    return sorted(ln for ln in lines if not (f"proto {PROTO}" in ln and "table" not in ln))


def test_foreign_routes_survive_100_resyncs(netns):
    ns, peer = netns("frn"), netns("frp")
    subprocess.run(["ip", "link", "add", "frtmp0", "netns", ns, "type", "veth", "peer", "name",
                    "frtmp1", "netns", peer], check=True)
    ip(ns, "link", "set", "frtmp0", "name", "eth0")
    ip(ns, "addr", "add", "192.168.5.1/24", "dev", "eth0")
    ip(ns, "link", "set", "eth0", "up")
    ip(ns, "link", "add", CALI, "type", "veth", "peer", "name", "wl0")
    ip(ns, "link", "set", CALI, "up")
    ip(ns, "link", "set", "wl0", "up")
    for route in FOREIGN:
        ip(ns, "route", "add", *route)
    before = not_ours(ns)
    assert len(before) >= len(FOREIGN)

    async def resyncs() -> list[int]:
        writes = []
        async with RouteTable(netns=ns) as table:
            for _ in range(100):
                table.resync()
                result = await table.apply(DESIRED)
                writes.append(result.writes)
        return writes

    writes = asyncio.run(resyncs())
    assert writes[0] > 0 and writes[1:] == [0] * 99  # the first installs ours, then nothing
    assert not_ours(ns) == before
