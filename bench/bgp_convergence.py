"""``python -m bench.bgp_convergence --prefixes 100000``: how long N prefixes announced by a BGP
peer take to reach a pycalico node's kernel, and to leave it, against BIRD as the receiving node in
the same run (BIRD -> iBGP -> BIRD -> kernel: the anchor).

Setup (root), per receiver, in fresh uniquely named namespaces deleted in ``finally``:

- a "source" BIRD announcing N static /26s out of ``POOL`` (``protocol static`` of ``route P
  blackhole;`` lines, started ``disabled``; iBGP AS 64512 with ``next hop self``), on a veth to
- (a) a pycalico node: the real agent subprocess (``python -m felix.agent``) with a real etcd in its
  namespace holding the IPPool and a Node resource for the source BIRD, so the agent's full mesh
  peers with it (BGPPeer is not wired into the agent); or
- (b) a receiving BIRD with a kernel protocol exporting to its namespace's main table;
- (c) "ExaBGP receiving alone": ExaBGP started as the speaker starts it (same rendered config,
  environment and entry point) whose API process only drains its output into a file (``cat``); the
  bench counts the prefixes in that file as they arrive. This is the design's floor: ExaBGP parsing
  the UPDATEs, with nobody programming anything.

t0 = ``birdc enable st`` once the session is Established (no connect delay in the figure); learn
ends when all N prefixes are in the receiver's kernel; then t0 = ``birdc disable st`` and withdraw
ends when none is left. The kernel is watched through route notifications (a set of destinations
of the receiver's proto in table main, so a replace is not counted twice), and the end is confirmed
with a dump. The watcher shares the 2 cores with what it measures, so it is kept cheap: it reads
what has queued every ``DRAIN_EVERY`` (1 ms; a wake-up per notification cost more than the rest),
one ``recv_into`` and one fixed-offset unpack per notification (the attribute walk only for an
unusual layout); the end is stamped when the reader folds in the last change (at most ~1 ms late,
for every receiver alike). Its own CPU per phase is in the JSON.

JSON keys: prefixes, learn_s, withdraw_s, learn_bird_s, withdraw_bird_s, ratio_learn_vs_bird,
watch_learn_cpu_s / watch_withdraw_cpu_s (the watcher thread's CPU in each phase of the pycalico
receiver; watch_learn_bird_cpu_s / watch_withdraw_bird_cpu_s: of the BIRD one),
ratio_withdraw_vs_bird, learn_exabgp_alone_s, withdraw_exabgp_alone_s, exabgp_alone_cpu_s,
ratio_learn_vs_exabgp_alone, ratio_withdraw_vs_exabgp_alone, agent_cpu_s / exabgp_cpu_s (user+system CPU spent during the learn and
withdraw phases; agent_sys_cpu_s: the agent's system part, mostly the kernel taking its routes; per phase: agent_learn_cpu_s, agent_withdraw_cpu_s, exabgp_learn_cpu_s,
exabgp_withdraw_cpu_s), agent_rss_mb / exabgp_rss_mb (peak: VmHWM over the whole run) and their sum
agent_exabgp_rss_mb, agent_idle_rss_mb / exabgp_idle_rss_mb (RSS before the learn: what 0 routes
cost), agent_learned_rss_mb / exabgp_learned_rss_mb (RSS once all N are in the kernel),
agent_gc_pause_ms / agent_gc_collections (the agent's cyclic-GC pauses over the learn and the
withdraw, total and collections by generation), load_avg_1m (after the pycalico run), goal_ratio
(vs BIRD), goal_ratio_exabgp_alone, goal_agent_exabgp_rss_mb.
``--profile FILE`` runs the agent under cProfile (written when it stops; slower).
PNG: ``bench/out/bgp_convergence.png`` (routes in the kernel over time, both receivers).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import select
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

from bench.common import emit, step_figure

POOL = IPv4Network("10.128.0.0/9")  # 131072 /26s
ASN = 64512
RECEIVER, SOURCE = "10.98.0.1", "10.98.0.2"  # mesh rule: the lower address connects
AGENT_PROTO = 80
BIRD_PROTO = 12  # RTPROT_BIRD
TIMEOUT = 600.0
DRAIN_EVERY = 0.001  # KernelWatch: seconds between two reads of the queued notifications
CLK_TCK = os.sysconf("SC_CLK_TCK")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.bgp_convergence", description=__doc__)
    p.add_argument("--prefixes", type=int, default=100_000)
    p.add_argument("--profile", type=Path, default=None, help="cProfile output of the agent")
    p.add_argument("--skip-bird", action="store_true", help="no BIRD receiver")
    p.add_argument("--skip-exabgp-alone", action="store_true", help="no ExaBGP-alone receiver")
    a = p.parse_args(argv)
    if os.geteuid() != 0:
        p.error("needs root (network namespaces)")
    if not 0 < a.prefixes <= POOL.num_addresses // 64:
        p.error(f"--prefixes: 1 .. {POOL.num_addresses // 64}")
    result: dict = {"prefixes": a.prefixes, "goal_ratio": 2.0, "goal_ratio_exabgp_alone": 1.25,
                    "goal_agent_exabgp_rss_mb": 120}
    series: dict[str, tuple] = {}
    with tempfile.TemporaryDirectory(prefix="bench-bgp-") as tmp:
        if not a.skip_bird:
            bird = run_bird_receiver(a.prefixes, Path(tmp) / "bird")
            result.update(learn_bird_s=bird["learn_s"], withdraw_bird_s=bird["withdraw_s"],
                          watch_learn_bird_cpu_s=bird["watch_learn_cpu_s"],
                          watch_withdraw_bird_cpu_s=bird["watch_withdraw_cpu_s"])
            series["BIRD -> BIRD -> kernel"] = bird["series"]
        if not a.skip_exabgp_alone:
            alone = run_exabgp_alone(a.prefixes, Path(tmp) / "exabgp")
            result.update(learn_exabgp_alone_s=alone["learn_s"], withdraw_exabgp_alone_s=alone["withdraw_s"],
                          exabgp_alone_cpu_s=alone["cpu_s"])
            series["BIRD -> ExaBGP alone (parsed, not programmed)"] = alone["series"]
        ours = run_pycalico(a.prefixes, Path(tmp) / "pycalico", a.profile)
        series["BIRD -> pycalico (ExaBGP + agent) -> kernel"] = ours.pop("series")
        result.update(ours)
    if not a.skip_bird:
        result["ratio_learn_vs_bird"] = round(result["learn_s"] / result["learn_bird_s"], 2)
        result["ratio_withdraw_vs_bird"] = round(result["withdraw_s"] / result["withdraw_bird_s"], 2)
    if not a.skip_exabgp_alone:
        for phase in ("learn", "withdraw"):
            result[f"ratio_{phase}_vs_exabgp_alone"] = round(
                result[f"{phase}_s"] / result[f"{phase}_exabgp_alone_s"], 2)
    plot(result, series)
    emit(result)
    return 0


# -- the two receivers -----------------------------------------------------------------------------


def run_bird_receiver(n: int, work: Path) -> dict:
    work.mkdir()
    with namespaces("bb") as (src_ns, dst_ns), Procs() as procs:
        source = Bird.source(procs, src_ns, work / "src", n)
        Bird(procs, dst_ns, work / "dst", RECEIVER_BIRD_CONF.format(us=RECEIVER, peer=SOURCE))
        source.wait_established()
        with KernelWatch(dst_ns, BIRD_PROTO) as watch:
            return measure(source, watch, n)


def run_exabgp_alone(n: int, work: Path) -> dict:
    from bgp import exabgp_conf, exabgp_main
    from bgp.peers import PeerSpec
    from bgp.speaker import exabgp_env

    work.mkdir()
    out, drain = work / "api.out", work / "drain"
    # cat into a file; fd 3 keeps the pipe to ExaBGP open (ExaBGP drops a process whose stdout
    # hangs up, which is why `dd of=` cannot do it: dd reopens its stdout as the file).
    drain.write_text(f"#!/bin/sh\nexec cat 3>&1 >{out}\n")
    drain.chmod(0o700)
    cfg = exabgp_conf.ExaBGPConfig(
        router_id=IPv4Address(RECEIVER), local_address=IPv4Address(RECEIVER),
        relay_command=(str(drain),),
        peers=frozenset({PeerSpec(IPv4Address(SOURCE), ASN, ASN, False, "node-to-node mesh",
                                  "bird-source")}))
    conf = work / "exabgp.conf"
    conf.write_text(exabgp_conf.render(cfg))
    env = {**os.environ, **exabgp_env(IPv4Address(RECEIVER), 179)}
    with namespaces("be") as (src_ns, dst_ns), Procs() as procs:
        source = Bird.source(procs, src_ns, work / "src", n)
        exabgp = procs.add(subprocess.Popen(
            ["ip", "netns", "exec", dst_ns, sys.executable, exabgp_main.__file__, "server", str(conf)],
            env=env, cwd=work, stdout=open(work / "exabgp.log", "wb"), stderr=subprocess.STDOUT))
        source.wait_established(timeout=60)
        watch = ApiOutputWatch(out)
        time.sleep(1.0)  # End-of-RIB both ways, as for the pycalico node
        cpu0 = cpu_s(exabgp.pid)
        t0 = time.monotonic()
        source.cli("enable", "st")
        learn = watch.until(n, t0)
        t1 = time.monotonic()
        source.cli("disable", "st")
        withdraw = watch.until(2 * n, t1)
        cpu = round(cpu_s(exabgp.pid) - cpu0, 2)
        print(f"exabgp alone: learn {learn:.2f} s, withdraw {withdraw:.2f} s", flush=True)
        series = [(t, c if c <= n else 2 * n - c) for t, c in watch.series]
        return {"learn_s": round(learn, 2), "withdraw_s": round(withdraw, 2), "cpu_s": cpu,
                "series": (t0, series)}


class ApiOutputWatch:
    """Counts the IPv4 NLRIs ExaBGP wrote to its API process (a file): announced and withdrawn
    ones alike (``"P/26"``, compact JSON), so a withdrawal of N ends at 2N."""

    def __init__(self, path: Path) -> None:
        self.path, self.pos, self.seen, self.tail = path, 0, 0, b""
        self.series: list[tuple[float, int]] = []

    def poll(self) -> int:
        with contextlib.suppress(FileNotFoundError), open(self.path, "rb") as f:
            f.seek(self.pos)
            data = f.read()
            self.pos += len(data)
            lines = (self.tail + data).split(b"\n")
            self.tail = lines.pop()  # a line not finished yet
            for line in lines:
                if b'"update"' in line:
                    self.seen += line.count(b'/26"')
        return self.seen

    def until(self, count: int, t0: float) -> float:
        deadline = t0 + TIMEOUT
        while time.monotonic() < deadline:
            before = self.seen
            if self.poll() != before:
                self.series.append((time.monotonic(), self.seen))
            if self.seen >= count:
                return self.series[-1][0] - t0
            time.sleep(0.002)
        raise SystemExit(f"exabgp alone: {self.seen} prefixes, not {count}, after {TIMEOUT:.0f}s")


def run_pycalico(n: int, work: Path, profile: Path | None) -> dict:
    from lab.netns import in_netns
    from tests.helpers import free_port

    work.mkdir()
    with namespaces("bp") as (src_ns, node_ns), Procs() as procs:
        url = f"http://127.0.0.1:{free_port()}"
        start_etcd_in(procs, node_ns, url, work / "etcd")
        in_netns(node_ns, seed, url)
        source = Bird.source(procs, src_ns, work / "src", n)
        agent = start_agent(procs, node_ns, url, work, profile)
        source.wait_established(timeout=60)
        exabgp = wait(lambda: exabgp_pid(agent.pid), 10, "the ExaBGP child")
        time.sleep(1.0)  # End-of-RIB both ways and the agent's reconcile after it
        cpu0 = cpu_s(agent.pid), cpu_s(exabgp), cpu_s(agent.pid, system_only=True)
        idle_rss = hwm_mb(agent.pid, "VmRSS"), hwm_mb(exabgp, "VmRSS")
        gc0 = agent_gc(work)
        with KernelWatch(node_ns, AGENT_PROTO) as watch:
            out = measure(source, watch, n, {"agent": agent.pid, "exabgp": exabgp})
        gc1 = agent_gc(work)
        out["agent_gc_pause_ms"] = round(gc1["pause_total_ms"] - gc0["pause_total_ms"], 1)
        out["agent_gc_collections"] = [a - b for a, b in zip(gc1["by_generation"], gc0["by_generation"])]
        out["agent_cpu_s"] = round(cpu_s(agent.pid) - cpu0[0], 2)
        out["exabgp_cpu_s"] = round(cpu_s(exabgp) - cpu0[1], 2)
        out["agent_sys_cpu_s"] = round(cpu_s(agent.pid, system_only=True) - cpu0[2], 2)  # the kernel's part
        out["agent_rss_mb"] = hwm_mb(agent.pid)
        out["exabgp_rss_mb"] = hwm_mb(exabgp)
        out["agent_exabgp_rss_mb"] = round(out["agent_rss_mb"] + out["exabgp_rss_mb"], 1)
        out["agent_idle_rss_mb"], out["exabgp_idle_rss_mb"] = idle_rss  # before the learn: the base
        out["load_avg_1m"] = round(os.getloadavg()[0], 2)  # a shared machine: other work skews every figure
        agent.send_signal(signal.SIGTERM)  # a clean exit writes the profile
        agent.wait(timeout=60)
        return out


def measure(source: Bird, watch: KernelWatch, n: int, cpu: dict[str, int] | None = None) -> dict:
    """Learn and withdraw times, the watcher's own CPU seconds in each phase (``watch_learn_cpu_s``,
    ``watch_withdraw_cpu_s``); with ``cpu`` ({name: pid}), each process's CPU seconds in each
    phase too (``<name>_learn_cpu_s``, ``<name>_withdraw_cpu_s``)."""
    if watch.count() != 0:
        raise SystemExit("the receiver's kernel has routes of its proto before the start")
    cpu = cpu or {}
    before = {name: cpu_s(pid) for name, pid in cpu.items()}
    watch0 = watch.cpu()
    t0 = time.monotonic()
    source.cli("enable", "st")
    learn = watch.until(n, t0)
    middle = {name: cpu_s(pid) for name, pid in cpu.items()}
    watch1 = watch.cpu()
    held = {name: hwm_mb(pid, "VmRSS") for name, pid in cpu.items()}  # with all N routes held
    t1 = time.monotonic()
    source.cli("disable", "st")
    withdraw = watch.until(0, t1)
    after = {name: cpu_s(pid) for name, pid in cpu.items()}
    watch2 = watch.cpu()
    print(f"{watch.ns}: learn {learn:.2f} s, withdraw {withdraw:.2f} s; {watch.walked} "
          "notifications not in the usual layout", flush=True)
    out = {"learn_s": round(learn, 2), "withdraw_s": round(withdraw, 2),
           "watch_learn_cpu_s": round(watch1 - watch0, 2),
           "watch_withdraw_cpu_s": round(watch2 - watch1, 2), "series": (t0, list(watch.series))}
    for name in cpu:
        out[f"{name}_learn_cpu_s"] = round(middle[name] - before[name], 2)
        out[f"{name}_withdraw_cpu_s"] = round(after[name] - middle[name], 2)
        out[f"{name}_learned_rss_mb"] = held[name]
    return out


# -- BIRD ------------------------------------------------------------------------------------------

SOURCE_BIRD_CONF = """\
router id {us};
log "{log}" {{ warning, error, fatal }};
protocol device {{}}
protocol static st {{
    ipv4;
    disabled;
{routes}
}}
protocol bgp peer {{
    local {us} as {asn};
    neighbor {peer} as {asn};
    direct;
    passive on;              # the mesh rule: the higher address only accepts
    hold time 9;
    ipv4 {{
        import none;
        export where source = RTS_STATIC;
        next hop self;       # iBGP: a static blackhole has no next hop of its own
    }};
}}
"""

RECEIVER_BIRD_CONF = """\
router id {us};
protocol device {{}}
protocol kernel {{
    ipv4 {{ import none; export all; }};
}}
protocol bgp peer {{
    local {us} as 64512;
    neighbor {peer} as 64512;
    direct;
    connect delay time 1;
    hold time 9;
    ipv4 {{ import all; export none; }};
}}
"""


def prefixes(n: int) -> list[IPv4Network]:
    base = int(POOL.network_address)
    return [IPv4Network((base + 64 * i, 26)) for i in range(n)]


class Bird:
    def __init__(self, procs: Procs, ns: str, work: Path, conf_text: str) -> None:
        work.mkdir()
        self.sock, conf = work / "bird.ctl", work / "bird.conf"
        conf.write_text(conf_text)
        self.proc = procs.add(subprocess.Popen(
            ["ip", "netns", "exec", ns, "bird", "-f", "-c", str(conf), "-s", str(self.sock)],
            stdout=subprocess.DEVNULL, stderr=open(work / "bird.stderr", "wb")))
        wait(lambda: self.proc.poll() is None and self.sock.exists(), 20, f"bird in {ns}")

    @classmethod
    def source(cls, procs: Procs, ns: str, work: Path, n: int) -> Bird:
        routes = "\n".join(f"    route {p} blackhole;" for p in prefixes(n))
        return cls(procs, ns, work, SOURCE_BIRD_CONF.format(
            us=SOURCE, peer=RECEIVER, asn=ASN, routes=routes, log=work / "bird.log"))

    def cli(self, *args: str) -> str:
        out = subprocess.run(["birdc", "-s", str(self.sock), *args], capture_output=True, text=True)
        return out.stdout

    def wait_established(self, timeout: float = 30.0) -> None:
        wait(lambda: "Established" in self.cli("show", "protocols", "peer"), timeout,
             "the source's BGP session")


# -- the receiver's kernel -------------------------------------------------------------------------


class KernelWatch:
    """The destinations of one proto in a namespace's main table, from route notifications.

    A notification socket with a 256 MiB buffer (root): 100k events never overflow it. Should the
    kernel drop some anyway (ENOBUFS), the count falls back to a dump every 0.1 s.

    The reader shares the machine with what it measures, so it costs little per notification: one
    ``recv_into`` (the kernel sends each notification alone), one unpack of the fixed header, a set
    operation, no lock; ``until`` reads ``state`` (count, time of the last change), one tuple
    written whole. Its CPU time is ``cpu()`` (the reader thread's own clock).
    """

    def __init__(self, ns: str, proto: int) -> None:
        self.ns, self.proto = ns, proto
        # ``length << 32 | address`` of each destination (felix.rtnl.route_key's layout, the
        # address in the byte order the kernel sends: only counted, so never converted): the
        # address in the low bits, which the set indexes by
        self.dsts: set[int] = set()
        self.series: list[tuple[float, int]] = []
        self.state = (0, time.monotonic())  # (len(dsts), when it last changed)
        self.lossy = False
        self.stopping = False
        self.buf = bytearray(64 * 1024)
        self.walked = 0  # notifications read by the attribute walk (not the usual layout)

    def __enter__(self) -> KernelWatch:
        from felix import rtnl

        self.events = rtnl.RtnlSocket(self.ns, groups=rtnl.RTMGRP_IPV4_ROUTE, rcvbuf=256 << 20)
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopping = True
        self.thread.join()
        self.events.close()

    def cpu(self) -> float:
        """CPU seconds the reader thread has used so far."""
        return time.clock_gettime(time.pthread_getcpuclockid(self.thread.ident))

    def _read(self) -> None:
        poller = select.poll()
        poller.register(self.events.sock, select.POLLIN)
        while not self.stopping:
            if poller.poll(200):
                self._drain()
                time.sleep(DRAIN_EVERY)  # let notifications queue: a wake-up each costs more

    def _drain(self) -> None:
        """Fold every queued notification into ``dsts``; stamp ``state`` if any was ours."""
        buf = self.buf
        recv_into, unpack, dsts, proto = self.events.sock.recv_into, _EVENT.unpack_from, self.dsts, self.proto
        add, discard, touched = dsts.add, dsts.discard, False
        while True:
            try:
                size = recv_into(buf, 0, socket.MSG_DONTWAIT)
            except BlockingIOError:
                break
            except OSError as err:  # ENOBUFS: events were lost
                print(f"{self.ns}: route events lost ({err}); counting by dumps", flush=True)
                self.lossy = True
                continue
            length, mtype, dst_len, table, rproto, dst_hdr, dst = unpack(buf)
            if length == size and dst_hdr == _DST_HDR and size >= _EVENT.size:
                # one route with RTA_DST at its usual place (after RTA_TABLE): the common case
                if table == 254 and rproto == proto:
                    if mtype == 24:
                        add(dst_len << 32 | dst)
                        touched = True
                    elif mtype == 25:
                        discard(dst_len << 32 | dst)
                        touched = True
            else:
                self.walked += 1
                touched |= self._apply(bytes(buf[:size]))
        if touched:
            self.state = (len(dsts), now := time.monotonic())
            if not self.series or now - self.series[-1][0] >= 0.01:
                self.series.append((now, len(dsts)))

    def _apply(self, buf: bytes) -> bool:
        """Fold a buffer of RTM_NEWROUTE/RTM_DELROUTE in any layout into ``dsts`` (the attributes
        walked); whether any was ours."""
        off, size, touched = 0, len(buf), False
        while off + 28 <= size:
            length, mtype, dst_len, table, proto = _EVENT_HEAD.unpack_from(buf, off)
            if length < 16:
                break
            if mtype in (24, 25) and table == 254 and proto == self.proto:
                key = dst_len << 32 | _dst(buf, off + 28, off + length)
                (self.dsts.add if mtype == 24 else self.dsts.discard)(key)
                touched = True
            off += (length + 3) & ~3
        return touched

    def until(self, n: int, t0: float) -> float:
        """Seconds from t0 until exactly n destinations were seen (a dump agrees)."""
        deadline = t0 + TIMEOUT
        while time.monotonic() < deadline:
            time.sleep(0.05 if not self.lossy else 0.1)  # the reader stamps the time, not this poll
            seen, when = self.state
            if self.lossy and self.count() == n:
                when = time.monotonic()
                self.series.append((when, n))
                return when - t0
            if seen == n and self.count() == n:
                self.series.append((when, n))
                return when - t0
        raise SystemExit(f"{self.ns}: {self.count()} routes of proto {self.proto}, not {n}, "
                         f"after {TIMEOUT:.0f}s")

    def count(self) -> int:
        from felix import rtnl

        sock = rtnl.RtnlSocket(self.ns)
        try:
            return len(sock.dump_routes(table=254, proto=self.proto).ours)
        finally:
            sock.close()


# nlmsg_len, nlmsg_type; rtm_dst_len, rtm_table, rtm_protocol; then, in the layout the kernel gives an
# IPv4 route notification (fib_dump_info: RTA_TABLE first, then RTA_DST), RTA_DST's header as a u32
# and the destination (network order read natively: a key, not an address)
_EVENT = struct.Struct("=IH11xBxxBB14xII")
_EVENT_HEAD = struct.Struct("=IH11xBxxBB")
_DST_HDR = struct.unpack("=I", struct.pack("=HH", 8, 1))[0]  # RTA_DST, 8 bytes


def _dst(buf: bytes, pos: int, end: int) -> int:
    while pos + 4 <= end:
        alen, atype = struct.unpack_from("=HH", buf, pos)
        if alen < 4:
            break
        if atype == 1:  # RTA_DST
            return struct.unpack_from("=I", buf, pos + 4)[0]  # as the fast path reads it
        pos += (alen + 3) & ~3
    return 0  # the default route


# -- the pycalico node -----------------------------------------------------------------------------


def seed(url: str) -> None:
    """The pool, and the source BIRD as a mesh node (so the agent peers with it)."""
    import datastore
    from crds import load

    ds = datastore.connect("etcdv3", etcd_endpoints=url)
    v3 = "projectcalico.org/v3"
    for doc in (
        {"kind": "IPPool", "metadata": {"name": "bench-pool"},
         "spec": {"cidr": str(POOL), "blockSize": 26}},
        {"kind": "Node", "metadata": {"name": "bird-source"},
         "spec": {"bgp": {"ipv4Address": f"{SOURCE}/24"}}},
    ):
        ds.create(load({"apiVersion": v3, **doc}))
    ds.close()


def start_etcd_in(procs: Procs, ns: str, url: str, data_dir: Path) -> None:
    from lab.netns import in_netns
    from tests.helpers import etcd_healthy, free_port

    procs.add(subprocess.Popen(
        ["ip", "netns", "exec", ns, "etcd", "--data-dir", str(data_dir),
         "--listen-client-urls", url, "--advertise-client-urls", url,
         "--listen-peer-urls", f"http://127.0.0.1:{free_port()}", "--log-level", "error"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    wait(lambda: in_netns(ns, etcd_healthy, url), 20, "etcd in the node namespace")


def start_agent(procs: Procs, ns: str, url: str, work: Path, profile: Path | None) -> subprocess.Popen:
    python = ([sys.executable, "-m", "cProfile", "-o", str(profile.resolve())] if profile
              else [sys.executable])
    # The source BIRD's N /26s are recorded in no IPAM block (100k blocks in etcd would be 6.4M
    # pods' worth of IPAM): origin validation would drop them all, so it is off here (what it
    # adds per route when on: one or two integer dict lookups).
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
           "PYCALICO_BGP_ORIGIN_VALIDATION": "false"}
    return procs.add(subprocess.Popen(
        ["ip", "netns", "exec", ns, *python, "-m", "felix.agent", "--name", "bench-node",
         "--ip", f"{RECEIVER}/24", "--etcd-endpoints", url, "--run-dir", str(work / "run"),
         "--health-port", "0"],
        stdout=open(work / "agent.log", "wb"), stderr=subprocess.STDOUT, env=env))


def agent_gc(work: Path) -> dict:
    """The agent's cyclic-GC pauses so far (its status socket: ``node status``'s ``gc``)."""
    from felix.status import query

    return query("bench-node", "status", timeout=30, path=work / "run" / "status.sock")["gc"]


def exabgp_pid(parent: int) -> int | None:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if stat_fields(int(entry.name))[1] == str(parent) and \
                        b"exabgp" in (entry / "cmdline").read_bytes():
                    return int(entry.name)
    return None


def stat_fields(pid: int) -> list[str]:
    """/proc/PID/stat after the command name: [state, ppid, ...] (field 3 onwards)."""
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()


def cpu_s(pid: int, system_only: bool = False) -> float:
    fields = stat_fields(pid)  # utime, stime: fields 14, 15
    return (int(fields[12]) + (0 if system_only else int(fields[11]))) / CLK_TCK


def hwm_mb(pid: int, field: str = "VmHWM") -> float:
    """Peak RSS (``VmHWM``), or another /proc/PID/status size field (``VmRSS``: now), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return round(int(line.split()[1]) / 1024, 1)
    raise RuntimeError(f"no {field} for {pid}")


