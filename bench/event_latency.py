"""``python -m bench.event_latency --routes 100000 --events 200``: how long one pod event takes to
reach the kernel on a node that already holds ``--routes`` routes (issue 8: p99 <= 10 ms).

Setup (root): a fresh, uniquely named network namespace that this process's main thread joins
(etcd, the agent and every socket opened later live in it; it is deleted at the end), with a veth
``eth0`` 192.168.255.1/16 (the node's connected subnet) and ``--events`` pre-created ``cali*``
veths. A real etcd on its loopback holds one pool (10.0.0.0/8, blocks /26, no encapsulation),
``--nodes`` fake remote Nodes on 192.168.0.0/16 and ``--routes`` IPAMBlocks affine to them (written
by parallel creates: the etcd datastore has no batch write), plus our own blocks. The real agent
(``python -m felix.agent``, ``CALICO_NETWORKING_BACKEND=none``: remote blocks routed from their
affinities, ``<block> via <node IP>``) then starts in the namespace: ``install_s`` is from its start
until every route is in the kernel (a dump of proto 80 polled every 0.25 s).

Then ``--events`` pod events, one after the other: a WorkloadEndpoint for the next ``cali*`` veth
is created in etcd, and the time from just before that write to the RTM_NEWROUTE of its
``<ip>/32 dev cali...`` (a netlink socket bound to RTNLGRP_IPV4_ROUTE, read by a thread of ours) is
one sample. ``--gap-ms`` waits between events (default 0: the next event right after the route).

JSON keys: event_p50_ms, event_p99_ms, event_max_ms, routes, events, install_s (the agent's
start-up: from its start until every route is in the kernel), install_rss_mb and install_cpu_s
(the agent's VmRSS and CPU seconds then), seed_s,
write_p50_ms / write_p99_ms (until etcd acknowledged the write: etcd's own share, its WAL fsync),
after_write_p50_ms / after_write_p99_ms (from that acknowledgement to the route: the watch and the
agent; on a busy machine etcd's fsync alone can exceed the goal),
agent_rss_mb (VmRSS after the events), agent_peak_rss_mb (VmHWM), agent_cpu_s (user + system over
the whole run), agent_cpu_events_s (during the events only), events_reconciles_by_cause and
events_route_dumps (the agent's own counters over the events), events_gc_collections,
events_gc_pause_total_ms, events_gc_pauses_over_1ms, events_gc_pauses_over_5ms and
events_gc_by_generation (the agent's cyclic-GC pauses over the events), load_avg_1m, goal_event_p99_ms.
PNG: ``bench/out/event_latency.png`` (CDF of the samples).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

from bench.common import cdf_figure, emit, percentile

NODE, NODE_IP = "node0", "192.168.255.1/16"
POOL = IPv4Network("10.0.0.0/8")
OWN = IPv4Network("10.255.0.0/16")  # our blocks and the events' workloads
PROTO = 80
V3 = "projectcalico.org/v3"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.event_latency", description=__doc__)
    p.add_argument("--routes", type=int, default=100_000, help="remote /26 blocks (kernel routes)")
    p.add_argument("--events", type=int, default=200)
    p.add_argument("--nodes", type=int, default=1000, help="fake remote nodes owning the blocks")
    p.add_argument("--gap-ms", type=float, default=0.0, help="pause between two events")
    p.add_argument("--writers", type=int, default=16, help="parallel etcd writers for the seed")
    a = p.parse_args(argv)
    if os.geteuid() != 0:
        p.error("needs root (network namespaces)")
    if not 0 < a.routes <= 2**18 - 1024 or not 0 < a.events <= 64 * 256 or a.nodes > 64_000:
        p.error("--routes must fit 10.0.0.0/8 below 10.255/16, --events 10.255/16, --nodes the /16")
    result: dict = {"routes": a.routes, "events": a.events, "nodes": a.nodes, "gap_ms": a.gap_ms,
                    "goal_event_p99_ms": 10}
    with node_namespace(a.events) as (ns, tmp):
        samples = run(a, tmp, result)
    result["event_p50_ms"] = round(percentile(samples, 50), 2)
    result["event_p99_ms"] = round(percentile(samples, 99), 2)
    result["event_max_ms"] = round(max(samples), 2)
    plot(result, samples)
    emit(result)
    return 0


def run(a, tmp: Path, result: dict) -> list[float]:
    import datastore
    from tests.helpers import start_etcd, stop_process

    etcd, url = start_etcd(str(tmp / "etcd"))
    agent = ds = watcher = None
    try:
        ds = datastore.connect("etcdv3", etcd_endpoints=url)
        t0 = time.monotonic()
        seed(ds, a)
        result["seed_s"] = round(time.monotonic() - t0, 1)
        print(f"seeded {a.routes} blocks of {a.nodes} nodes in {result['seed_s']} s", flush=True)
        agent, started = start_agent(url, tmp), time.monotonic()
        expected = a.routes + own_blocks(a.events)
        wait_installed(agent, expected, tmp)
        result["install_s"] = round(time.monotonic() - started, 2)
        result["install_rss_mb"] = round(proc_status_mb(agent.pid, "VmRSS"), 1)
        result["install_cpu_s"] = round(cpu_seconds(agent.pid), 2)
        print(f"{expected} routes in the kernel {result['install_s']} s after the agent started",
              flush=True)
        time.sleep(1.0)  # the agent settles (its reconcile after the install)
        cpu_before, status_before = cpu_seconds(agent.pid), agent_status(tmp)
        watcher = RouteWatcher()
        pairs = [one_event(ds, watcher, i, a.gap_ms) for i in range(a.events)]
        samples, writes = [p[0] for p in pairs], [p[1] for p in pairs]
        result["write_p50_ms"] = round(percentile(writes, 50), 2)
        result["write_p99_ms"] = round(percentile(writes, 99), 2)
        after = [t - w for t, w in pairs]  # from etcd's acknowledgement to the route
        result["after_write_p50_ms"] = round(percentile(after, 50), 2)
        result["after_write_p99_ms"] = round(percentile(after, 99), 2)
        print("slowest events (ms to the route, ms of it until etcd acknowledged the write):",
              sorted(((round(t, 1), round(w, 1)) for t, w in pairs), reverse=True)[:8], flush=True)
        result["agent_cpu_events_s"] = round(cpu_seconds(agent.pid) - cpu_before, 2)
        status = agent_status(tmp)
        result["events_reconciles_by_cause"] = {  # during the events: "event" only, no dump
            cause: n - status_before["reconciles_by_cause"][cause]
            for cause, n in status["reconciles_by_cause"].items()}
        result["events_route_dumps"] = status["route_dumps"] - status_before["route_dumps"]
        gc_before, gc_after = status_before["gc"], status["gc"]
        for key in ("collections", "pause_total_ms", "pauses_over_1ms", "pauses_over_5ms"):
            result[f"events_gc_{key}"] = round(gc_after[key] - gc_before[key], 2)
        result["events_gc_by_generation"] = [
            a - b for a, b in zip(gc_after["by_generation"], gc_before["by_generation"])]
        result["load_avg_1m"] = os.getloadavg()[0]  # a shared machine: other work skews the tail
        result["agent_cpu_s"] = round(cpu_seconds(agent.pid), 2)
        result["agent_rss_mb"] = round(proc_status_mb(agent.pid, "VmRSS"), 1)
        result["agent_peak_rss_mb"] = round(proc_status_mb(agent.pid, "VmHWM"), 1)
        if agent.poll() is not None:
            raise SystemExit(f"the agent exited with {agent.returncode}: see {tmp / 'agent.log'}")
        return samples
    finally:
        if watcher is not None:
            watcher.close()
        if agent is not None:
            stop_process(agent)
        if ds is not None:
            ds.close()
        stop_process(etcd)


# -- the datastore --

def seed(ds, a) -> None:
    from crds import load

    ds.create(load({"apiVersion": V3, "kind": "IPPool", "metadata": {"name": "bench-pool"},
                    "spec": {"cidr": str(POOL), "blockSize": 26}}))
    docs = [{"kind": "Node", "metadata": {"name": f"remote{n}"},
             "spec": {"bgp": {"ipv4Address": f"{remote_ip(n)}/16"}}} for n in range(a.nodes)]
    docs += [block_doc(IPv4Network((int(OWN.network_address) + 64 * i, 26)), NODE)
             for i in range(own_blocks(a.events))]
    docs += [block_doc(IPv4Network((int(POOL.network_address) + 64 * i, 26)), f"remote{i % a.nodes}")
             for i in range(a.routes)]

    def create(doc: dict) -> None:
        ds.create(load({"apiVersion": V3, **doc}))

    with ThreadPoolExecutor(a.writers) as pool:
        for _ in pool.map(create, docs):
            pass


def block_doc(cidr: IPv4Network, node: str) -> dict:
    return {"kind": "IPAMBlock", "metadata": {"name": str(cidr).replace(".", "-").replace("/", "-")},
            "spec": {"cidr": str(cidr), "affinity": f"host:{node}"}}


def remote_ip(n: int) -> IPv4Address:
    return IPv4Address("192.168.0.0") + 256 + n  # 192.168.1.0 upwards, clear of ours


def own_blocks(events: int) -> int:
    return -(-events // 64)


def workload_ip(i: int) -> IPv4Address:
    return OWN.network_address + i


def iface(i: int) -> str:
    return f"cali{i:011x}"


def one_event(ds, watcher: RouteWatcher, i: int, gap_ms: float) -> tuple[float, float]:
    """(ms from the write to the route, ms until etcd acknowledged the write)."""
    from crds import load
    from felix.calc import dst_key

    wep = load({"apiVersion": V3, "kind": "WorkloadEndpoint",
                "metadata": {"name": f"{NODE}-k8s-pod{i}-eth0", "namespace": "default"},
                "spec": {"node": NODE, "pod": f"pod{i}", "interfaceName": iface(i),
                         "ipNetworks": [f"{workload_ip(i)}/32"]}})
    dst = dst_key(f"{workload_ip(i)}/32")
    t0 = time.perf_counter()
    ds.create(wep)
    written = time.perf_counter()
    seen = watcher.wait(dst, timeout=10)
    if seen is None:
        raise SystemExit(f"event {i}: no route for {workload_ip(i)}/32 within 10 s")
    if gap_ms:
        time.sleep(gap_ms / 1000)
    return (seen - t0) * 1000, (written - t0) * 1000


# -- the kernel --

class RouteWatcher:
    """RTM_NEWROUTE of proto 80 in this namespace, timestamped by a thread that only reads."""

    def __init__(self) -> None:
        from felix import rtnl

        self._rtnl = rtnl
        self._sock = rtnl.RtnlSocket(None, rtnl.RTMGRP_IPV4_ROUTE)
        self._sock.sock.settimeout(0.2)  # so that the reader notices close()
        self._seen: dict[int, float] = {}
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        rtnl = self._rtnl
        while not self._closed:
            try:
                buf = self._sock.recv()
            except TimeoutError:
                continue
            except OSError:
                if self._closed:
                    return
                raise
            now = time.perf_counter()
            for mtype, _flags, msg in rtnl.parse_events(buf):
                if mtype == rtnl.RTM_NEWROUTE:
                    route = rtnl.decode_route(msg[16:])
                    if route.proto == PROTO:
                        with self._cond:
                            self._seen.setdefault(route.key, now)
                            self._cond.notify_all()

    def wait(self, key: int, timeout: float) -> float | None:
        with self._cond:
            self._cond.wait_for(lambda: key in self._seen, timeout)
            return self._seen.get(key)

    def close(self) -> None:
        self._closed = True
        self._thread.join(5)
        self._sock.close()


def wait_installed(agent: subprocess.Popen, expected: int, tmp: Path, timeout: float = 900) -> None:
    from felix import rtnl

    sock = rtnl.RtnlSocket()
    try:
        deadline = time.monotonic() + timeout
        while len(sock.dump_routes(254, PROTO).ours) < expected:
            if agent.poll() is not None:
                raise SystemExit(f"the agent exited with {agent.returncode}: see {tmp / 'agent.log'}")
            if time.monotonic() > deadline:
                raise SystemExit(f"fewer than {expected} routes after {timeout} s")
            time.sleep(0.25)
    finally:
        sock.close()


def start_agent(url: str, tmp: Path) -> subprocess.Popen:
    env = {**os.environ, "CALICO_NETWORKING_BACKEND": "none", "NO_DEFAULT_POOLS": "true"}
    with open(tmp / "agent.log", "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "felix.agent", "--name", NODE, "--ip", NODE_IP,
             "--etcd-endpoints", url, "--run-dir", str(tmp / "run"), "--health-port", "0",
             "--log-level", "WARNING"],
            stdout=log, stderr=log, env=env, cwd=Path(__file__).resolve().parents[1])


def agent_status(tmp: Path) -> dict:
    from felix.status import query

    return query(NODE, "status", path=tmp / "run" / "status.sock")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def proc_status_mb(pid: int, field: str) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} for {pid}")


@contextlib.contextmanager
def node_namespace(events: int) -> Iterator[tuple[str, Path]]:
    """A fresh namespace joined by this thread (and so by everything started later), with the
    node's eth0 and ``events`` cali veths; deleted on exit, and this thread goes back home."""
    from pyroute2 import netns as pyroute2_netns

    name = f"bench-ev-{os.getpid()}-{secrets.token_hex(3)}"
    host_ns = os.open("/proc/self/ns/net", os.O_RDONLY)
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        cmds = ["link set lo up", "link add eth0 type veth peer name eth0p", "link set eth0p up",
                f"addr add {NODE_IP} dev eth0",
                "link set eth0 up"]
        for i in range(events):
            cmds += [f"link add {iface(i)} type veth peer name ev{i}", f"link set {iface(i)} up",
                     f"link set ev{i} up"]
        subprocess.run(["ip", "-n", name, "-batch", "-"], input="\n".join(cmds) + "\n", text=True,
                       check=True)
        pyroute2_netns.setns(name, flags=0)
        with tempfile.TemporaryDirectory(prefix="bench-ev-") as tmp:
            yield name, Path(tmp)
    finally:
        pyroute2_netns.setns(host_ns, flags=0)
        os.close(host_ns)
        subprocess.run(["ip", "netns", "delete", name], capture_output=True)


def plot(result: dict, samples: list[float]) -> Path:
    return cdf_figure(
        samples, label="etcd write -> RTM_NEWROUTE", goal=result["goal_event_p99_ms"],
        ylabel="fraction of events", name="event_latency.png",
        title=f"pod event latency at {result['routes']} routes: p50 {result['event_p50_ms']} ms, "
              f"p99 {result['event_p99_ms']} ms; agent RSS {result['agent_rss_mb']} MB")

if __name__ == "__main__":
    sys.exit(main())
