"""felix.nat.NatTable against the real kernel's nftables, inside throwaway namespaces.

Topology (all /24)::

    pod 10.244.1.5 --- .1 node .1 --- 10.245.1.7 other      (pools 10.244/16 NAT, 10.245/16 no NAT)
                          .1
                           |
                   192.168.100.2 outside                    (no route back to any pool)

``outside`` can only answer the pod if the node masqueraded it; ``other`` routes pools via the node,
so it would answer either way, and must see the pod's own address. The node also holds foreign
tables (``ip filter``, ``ip nat``, and an ``inet pycalico`` of another family) that must survive.
"""
from __future__ import annotations

import asyncio
import json
import os
import socket
import stat
import subprocess
from ipaddress import ip_network

import pytest

from felix.nat import NatTable, NftError
from hostio import netns_entered
from tests.helpers import veth_between

pytestmark = pytest.mark.root

NAT_POOL, PLAIN_POOL = ip_network("10.244.0.0/16"), ip_network("10.245.0.0/16")
POOLS = [(NAT_POOL, True), (PLAIN_POOL, False)]
POD, OTHER, OUTSIDE, NODE_OUT = "10.244.1.5", "10.245.1.7", "192.168.100.2", "192.168.100.1"
FOREIGN = """
table ip filter {
    chain forward {
        type filter hook forward priority 0; policy accept;
        ip daddr 203.0.113.0/24 counter accept
    }
}
table ip nat {
    chain postrouting {
        type nat hook postrouting priority srcnat; policy accept;
        ip daddr 203.0.113.0/24 counter accept
    }
}
table inet pycalico {
    chain input {
        type filter hook input priority 0; policy accept;
        tcp dport 9 counter drop
    }
}
"""
FOREIGN_TABLES = [("ip", "filter"), ("ip", "nat"), ("inet", "pycalico")]


def sh(*argv: str, stdin: str | None = None) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True, input=stdin).stdout


def nft(ns: str, *args: str, stdin: str | None = None) -> str:
    return sh("ip", "netns", "exec", ns, "nft", *args, stdin=stdin)


def tables(ns: str) -> set[tuple[str, str]]:
    doc = json.loads(nft(ns, "-j", "list", "tables"))
    return {(t["table"]["family"], t["table"]["name"]) for t in doc["nftables"] if "table" in t}


def foreign_state(ns: str) -> list[str]:
    return [nft(ns, "list", "table", family, name) for family, name in FOREIGN_TABLES]


@pytest.fixture
def lab(netns) -> dict[str, str]:
    ns = {name: netns(name) for name in ("pod", "node", "other", "outside")}
    veth_between(ns["pod"], "eth0", f"{POD}/24", ns["node"], "to-pod", "10.244.1.1/24")
    veth_between(ns["other"], "eth0", f"{OTHER}/24", ns["node"], "to-other", "10.245.1.1/24")
    veth_between(ns["outside"], "eth0", f"{OUTSIDE}/24", ns["node"], "to-out", f"{NODE_OUT}/24")
    sh("ip", "-n", ns["pod"], "route", "add", "default", "via", "10.244.1.1")
    sh("ip", "-n", ns["other"], "route", "add", "default", "via", "10.245.1.1")
    sh("ip", "netns", "exec", ns["node"], "sysctl", "-qw", "net.ipv4.ip_forward=1")
    nft(ns["node"], "-f", "-", stdin=FOREIGN)
    return ns


def udp_exchange(src_ns: str, dst_ns: str, dst: str) -> tuple[str, bool]:
    """Send from ``src_ns`` to ``dst``: (source address ``dst_ns`` saw, whether its reply came back)."""
    with netns_entered(f"/run/netns/{dst_ns}"):
        server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with netns_entered(f"/run/netns/{src_ns}"):
        client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with server, client:
        server.bind((dst, 0))
        server.settimeout(3)
        client.settimeout(1)
        client.sendto(b"ping", server.getsockname())
        _, peer = server.recvfrom(64)
        try:
            server.sendto(b"pong", peer)
            return peer[0], client.recv(64) == b"pong"
        except OSError:  # ENETUNREACH (no route back) or the client's timeout
            return peer[0], False


def pings(src_ns: str, dst: str) -> bool:
    return subprocess.run(["ip", "netns", "exec", src_ns, "ping", "-c1", "-W1", dst],
                          capture_output=True).returncode == 0


def test_pod_traffic_leaving_all_pools_is_masqueraded_and_pool_traffic_is_not(lab):
    async def scenario():
        table = NatTable(lab["node"])
        assert udp_exchange(lab["pod"], lab["outside"], OUTSIDE) == (POD, False)  # no way back yet
        assert not pings(lab["pod"], OUTSIDE)

        assert await table.apply(POOLS) is True
        assert pings(lab["pod"], OUTSIDE)
        assert udp_exchange(lab["pod"], lab["outside"], OUTSIDE) == (NODE_OUT, True)
        assert udp_exchange(lab["pod"], lab["other"], OTHER) == (POD, True)  # pool to pool: no NAT
        packets, _ = (await table.counters())["ip"]
        assert packets >= 2  # ping and UDP flows; the pool-to-pool one never reaches masquerade
        assert tables(lab["node"]) == {("ip", "pycalico"), *FOREIGN_TABLES}
    asyncio.run(scenario())


