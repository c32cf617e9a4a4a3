"""``python -m bench.route_reflector --clients 50 --blocks-per-client 20``: a route reflector with C
clients, each announcing B /26 blocks; how long until every client's kernel holds every other
client's blocks, through (a) a pycalico node as the reflector and (b) BIRD as the reflector, in
the same run (the anchor).

Setup (root), per reflector, in fresh uniquely named namespaces deleted in ``finally``:

- a fabric namespace with a bridge ``br0`` carrying the reflector's address (``RR``), and C client
  namespaces joined to it by veths, so a reflected next hop (the originating client) is on-link
  for every client, as on a Calico node network;
- each client is a BIRD 2 (iBGP AS 64512, ``passive on``: the reflector has the lowest address
  and connects, as pycalico's peer rule has it) with a ``protocol static st`` of its B blackhole
  blocks, started ``disabled``, and a kernel protocol installing what it learns by BGP in its
  namespace's main table (proto bird);
- (a) the real agent (``python -m felix.agent``) in the fabric namespace with a real etcd there
  holding what the source article's setup holds: the IPPool, the mesh off, the reflector's Node
  with ``routeReflectorClusterID`` 244.0.0.1 and the label route-reflector=true, a Node per client,
  and the BGPPeer (nodeSelector all(), peerSelector route-reflector == 'true'); the agent makes
  the clients its route-reflector clients from that, as in a cluster;
- (b) a BIRD with ``rr client`` and ``rr cluster id 244.0.0.1`` on one session per client.

Once every client's session is Established, t0 = ``birdc enable st`` on every client at once;
converge ends when every client's kernel holds the (C-1)*B blocks of the others. Then t1 =
``birdc disable st`` on the first client; withdraw ends when no other client holds its blocks.
Kernels are watched through route notifications (one socket per client namespace, one thread) and
the end is confirmed with a dump of each.

JSON keys: clients, blocks_per_client, converge_s, withdraw_s, converge_bird_s,
withdraw_bird_s, ratio_converge_vs_bird, ratio_withdraw_vs_bird, sessions_up_s /
sessions_up_bird_s (from the start of the BGP daemon, ExaBGP or BIRD, until every session is
Established: the agent's own start-up and etcd are not in it), agent_cpu_s / exabgp_cpu_s /
bird_rr_cpu_s (user+system CPU during converge and withdraw), agent_rss_mb / exabgp_rss_mb /
reflector_rss_mb (agent + ExaBGP) / bird_rr_rss_mb (peak, VmHWM), goal_ratio, exabgp_as_shipped.
``--exabgp-as-shipped`` runs our reflector's ExaBGP without ``bgp/exabgp_share.py`` (a deep copy of
every route per peer, as ExaBGP ships: the "before" figure).
PNG: ``bench/out/route_reflector.png`` (blocks in all clients' kernels over time, both reflectors).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import selectors
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from ipaddress import IPv4Network
from pathlib import Path

from bench.bgp_convergence import (_EVENT_HEAD, CLK_TCK, Procs, _dst, cpu_s, exabgp_pid, hwm_mb,
                                   start_etcd_in, stat_fields, wait)
from bench.common import emit, step_figure

POOL = IPv4Network("10.192.0.0/12")  # 16384 /26 blocks
ASN = 64512
NET = "10.97.0"
RR = f"{NET}.1"  # the lowest address: the reflector connects to every client
CLUSTER_ID = "244.0.0.1"
BIRD_PROTO = 12  # RTPROT_BIRD: what the clients' kernel protocols write
TIMEOUT = 300.0
GOAL_RATIO = 2.0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.route_reflector", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", type=int, default=50)
    p.add_argument("--blocks-per-client", type=int, default=20)
    p.add_argument("--skip-bird", action="store_true", help="only the pycalico reflector")
    p.add_argument("--exabgp-as-shipped", action="store_true",
                   help="our reflector's ExaBGP without bgp/exabgp_share.py")
    a = p.parse_args(argv)
    if os.geteuid() != 0:
        p.error("needs root (network namespaces)")
    if not 2 <= a.clients <= 250:
        p.error("--clients: 2 .. 250")
    if not 1 <= a.blocks_per_client or a.clients * a.blocks_per_client > POOL.num_addresses // 64:
        p.error(f"--blocks-per-client: at least 1, and clients x blocks at most {POOL.num_addresses // 64}")
    result: dict = {"clients": a.clients, "blocks_per_client": a.blocks_per_client,
                    "goal_ratio": GOAL_RATIO, "exabgp_as_shipped": a.exabgp_as_shipped}
    series: dict[str, tuple] = {}
    with tempfile.TemporaryDirectory(prefix="bench-rr-") as tmp:
        if not a.skip_bird:
            bird = run(a.clients, a.blocks_per_client, Path(tmp) / "bird", BirdReflector)
            series["BIRD reflector"] = bird.pop("series")
            result.update({f"{k[:-2]}_bird_s" if k.endswith("_s") and "cpu" not in k else k: v
                           for k, v in bird.items()})
        ours = run(a.clients, a.blocks_per_client, Path(tmp) / "pycalico",
                   lambda *args: AgentReflector(*args, as_shipped=a.exabgp_as_shipped))
        series["pycalico reflector (agent + ExaBGP)"] = ours.pop("series")
        result.update(ours)
    if not a.skip_bird:
        for m in ("converge", "withdraw"):
            result[f"ratio_{m}_vs_bird"] = round(result[f"{m}_s"] / result[f"{m}_bird_s"], 2)
    plot(result, series)
    emit(result)
    return 0


def run(c: int, b: int, work: Path, reflector_type) -> dict:
    work.mkdir()
    blocks = [[IPv4Network((int(POOL.network_address) + 64 * (i * b + j), 26)) for j in range(b)]
              for i in range(c)]
    clients = [f"{NET}.{i + 2}" for i in range(c)]
    with fabric(c) as (fabric_ns, client_ns), Procs() as procs:
        birds = [Bird(procs, ns, work / f"c{i}", CLIENT_CONF.format(
                     us=addr, rr=RR, asn=ASN, log=work / f"c{i}" / "bird.log",
                     routes="\n".join(f"    route {p} blackhole;" for p in blocks[i])))
                 for i, (ns, addr) in enumerate(zip(client_ns, clients))]
        reflector = reflector_type(procs, fabric_ns, work / "rr", clients, blocks)
        wait_established(birds)
        sessions_up = time.clock_gettime(time.CLOCK_BOOTTIME) - started_s(reflector.daemon_pid)
        reflector.settle()
        cpu0 = reflector.cpu()
        with KernelWatch(client_ns, BIRD_PROTO) as watch:
            if any(watch.counts()):
                raise SystemExit("a client's kernel has BGP routes before the start")
            t0 = time.monotonic()
            parallel([bd.cli_args("enable", "st") for bd in birds])
            converge = watch.until([(c - 1) * b] * c, t0)
            t1 = time.monotonic()
            birds[0].cli("disable", "st")
            withdraw = watch.until([(c - 1) * b] + [(c - 2) * b] * (c - 1), t1)
        cpu = [round(x - y, 2) for x, y in zip(reflector.cpu(), cpu0)]
        print(f"{reflector.name}: sessions {sessions_up:.2f} s, converge {converge:.2f} s, "
              f"withdraw {withdraw:.3f} s, cpu {cpu}", flush=True)
        out = {"sessions_up_s": round(sessions_up, 2), "converge_s": round(converge, 2),
               "withdraw_s": round(withdraw, 3), "series": (t0, list(watch.series))}
        out.update(reflector.figures(cpu))
        return out


def wait_established(birds: list[Bird]) -> None:
    """Until every client's session is Established (each asked only until it is)."""
    down = list(birds)

    def check() -> bool:
        down[:] = [bd for bd in down if "Established" not in bd.cli("show", "protocols", "reflector")]
        return not down
    wait(check, TIMEOUT, "every client's session to the reflector")


