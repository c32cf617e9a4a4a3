"""felix.rtnl (and RouteTable on top of it) against the real kernel, in throwaway namespaces.

Topology: namespace ``node`` with a veth pair ``eth0``/``eth1`` (both ends local, both up) and
10.0.0.1/16 on ``eth0``: gateways in 10.0.0.0/16 resolve, 172.16.0.1 only ``onlink``.
"""
from __future__ import annotations

import asyncio
import errno
import subprocess
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv4Network

import pytest

from felix import rtnl
from felix.calc import DesiredRoute, dst_key
from felix.dataplane import PROTO, RouteTable

pytestmark = pytest.mark.root

GW = int(IPv4Address("10.0.0.2"))
BASE = int(IPv4Address("100.64.0.0"))


def ip(ns: str, *args: str) -> str:
    return subprocess.run(["ip", "-n", ns, *args], check=True, capture_output=True, text=True).stdout


def ours_in_kernel(ns: str, proto: int = PROTO) -> list[str]:
    return sorted(" ".join(line.split()) for line in ip(ns, "route", "show", "proto", str(proto)).splitlines())


@pytest.fixture
def node(netns) -> str:
    ns = netns("rtnl")
    ip(ns, "link", "add", "eth0", "type", "veth", "peer", "name", "eth1")
    for dev in ("eth0", "eth1"):
        ip(ns, "link", "set", dev, "up")
    ip(ns, "addr", "add", "10.0.0.1/16", "dev", "eth0")
    return ns


@pytest.fixture
def sock(node) -> Iterator[rtnl.RtnlSocket]:
    s = rtnl.RtnlSocket(node)
    try:
        yield s
    finally:
        s.close()


def image(i: int, **kw) -> bytes:
    spec = dict(dst=BASE + 4 * i, dst_len=30, table=254, proto=PROTO, gateway=GW)
    spec.update(kw)
    return rtnl.route_image(**spec)


def test_one_bad_route_in_a_batch_fails_alone_and_the_rest_are_installed(node, sock):
    eth0 = ip(node, "-o", "link", "show", "eth0").split(":")[0]
    good = [image(i, oif=int(eth0)) for i in range(200)]
    batch = good[:50] + [image(1000, gateway=None, oif=9999)] + good[50:150] + [
        image(1001, gateway=int(IPv4Address("172.31.9.9")))] + good[150:]
    failed = sock.write((rtnl.RTM_NEWROUTE, b) for b in batch)
    assert sorted(failed) == [50, 151]
    assert failed[50].errno == errno.ENODEV
    assert failed[151].errno == errno.ENETUNREACH and failed[151].describe().startswith("ENETUNREACH: ")
    dump = sock.dump_routes(254, PROTO)
    assert sorted(dump.images().values()) == sorted(good)  # exactly as written, byte for byte
    assert len(ours_in_kernel(node)) == 200


def test_deletes_carry_our_proto_so_another_owners_route_survives(node, sock):
    ip(node, "route", "add", "100.64.0.0/30", "via", "10.0.0.2", "proto", "static")
    failed = sock.write([(rtnl.RTM_DELROUTE, image(0, gateway=None))])
    assert failed[0].errno == errno.ESRCH
    assert ours_in_kernel(node, 4) == ["100.64.0.0/30 via 10.0.0.2 dev eth0"]
    assert sock.dump_routes(254, PROTO).foreign == {
        rtnl.route_key(BASE, 30): 4, rtnl.route_key(int(IPv4Address("10.0.0.0")), 16): 2}  # + connected


def test_route_table_delete_all_leaves_foreign_routes(node):
    ip(node, "route", "add", "100.64.1.0/24", "via", "10.0.0.2", "proto", "static")
    ip(node, "route", "add", "blackhole", "100.64.2.0/24", "proto", "boot")
    before = ip(node, "route", "show")
    desired = {r.key: r for r in (
        DesiredRoute(dst_key(f"100.65.{i}.0/24"), "unicast", None, IPv4Address("10.0.0.2"),
                     "universe", "learned") for i in range(50))}

    async def scenario():
        async with RouteTable(netns=node) as table:
            return await table.apply(desired), await table.apply({})

    first, second = asyncio.run(scenario())
    assert (first.added, second.deleted, second.failed) == (50, 50, {})
    assert ip(node, "route", "show") == before


def test_onlink_round_trip(node, sock):
    onlink = DesiredRoute(dst_key("100.66.0.0/26"), "unicast", "eth0", IPv4Address("172.16.0.1"),
                          "universe", "ipip", onlink=True)

    async def scenario():
        async with RouteTable(netns=node) as table:
            first = await table.apply({onlink.key: onlink})
            return first, await table.kernel_routes(), await table.apply({onlink.key: onlink})

    first, kernel, again = asyncio.run(scenario())
    assert (first.added, first.failed) == (1, {})
    assert ours_in_kernel(node) == ["100.66.0.0/26 via 172.16.0.1 dev eth0 onlink"]
    assert kernel[onlink.key].onlink and kernel[onlink.key].gateway == IPv4Address("172.16.0.1")
    assert again.writes == 0
    (route,) = (rtnl.decode_route(i) for i in sock.dump_routes(254, PROTO).images().values())
    assert route.flags & rtnl.RTNH_F_ONLINK


def test_ten_thousand_routes_install_and_dump_back_equal(node):
    kinds = [
        lambda dst: DesiredRoute(dst, "blackhole", None, None, "universe", "block"),
        lambda dst: DesiredRoute(dst, "unicast", None, IPv4Address("10.0.3.4"), "universe", "bgp"),
        lambda dst: DesiredRoute(dst, "unicast", "eth0", None, "link", "workload"),
        lambda dst: DesiredRoute(dst, "unicast", "eth0", IPv4Address("172.16.0.1"), "universe",
                                 "vxlan", onlink=True),
    ]
    desired = {}
    for i in range(10_000):
        dst = dst_key(IPv4Network((BASE + 4 * i, 30)))
        desired[dst] = kinds[i % 4](dst)

    async def scenario():
        async with RouteTable(netns=node) as table:
            installed = await table.apply(desired)
            kernel = await table.kernel_routes()
            return installed, kernel, await table.apply(desired), table.dumps

    installed, kernel, noop, dumps = asyncio.run(scenario())
    assert (installed.added, installed.failed) == (10_000, {})
    assert set(kernel) == set(desired)
    for dst, want in desired.items():
        have = kernel[dst]
        assert (have.type, have.scope, have.gateway, have.onlink, have.proto) == (
            want.type, want.scope, want.gateway, want.onlink, PROTO)
        assert want.dev is None or have.dev == want.dev
    assert noop.writes == 0 and noop.failed == {} and dumps == 3
    assert len(ours_in_kernel(node)) == 10_000


def test_a_table_above_255_is_written_and_dumped(node):
    sock = rtnl.RtnlSocket(node)
    try:
        assert sock.dump_routes(1000, PROTO).ours == {}  # the table does not exist yet: empty
        assert sock.write([(rtnl.RTM_NEWROUTE, image(0, table=1000))]) == {}
        assert sock.dump_routes(254, PROTO).ours == {}
        (dumped,) = sock.dump_routes(1000, PROTO).images().values()
        assert dumped.startswith(image(0, table=1000))  # + the RTA_OIF the kernel resolved
    finally:
        sock.close()
    assert ip(node, "route", "show", "table", "1000").split() == [
        "100.64.0.0/30", "via", "10.0.0.2", "dev", "eth0", "proto", "80"]


def test_link_names(node, sock):
    names = sock.dump_links()
    assert set(names.values()) == {"lo", "eth0", "eth1"}