def test_table_goes_with_the_last_nat_pool_and_foreign_tables_survive_everything(lab):
    async def scenario():
        before = foreign_state(lab["node"])
        table = NatTable(lab["node"])
        await table.apply(POOLS)
        await table.apply([(NAT_POOL, True), (PLAIN_POOL, True)])
        assert foreign_state(lab["node"]) == before
        assert await table.apply([(NAT_POOL, False), (PLAIN_POOL, False)]) is True
        assert ("ip", "pycalico") not in tables(lab["node"])
        assert not pings(lab["pod"], OUTSIDE)
        assert await table.remove() is False  # already gone: nothing to write
        assert await NatTable(lab["node"]).remove() is False  # a fresh owner finds nothing either
        assert foreign_state(lab["node"]) == before
        assert tables(lab["node"]) == set(FOREIGN_TABLES)
    asyncio.run(scenario())


def test_unchanged_pools_cost_no_write_and_a_restart_adopts_the_table(lab):
    async def scenario():
        table = NatTable(lab["node"])
        assert await table.apply(POOLS) is True
        reads = table.reads
        assert await table.apply(list(reversed(POOLS))) is False
        assert (table.writes, table.reads) == (1, reads)  # not even a read
        assert await table.in_sync() and await table.in_sync(POOLS)
        assert table.writes == 1

        restarted = NatTable(lab["node"])
        assert await restarted.apply([("10.245.0.0/16", False), ("10.244.0.0/16", True)]) is False
        assert restarted.writes == 0
    asyncio.run(scenario())


@pytest.mark.parametrize("drift", [
    "delete table ip pycalico",
    "flush chain ip pycalico postrouting",
    "delete element ip pycalico nat-pools { 10.244.0.0/16 }",
    "add element ip pycalico all-pools { 10.9.0.0/16 }",
    "add rule ip pycalico postrouting counter accept",
    "add set ip pycalico extra { type ipv4_addr; }",
])
def test_drift_is_seen_by_in_sync_and_repaired_by_apply(lab, drift):
    async def scenario():
        table = NatTable(lab["node"])
        await table.apply(POOLS)
        want = nft(lab["node"], "list", "table", "ip", "pycalico")
        nft(lab["node"], *drift.split())
        assert await table.in_sync() is False
        assert await table.apply(POOLS) is True
        assert await table.in_sync() is True
        assert nft(lab["node"], "list", "table", "ip", "pycalico") == want
        assert table.writes == 2
    asyncio.run(scenario())


def test_a_failed_transaction_leaves_the_old_table_and_names_nfts_complaint(lab, tmp_path):
    # A wrapper that appends a line nft rejects to every script: the whole transaction must fail.
    wrapper = tmp_path / "nft-broken"
    wrapper.write_text('#!/bin/sh\nif [ "$1" = -f ]; then\n'
                       '  { cat; echo "add rule ip pycalico nosuchchain accept"; } | nft -f -; exit $?\n'
                       'fi\nexec nft "$@"\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)

    async def scenario():
        await NatTable(lab["node"]).apply(POOLS)
        before = nft(lab["node"], "list", "table", "ip", "pycalico")
        broken = NatTable(lab["node"], nft=str(wrapper))
        with pytest.raises(NftError, match="nosuchchain") as err:
            await broken.apply([(NAT_POOL, True)])
        assert err.value.returncode == 1 and "No such file or directory" in err.value.stderr
        assert nft(lab["node"], "list", "table", "ip", "pycalico") == before
        assert await broken.in_sync(POOLS)  # the kernel kept the old table
    asyncio.run(scenario())


def test_a_hanging_nft_times_out_and_is_killed(tmp_path):
    hang = tmp_path / "nft-hang"
    pidfile = tmp_path / "pid"
    hang.write_text(f"#!/bin/sh\necho $$ > {pidfile}\nexec sleep 30\n")
    hang.chmod(hang.stat().st_mode | stat.S_IXUSR)
    with pytest.raises(NftError, match="no answer within 0.3s"):
        asyncio.run(NatTable(nft=str(hang), timeout=0.3).apply(POOLS))
    pid = int(pidfile.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_ipv6_pools_get_their_own_table_in_the_same_transaction(lab):
    async def scenario():
        table = NatTable(lab["node"])
        assert await table.apply([*POOLS, ("fd00:10::/64", True), ("fd00:11::/64", False)]) is True
        assert table.writes == 1
        assert {("ip", "pycalico"), ("ip6", "pycalico")} <= tables(lab["node"])
        listed = nft(lab["node"], "list", "table", "ip6", "pycalico")
        assert "ip6 saddr @nat-pools ip6 daddr != @all-pools" in listed
        assert await table.in_sync()
        assert await table.apply(POOLS) is True  # v6 NAT gone: only the ip6 table is rewritten
        assert table.last_script == "table ip6 pycalico\ndelete table ip6 pycalico\n"
        assert ("ip6", "pycalico") not in tables(lab["node"])
        assert await table.remove() is True and tables(lab["node"]) == set(FOREIGN_TABLES)
    asyncio.run(scenario())