# -- plumbing --------------------------------------------------------------------------------------


class Procs:
    """The processes this benchmark started, killed by their PID on exit."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []

    def add(self, proc: subprocess.Popen) -> subprocess.Popen:
        self.procs.append(proc)
        return proc

    def __enter__(self) -> Procs:
        return self

    def __exit__(self, *exc) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


@contextlib.contextmanager
def namespaces(short: str) -> Iterator[tuple[str, str]]:
    """(source, receiver): two fresh namespaces joined by a veth, SOURCE and RECEIVER on eth0."""
    from tests.helpers import veth_between

    tag = secrets.token_hex(3)
    src, dst = f"bench-{short}s-{tag}", f"bench-{short}r-{tag}"
    try:
        for ns in (src, dst):
            subprocess.run(["ip", "netns", "add", ns], check=True)
            subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        veth_between(src, "eth0", f"{SOURCE}/24", dst, "eth0", f"{RECEIVER}/24")
        yield src, dst
    finally:
        for ns in (src, dst):
            subprocess.run(["ip", "netns", "delete", ns], capture_output=True)


def wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise SystemExit(f"timed out after {timeout:.0f}s waiting for {what}")


def plot(result: dict, series: dict[str, tuple]) -> Path:
    title = f"{result['prefixes']} /26 prefixes: learn {result['learn_s']} s, withdraw {result['withdraw_s']} s"
    if "learn_bird_s" in result:
        title += f" (BIRD {result['learn_bird_s']} s / {result['withdraw_bird_s']} s)"
    if "learn_exabgp_alone_s" in result:
        title += f"\n(ExaBGP alone {result['learn_exabgp_alone_s']} s / {result['withdraw_exabgp_alone_s']} s)"
    return step_figure(series, title=title, name="bgp_convergence.png",
                       xlabel="seconds since `birdc enable st` (the withdrawal follows the learn)",
                       ylabel="routes in the receiver's kernel")


if __name__ == "__main__":
    sys.exit(main())
