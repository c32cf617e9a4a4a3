"""``RtnlSocket.write_templates`` (the route table's bulk write) against the real kernel: a write
that mixes commands and templates, spans several chunks and has failures scattered through its
groups must report each failure at the index of the request that failed (the route table keeps
exactly those keys dirty and retries them), and leave the kernel as ``write`` one by one would.

Topology as in ``test_felix_rtnl``: namespace ``node``, 10.0.0.1/16 on ``eth0``."""
from __future__ import annotations

import errno
import subprocess
from collections.abc import Iterator
from ipaddress import IPv4Address

import pytest

from felix import rtnl
from felix.dataplane import PROTO

pytestmark = pytest.mark.root

BASE = int(IPv4Address("100.64.0.0"))
UNREACHABLE = int(IPv4Address("172.31.9.9"))  # no route to it, not onlink: ENETUNREACH


def ip(ns: str, *args: str) -> str:
    return subprocess.run(["ip", "-n", ns, *args], check=True, capture_output=True, text=True).stdout


@pytest.fixture
def sock(netns) -> Iterator[rtnl.RtnlSocket]:
    ns = netns("rtnlbulk")
    ip(ns, "link", "add", "eth0", "type", "veth", "peer", "name", "eth1")
    for dev in ("eth0", "eth1"):
        ip(ns, "link", "set", dev, "up")
    ip(ns, "addr", "add", "10.0.0.1/16", "dev", "eth0")
    s = rtnl.RtnlSocket(ns)
    try:
        yield s
    finally:
        s.close()


def key(i: int) -> int:
    return rtnl.route_key(BASE + 4 * i, 30)


def template(gateway: int, oif: int) -> bytes:
    return rtnl.route_template(rtnl.route_image(dst=0, dst_len=30, table=254, proto=PROTO,
                                                gateway=gateway, oif=oif))


def ours(sock: rtnl.RtnlSocket) -> dict[int, bytes]:
    return sock.dump_routes(254, PROTO).images()


@pytest.mark.parametrize("gateways", [1, 3, rtnl.BULK_GROUPS + 2],
                         ids=["one-template", "few-templates", "more-groups-than-bulk"])
def test_bulk_write_attributes_each_failure_to_its_request_across_groups_and_chunks(sock, gateways):
    eth0 = {name: index for index, name in sock.dump_links().items()}["eth0"]
    good = [template(int(IPv4Address("10.0.0.2")) + g, eth0) for g in range(gateways)]
    bad = template(UNREACHABLE, eth0)
    installed = 1000
    failed = sock.write_templates([rtnl.RTM_NEWROUTE] * installed, [key(i) for i in range(installed)],
                                  [good[i % gateways] for i in range(installed)])
    assert failed == {}
    # Deletes in front (present ones, and absent ones: ESRCH), then adds of several templates
    # with unreachable gateways scattered through them; ~7000 requests: several chunks.
    cmds, keys, templates, expected = [], [], [], {}

    def plan(cmd: int, k: int, t: bytes, code: int | None = None) -> None:
        if code is not None:
            expected[len(keys)] = code
        cmds.append(cmd), keys.append(k), templates.append(t)

    for i in range(0, 500):
        plan(rtnl.RTM_DELROUTE, key(i), good[i % gateways])
    for i in range(20000, 20100):
        plan(rtnl.RTM_DELROUTE, key(i), good[i % gateways], errno.ESRCH)
    added = set()
    for i in range(installed, installed + 6000):
        if i % 37 == 0:
            plan(rtnl.RTM_NEWROUTE, key(i), bad, errno.ENETUNREACH)
        else:
            plan(rtnl.RTM_NEWROUTE, key(i), good[i % gateways])
            added.add(i)
    failed = sock.write_templates(cmds, keys, templates)
    assert {i: f.errno for i, f in failed.items()} == expected
    kernel = ours(sock)
    want = set(range(500, installed)) | added
    assert set(kernel) == {key(i) for i in want}
    assert all(kernel[key(i)] == rtnl.route_from_template(key(i), good[i % gateways]) for i in want)