def started_s(pid: int) -> float:
    """When ``pid`` started, in CLOCK_BOOTTIME seconds (/proc/PID/stat field 22, in clock ticks)."""
    return int(stat_fields(pid)[19]) / CLK_TCK


def parallel(argvs: list[list[str]]) -> None:
    running = [subprocess.Popen(argv, stdout=subprocess.DEVNULL) for argv in argvs]
    for proc in running:
        proc.wait()


# -- the clients -----------------------------------------------------------------------------------

CLIENT_CONF = """\
router id {us};
log "{log}" {{ warning, error, fatal }};
protocol device {{}}
protocol kernel {{
    ipv4 {{ import none; export where source = RTS_BGP; }};
}}
protocol static st {{
    ipv4;
    disabled;
{routes}
}}
protocol bgp reflector {{
    local {us} as {asn};
    neighbor {rr} as {asn};
    direct;
    passive on;
    hold time 60;
    ipv4 {{
        import all;
        export where source = RTS_STATIC;
        next hop self;       # iBGP: a static blackhole has no next hop of its own
    }};
}}
"""


class Bird:
    def __init__(self, procs: Procs, ns: str, work: Path, conf_text: str) -> None:
        work.mkdir(mode=0o700)
        self.sock, conf = work / "bird.ctl", work / "bird.conf"
        conf.write_text(conf_text)
        self.proc = procs.add(subprocess.Popen(
            ["ip", "netns", "exec", ns, "bird", "-f", "-c", str(conf), "-s", str(self.sock)],
            stdout=subprocess.DEVNULL, stderr=open(work / "bird.stderr", "wb")))
        wait(lambda: self.proc.poll() is None and self.sock.exists(), 20, f"bird in {ns}")

    def cli_args(self, *args: str) -> list[str]:
        return ["birdc", "-s", str(self.sock), *args]

    def cli(self, *args: str) -> str:
        return subprocess.run(self.cli_args(*args), capture_output=True, text=True).stdout


