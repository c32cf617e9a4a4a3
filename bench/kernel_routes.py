"""``python -m bench.kernel_routes --routes 100000``: felix's RouteTable against ``ip -batch`` on the
same routes in the same kind of namespace.

Setup (root): two fresh, uniquely named network namespaces (one for RouteTable, one for ``ip``), each
with a veth pair ``bench0``/``bench1`` up and 10.0.0.1/16 on ``bench0``. The routes are /30s out of
100.64.0.0/10 in four kinds, round robin: ``blackhole``, ``via 10.0.x.y`` (a gateway on the connected
/16), ``dev bench0 scope link`` and ``via 172.16.0.1 dev bench0 onlink``, all ``proto 80``.
Measured, each once:

- install into an empty table: ``RouteTable.apply(desired)`` vs ``ip -batch`` of ``route replace``;
- no-op: ``apply`` of the same desired (a full dump and diff; its writes must be 0) vs
  ``ip route show`` to /dev/null on the same number of routes, best of 3 each;
- delete all: ``apply({})`` vs ``ip -batch`` of ``route del``;
- the incremental mode (``RouteTable(incremental=True)``) on the installed routes: its first apply
  adopts them (one dump, no writes), then a no-op apply diffs against the cache (no dump).

JSON keys: routes, install_s, install_ip_batch_s, ratio_install_vs_ip_batch, noop_s, noop_ip_show_s,
ratio_noop_vs_ip_show, noop_writes, adopt_incremental_s, adopt_incremental_writes,
noop_incremental_s, noop_incremental_writes, noop_incremental_dumps, delete_s, delete_ip_batch_s, ratio_delete_vs_ip_batch,
peak_rss_mb (VmHWM of this process, read before plotting; ``ip`` runs as a child and is not in it),
peak_rss_route_table_mb (VmHWM right after the RouteTable half, before the ``ip`` half),
rss_before_desired_mb / rss_with_desired_mb (VmRSS before and after building the desired routes,
``{dst_key: DesiredRoute}`` as the agent's calculation holds them: the interpreter and imports
~26 MB; 100k routes ~17 MB, ~170 B a route: the route 88 B, its int key 32 B, the dict's entry;
an ``IPv4Network`` per route made it ~34 MB), route_table_rss_mb (peak minus
rss_with_desired_mb: what RouteTable itself added at its peak, ~12 MB), goal_* (the targets of
issue 8). Measured at 100k on a shared 2-core machine: peak_rss_mb 54.6-54.8. The namespaces are
deleted in ``finally``.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from ipaddress import IPv4Address

from bench.common import emit, save_figure
from felix.calc import DesiredRoute, key_text, network_key
from felix.dataplane import PROTO, RouteTable

BASE = int(IPv4Address("100.64.0.0"))
REPEAT = 3  # the no-op and ``ip route show``: best of 3 each (a shared machine is noisy)
GATEWAY, ONLINK_GW, DEV = IPv4Address("10.0.0.2"), IPv4Address("172.16.0.1"), "bench0"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.kernel_routes", description=__doc__)
    p.add_argument("--routes", type=int, default=100_000)
    a = p.parse_args(argv)
    if os.geteuid() != 0:
        p.error("needs root (network namespaces)")
    if not 0 < a.routes <= 1 << 20:
        p.error("--routes: 1 .. 1048576")
    result: dict = {"routes": a.routes, "rss_before_desired_mb": round(rss_mb("VmRSS"), 1)}
    desired = desired_routes(a.routes)
    result["rss_with_desired_mb"] = round(rss_mb("VmRSS"), 1)
    with namespace("rt") as ns:
        result.update(asyncio.run(through_route_table(ns, desired)))
    result["peak_rss_route_table_mb"] = round(rss_mb("VmHWM"), 1)  # before the ``ip`` half
    with namespace("ip") as ns, tempfile.TemporaryDirectory() as tmp:
        result.update(through_ip(ns, desired, tmp))
    result["peak_rss_mb"] = round(rss_mb("VmHWM"), 1)
    result["route_table_rss_mb"] = round(result["peak_rss_mb"] - result["rss_with_desired_mb"], 1)
    for what, ip_key in (("install", "install_ip_batch_s"), ("noop", "noop_ip_show_s"),
                         ("delete", "delete_ip_batch_s")):
        result[f"ratio_{what}_vs_{ip_key[len(what) + 1:-2]}"] = round(
            result[f"{what}_s"] / result[ip_key], 3)
    result.update(goal_ratio_install_vs_ip_batch=0.5, goal_ratio_noop_vs_ip_show=1.5,
                  goal_ratio_delete_vs_ip_batch=0.5, goal_peak_rss_mb=60, goal_noop_writes=0)
    plot(result)
    emit(result)
    return 0


def desired_routes(count: int) -> dict[int, DesiredRoute]:
    """By ``felix.calc.dst_key``, as ``RouteCalc.desired`` is."""
    routes = {}
    for i in range(count):
        dst = network_key(BASE + 4 * i, 30)
        kind = i % 4
        if kind == 0:
            route = DesiredRoute(dst, "blackhole", None, None, "universe", "bench")
        elif kind == 1:
            route = DesiredRoute(dst, "unicast", None, GATEWAY, "universe", "bench")
        elif kind == 2:
            route = DesiredRoute(dst, "unicast", DEV, None, "link", "bench")
        else:
            route = DesiredRoute(dst, "unicast", DEV, ONLINK_GW, "universe", "bench", onlink=True)
        routes[dst] = route
    return routes


async def through_route_table(ns: str, desired) -> dict:
    async with RouteTable(netns=ns) as table:
        install_s, installed = await timed(table.apply(desired))
        noop_s, noop = min([await timed(table.apply(desired)) for _ in range(REPEAT)],
                           key=lambda pair: pair[0])
        incremental = await through_cache(ns, desired)
        delete_s, deleted = await timed(table.apply({}))
    for name, res in (("install", installed), ("noop", noop), ("delete", deleted)):
        if res.failed:
            raise SystemExit(f"{name}: {len(res.failed)} routes failed, e.g. {next(iter(res.failed.items()))}")
    if installed.added != len(desired) or deleted.deleted != len(desired):
        raise SystemExit(f"bad counts: install {installed}, delete {deleted.deleted}")
    return {"install_s": round(install_s, 3), "noop_s": round(noop_s, 3),
            "noop_writes": noop.writes, "delete_s": round(delete_s, 3), **incremental}


async def through_cache(ns: str, desired) -> dict:
    """The incremental mode's no-op: its first apply adopts (one dump), the next use the cache."""
    async with RouteTable(netns=ns, incremental=True) as table:
        adopt_s, adopted = await timed(table.apply(desired))
        dumps = table.dumps
        noop_s, noop = min([await timed(table.apply(desired)) for _ in range(REPEAT)],
                           key=lambda pair: pair[0])
        return {"adopt_incremental_s": round(adopt_s, 3), "adopt_incremental_writes": adopted.writes,
                "noop_incremental_s": round(noop_s, 3), "noop_incremental_writes": noop.writes,
                "noop_incremental_dumps": table.dumps - dumps}