# -- the two reflectors ----------------------------------------------------------------------------

BIRD_RR_CONF = """\
router id {rr};
log "{log}" {{ warning, error, fatal }};
protocol device {{}}
template bgp client_t {{
    local {rr} as {asn};
    rr client;
    rr cluster id {cluster};
    direct;
    connect delay time 1;
    hold time 60;
    ipv4 {{ import all; export all; }};
}}
{sessions}
"""


class BirdReflector:
    name = "BIRD reflector"

    def __init__(self, procs: Procs, ns: str, work: Path, clients: list[str], _blocks) -> None:
        work.mkdir(mode=0o700)
        sessions = "\n".join(f"protocol bgp c{i} from client_t {{ neighbor {a} as {ASN}; }}"
                             for i, a in enumerate(clients))
        self.bird = Bird(procs, ns, work / "bird", BIRD_RR_CONF.format(
            rr=RR, asn=ASN, cluster=CLUSTER_ID, log=work / "bird.log", sessions=sessions))

        self.daemon_pid = self.bird.proc.pid

    def settle(self) -> None:
        pass

    def cpu(self) -> tuple[float]:
        return (cpu_s(self.bird.proc.pid),)

    def figures(self, cpu: list[float]) -> dict:
        return {"bird_rr_cpu_s": cpu[0], "bird_rr_rss_mb": hwm_mb(self.bird.proc.pid)}


class AgentReflector:
    name = "pycalico reflector"

    def __init__(self, procs: Procs, ns: str, work: Path, clients: list[str], blocks,
                 as_shipped: bool = False) -> None:
        from bgp.exabgp_share import ENV_SWITCH
        from lab.netns import in_netns
        from tests.helpers import free_port

        work.mkdir(mode=0o700)
        url = f"http://127.0.0.1:{free_port()}"
        start_etcd_in(procs, ns, url, work / "etcd")
        in_netns(ns, seed, url, clients, blocks)
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
        if as_shipped:
            env[ENV_SWITCH] = "0"  # the agent's environment is its ExaBGP's
        self.agent = procs.add(subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-m", "felix.agent", "--name", "bench-rr",
             "--ip", f"{RR}/24", "--etcd-endpoints", url, "--run-dir", str(work / "run"),
             "--health-port", "0"],
            stdout=open(work / "agent.log", "wb"), stderr=subprocess.STDOUT, env=env))
        self.exabgp = self.daemon_pid = wait(lambda: exabgp_pid(self.agent.pid), 60,
                                             "the agent's ExaBGP child")

    def settle(self) -> None:
        time.sleep(1.0)  # End-of-RIB both ways, and the agent's reconcile after it

    def cpu(self) -> tuple[float, float]:
        return cpu_s(self.agent.pid), cpu_s(self.exabgp)

    def figures(self, cpu: list[float]) -> dict:
        agent, exabgp = hwm_mb(self.agent.pid), hwm_mb(self.exabgp)
        return {"agent_cpu_s": cpu[0], "exabgp_cpu_s": cpu[1], "agent_rss_mb": agent,
                "exabgp_rss_mb": exabgp, "reflector_rss_mb": round(agent + exabgp, 1)}


def seed(url: str, clients: list[str], blocks: list[list[IPv4Network]]) -> None:
    """The source article's reflector setup, with the clients as Nodes and each client's blocks
    as IPAM blocks affine to it: the reflector's origin validation (bgp.policy) accepts a block
    only from the node IPAM says owns it, as in a cluster."""
    import datastore
    from crds import load

    ds = datastore.connect("etcdv3", etcd_endpoints=url)
    v3 = "projectcalico.org/v3"
    docs = [
        {"kind": "IPPool", "metadata": {"name": "bench-pool"},
         "spec": {"cidr": str(POOL), "blockSize": 26}},
        {"kind": "BGPConfiguration", "metadata": {"name": "default"},
         "spec": {"asNumber": ASN, "nodeToNodeMeshEnabled": False}},
        {"kind": "BGPPeer", "metadata": {"name": "peer-with-route-reflectors"},
         "spec": {"nodeSelector": "all()", "peerSelector": "route-reflector == 'true'"}},
        {"kind": "Node", "metadata": {"name": "bench-rr", "labels": {"route-reflector": "true"}},
         "spec": {"bgp": {"ipv4Address": f"{RR}/24", "routeReflectorClusterID": CLUSTER_ID}}},
        *({"kind": "Node", "metadata": {"name": f"client-{i}"},
           "spec": {"bgp": {"ipv4Address": f"{addr}/24"}}} for i, addr in enumerate(clients)),
        *({"kind": "IPAMBlock", "metadata": {"name": str(b).replace(".", "-").replace("/", "-")},
           "spec": {"cidr": str(b), "affinity": f"host:client-{i}"}}
          for i, own in enumerate(blocks) for b in own),
    ]
    for doc in docs:
        ds.create(load({"apiVersion": v3, **doc}))
    ds.close()


# -- the clients' kernels --------------------------------------------------------------------------