async def timed(coro):
    start = time.perf_counter()
    value = await coro
    return time.perf_counter() - start, value


def through_ip(ns: str, desired, tmp: str) -> dict:
    add, delete = os.path.join(tmp, "add"), os.path.join(tmp, "del")
    with open(add, "w") as out:
        out.writelines(f"route replace {ip_spec(r)} proto {PROTO}\n" for r in desired.values())
    with open(delete, "w") as out:
        out.writelines(f"route del {ip_spec(r)} proto {PROTO}\n" for r in desired.values())
    install = run_timed(["ip", "-n", ns, "-batch", add])
    show = min(run_timed(["ip", "-n", ns, "route", "show"]) for _ in range(REPEAT))
    count = count_lines(["ip", "-n", ns, "route", "show", "proto", str(PROTO)])
    if count != len(desired):
        raise SystemExit(f"ip -batch installed {count} of {len(desired)} routes")
    return {"install_ip_batch_s": round(install, 3), "noop_ip_show_s": round(show, 3),
            "delete_ip_batch_s": round(run_timed(["ip", "-n", ns, "-batch", delete]), 3)}


def count_lines(cmd: list[str]) -> int:
    """Lines of ``cmd``'s output, read in chunks: 100k routes' text held whole (bytes and str)
    was ~10 MB of this process's peak, charged to RouteTable by ``route_table_rss_mb``."""
    with subprocess.Popen(cmd, stdout=subprocess.PIPE) as proc:
        count = sum(chunk.count(b"\n") for chunk in iter(lambda: proc.stdout.read(1 << 16), b""))
    if proc.returncode:
        raise subprocess.CalledProcessError(proc.returncode, cmd)
    return count


def ip_spec(route: DesiredRoute) -> str:
    if route.type == "blackhole":
        return f"blackhole {key_text(route.key)}"
    spec = key_text(route.key)
    if route.gateway is not None:
        spec += f" via {route.gateway}"
    if route.dev is not None:
        spec += f" dev {route.dev}"
    scope = "global" if route.scope == "universe" else route.scope  # ip's name for it
    return spec + (" onlink" if route.onlink else "") + f" scope {scope}"


def run_timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


@contextmanager
def namespace(short: str) -> Iterator[str]:
    name = f"bench-{short}-{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        for cmd in (f"link add {DEV} type veth peer name bench1", f"link set {DEV} up",
                    "link set bench1 up", f"addr add 10.0.0.1/16 dev {DEV}"):
            subprocess.run(["ip", "-n", name, *cmd.split()], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], capture_output=True)


def rss_mb(field: str) -> float:
    """``VmRSS`` (now) or ``VmHWM`` (peak) of this process, in MiB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def plot(result: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = ["install", "no-op (full dump)", "no-op (incremental)", "delete all"]
    ours = [result["install_s"], result["noop_s"], result["noop_incremental_s"], result["delete_s"]]
    ip = [result["install_ip_batch_s"], result["noop_ip_show_s"], result["noop_ip_show_s"],
          result["delete_ip_batch_s"]]
    fig, ax = plt.subplots(figsize=(8, 4))
    xs = range(len(labels))
    ax.bar([x - 0.2 for x in xs], ours, width=0.4, label="RouteTable (felix.rtnl)")
    ax.bar([x + 0.2 for x in xs], ip, width=0.4, label="ip -batch / ip route show")
    ax.set_xticks(list(xs), labels)
    ax.set_ylabel("seconds")
    ax.set_title(f"{result['routes']} routes; peak RSS {result['peak_rss_mb']} MB, "
                 f"{result['route_table_rss_mb']} MB of it RouteTable's")
    ax.legend()
    save_figure(fig, "kernel_routes.png")
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