class KernelWatch:
    """Per client namespace, the destinations of one proto in its main table, from route
    notifications: one socket per namespace, one reader thread. Should a socket lose events
    (ENOBUFS), that namespace is counted by dumps from then on."""

    def __init__(self, namespaces: list[str], proto: int) -> None:
        self.namespaces, self.proto = namespaces, proto
        self.dsts: list[set[int]] = [set() for _ in namespaces]  # length << 32 | address (as bgp_convergence)
        self.lossy: set[int] = set()
        self.series: list[tuple[float, int]] = []
        self.changed = threading.Condition()
        self.last_change = time.monotonic()
        self.stopping = False

    def __enter__(self) -> KernelWatch:
        from felix import rtnl

        self.sel = selectors.DefaultSelector()
        self.socks = [rtnl.RtnlSocket(ns, groups=rtnl.RTMGRP_IPV4_ROUTE, rcvbuf=32 << 20)
                      for ns in self.namespaces]
        for i, s in enumerate(self.socks):
            s.sock.setblocking(False)
            self.sel.register(s.sock, selectors.EVENT_READ, i)
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopping = True
        self.thread.join()
        self.sel.close()
        for s in self.socks:
            s.close()

    def _read(self) -> None:
        while not self.stopping:
            touched = False
            for key, _ in self.sel.select(0.2):
                i = key.data
                try:
                    buf = self.socks[i].sock.recv(1 << 20)
                except BlockingIOError:
                    continue
                except OSError as err:  # ENOBUFS: events were lost
                    print(f"{self.namespaces[i]}: route events lost ({err}); counting by dumps",
                          flush=True)
                    self.lossy.add(i)
                    continue
                touched |= self._apply(i, buf)
            if touched:
                with self.changed:
                    self.last_change = now = time.monotonic()
                    if not self.series or now - self.series[-1][0] >= 0.01:
                        self.series.append((now, sum(len(d) for d in self.dsts)))
                    self.changed.notify_all()

    def _apply(self, i: int, buf: bytes) -> bool:
        off, size, touched = 0, len(buf), False
        while off + 28 <= size:
            length, mtype, dst_len, table, proto = _EVENT_HEAD.unpack_from(buf, off)
            if length < 16:
                break
            if mtype in (24, 25) and table == 254 and proto == self.proto:
                key = dst_len << 32 | _dst(buf, off + 28, off + length)
                (self.dsts[i].add if mtype == 24 else self.dsts[i].discard)(key)
                touched = True
            off += (length + 3) & ~3
        return touched

    def until(self, want: list[int], t0: float) -> float:
        """Seconds from t0 until every namespace held exactly its count (dumps agree)."""
        deadline = t0 + TIMEOUT
        while time.monotonic() < deadline:
            if not self.thread.is_alive():  # its traceback is on stderr: no point waiting on
                raise SystemExit("the route notification reader stopped (see the error above)")
            with self.changed:
                self.changed.wait(0.05)
                seen = [len(d) for d in self.dsts]
                when = self.last_change
            if self.lossy:
                if self.counts() == want:
                    when = time.monotonic()
                    self.series.append((when, sum(want)))
                    return when - t0
            elif seen == want and self.counts() == want:
                self.series.append((when, sum(want)))
                return when - t0
        raise SystemExit(f"clients' kernels: {self.counts()}, not {want}, after {TIMEOUT:.0f}s "
                         f"(route notifications counted {seen})")

    def counts(self) -> list[int]:
        from felix import rtnl

        out = []
        for ns in self.namespaces:
            sock = rtnl.RtnlSocket(ns)
            try:
                out.append(len(sock.dump_routes(table=254, proto=self.proto).ours))
            finally:
                sock.close()
        return out


# -- plumbing --------------------------------------------------------------------------------------


@contextlib.contextmanager
def fabric(c: int) -> Iterator[tuple[str, list[str]]]:
    """(fabric, clients): a bridge in the fabric namespace with RR on it, each client joined by a
    veth with its address on eth0."""
    tag = secrets.token_hex(3)
    fab, clients = f"bench-rrf-{tag}", [f"bench-rr{i}-{tag}" for i in range(c)]
    made: list[str] = []
    try:
        for ns in (fab, *clients):
            subprocess.run(["ip", "netns", "add", ns], check=True)
            made.append(ns)
            subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        ip_batch(fab, ["link add br0 type bridge", f"addr add {RR}/24 dev br0", "link set br0 up"])
        for i, ns in enumerate(clients):
            outer, inner = f"v{secrets.token_hex(5)}", f"v{secrets.token_hex(5)}"
            subprocess.run(["ip", "link", "add", outer, "type", "veth", "peer", "name", inner],
                           check=True)
            subprocess.run(["ip", "link", "set", outer, "netns", fab], check=True)
            subprocess.run(["ip", "link", "set", inner, "netns", ns], check=True)
            ip_batch(fab, [f"link set {outer} master br0 up"])
            ip_batch(ns, [f"link set {inner} name eth0", f"addr add {NET}.{i + 2}/24 dev eth0",
                          "link set eth0 up"])
        yield fab, clients
    finally:
        for ns in made:
            subprocess.run(["ip", "netns", "delete", ns], capture_output=True)


def ip_batch(ns: str, lines: list[str]) -> None:
    subprocess.run(["ip", "-n", ns, "-batch", "-"], input="\n".join(lines) + "\n", text=True,
                   check=True)


def plot(result: dict, series: dict[str, tuple]) -> Path:
    title = (f"{result['clients']} clients x {result['blocks_per_client']} blocks: "
             f"converge {result['converge_s']} s")
    if "converge_bird_s" in result:
        title += f" (BIRD {result['converge_bird_s']} s, ratio {result['ratio_converge_vs_bird']})"
    return step_figure(
        series, title=title, name="route_reflector.png",
        xlabel="seconds since every client enabled its blocks (one client's withdrawal follows)",
        ylabel="reflected blocks in all clients' kernels")


if __name__ == "__main__":
    sys.exit(main())
