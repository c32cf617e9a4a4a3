"""``python -m bench.pod_startup --pods 200``: CNI ADD and DEL latency on one node, as kubelet sees
it (from exec of the plugin to its exit), through the thin plugin + the agent's CNIServer, and
through the old exec path (``pycalico-cni`` exec'ing ``pycalico-ipam``) in the same run.

Setup (root): a fresh "node" network namespace that this process's main thread joins (every thread
and child it starts inherits it: etcd, the server's workers, the plugins), a real etcd on its
loopback with one IPv4 pool, and one namespace per pod. The server shares one datastore connection,
as the agent would pass its own; two ADD/DEL pairs warm it up first and are not counted. The thin
plugin runs under the system ``/usr/bin/python3 -I`` (no venv, as on a Kubernetes host); pods are
added one after the other, then deleted one after the other. The exec path runs ``--exec-pods``
pods (each ADD costs ~0.7 s) on the same namespaces after they were emptied.
JSON keys: add_p50_ms, add_p99_ms, del_p50_ms, del_p99_ms (thin), exec_add_p50_ms, exec_add_p99_ms,
exec_del_p50_ms, exec_del_p99_ms, ratio_add_p50_vs_exec (thin / exec), server_add_p50_ms (time
inside the agent), python_start_p50_ms (``/usr/bin/python3 -IS -c pass``: the floor under the
thin plugin).
Pod-to-pod reachability (reachable_p50_ms / reachable_p99_ms, over ``--reachable-pods`` pods): a
3-node lab (``lab.up``: the manifest's agents, the Kubernetes API stand-in, BGP full mesh) with one
prober pod per node; each new pod is timed from its Pod object's existence (the lab's own cost of
creating it, a fork that imports the client, is not kubelet's and is left out) to the moment the probers
on both other nodes get an answer to ping (one ``ping -c1`` per prober per round: ~10 ms of
resolution).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from bench.common import emit, percentile, save_figure

ROOT = Path(__file__).resolve().parents[1]
THIN = ROOT / "cni" / "thin.py"
VENV_BIN = Path(sys.executable).parent  # pycalico-cni / pycalico-ipam console scripts
SYSTEM_PYTHON = "/usr/bin/python3"
NODE, NETWORK = "node1", "k8s-pod-network"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.pod_startup", description=__doc__)
    p.add_argument("--pods", type=int, default=200)
    p.add_argument("--exec-pods", type=int, default=40,
                   help="pods through the old exec path (about 1.5 s per ADD+DEL)")
    p.add_argument("--reachable-pods", type=int, default=30,
                   help="pods timed until pingable from every other node of a 3-node lab (0: skip)")
    a = p.parse_args(argv)
    if os.geteuid() != 0:
        p.error("needs root (network namespaces)")
    result: dict = {"pods": a.pods, "exec_pods": min(a.exec_pods, a.pods), "node": "one"}
    samples: dict[str, list[float]] = {}
    if a.reachable_pods:  # first: node_lab below moves this process into its node's namespace
        samples["reachable"] = reachable_ms(a.reachable_pods)
    with node_lab(max(a.pods, a.exec_pods)) as lab:
        samples["python_start"] = [lab.python_start_ms() for _ in range(20)]
        with lab.server() as server_ms:
            for i in range(2):  # warm-up: first connection, first block claim
                lab.cni("thin", "ADD", f"warm{i}", lab.pods[i])
                lab.cni("thin", "DEL", f"warm{i}", lab.pods[i])
            server_ms.clear()
            samples["add"], samples["del"] = lab.add_then_delete("thin", lab.pods[:a.pods])
            samples["server_add"] = list(server_ms)
        samples["exec_add"], samples["exec_del"] = lab.add_then_delete(
            "exec", lab.pods[:result["exec_pods"]])
    for key in ("add", "del", "exec_add", "exec_del", "server_add", "python_start"):
        result[f"{key}_p50_ms"] = round(percentile(samples[key], 50), 1)
        if key in ("add", "del", "exec_add", "exec_del"):
            result[f"{key}_p99_ms"] = round(percentile(samples[key], 99), 1)
    result["ratio_add_p50_vs_exec"] = round(result["add_p50_ms"] / result["exec_add_p50_ms"], 3)
    result["goal_add_p50_ms"], result["goal_add_p99_ms"] = 60, 150
    if a.reachable_pods:
        result["reachable_pods"] = a.reachable_pods
        result["reachable_p50_ms"] = round(percentile(samples["reachable"], 50), 1)
        result["reachable_p99_ms"] = round(percentile(samples["reachable"], 99), 1)
    plot(result, samples)
    emit(result)
    return 0


def reachable_ms(pods: int, nodes: int = 3, timeout: float = 30.0) -> list[float]:
    """Milliseconds from Pod creation to answering pings from a pod on every other node."""
    import secrets

    from lab import lab

    name = f"ps{secrets.token_hex(2)}"
    try:
        state = lab.up(name, nodes, 1)  # one prober pod per node
        probers = {p.node: p for p in state.pods}
        order = sorted(probers)
        samples = []
        for i in range(pods):
            node = order[i % nodes]
            uid = lab.pod_object(state, node, 2 + i // nodes)  # a fork + client import: not timed
            t0 = time.perf_counter()  # the Pod object exists: kubelet starts from here
            pod = lab.add_pod(state, node, 2 + i // nodes, uid)
            pending = [probers[n] for n in order if n != node]
            deadline = t0 + timeout
            while pending:
                pending = [src for src in pending if subprocess.run(
                    ["ip", "netns", "exec", src.netns, "ping", "-c1", "-W", "0.2", pod.ip],
                    capture_output=True).returncode != 0]
                if pending and time.perf_counter() > deadline:
                    raise RuntimeError(f"{pod.netns} ({pod.ip}) unreachable from "
                                       f"{[p.netns for p in pending]} after {timeout:.0f}s")
            samples.append((time.perf_counter() - t0) * 1000)
        print(f"reachable: {pods} pods, p50 {percentile(samples, 50):.1f} ms", flush=True)
        return samples
    finally:
        lab.down(name)


class NodeLab:
    def __init__(self, etcd_url: str, run_root: Path, pods: list[str], ds) -> None:
        self.etcd_url, self.run_root, self.pods, self.ds = etcd_url, run_root, pods, ds
        self.socket = run_root / NODE / "cni.sock"
        self.netconf = json.dumps({
            "cniVersion": "1.0.0", "name": NETWORK, "type": "pycalico-cni",
            "datastore_type": "etcdv3", "etcd_endpoints": etcd_url, "nodename": NODE,
            "ipam": {"type": "pycalico-ipam"}}).encode()

    def cni(self, path: str, command: str, container: str, pod_ns: str) -> float:
        """Milliseconds from exec to exit of one plugin invocation; fails loudly on an error."""
        argv = ([SYSTEM_PYTHON, "-IS", str(THIN)] if path == "thin"
                else [str(VENV_BIN / "pycalico-cni")])
        env = {"PATH": os.environ["PATH"], "CNI_COMMAND": command, "CNI_CONTAINERID": container,
               "CNI_NETNS": f"/var/run/netns/{pod_ns}", "CNI_IFNAME": "eth0",
               "CNI_PATH": str(VENV_BIN), "PYCALICO_RUN_ROOT": str(self.run_root),
               "CNI_ARGS": f"K8S_POD_NAMESPACE=default;K8S_POD_NAME={container}"}
        t0 = time.perf_counter()
        proc = subprocess.run(argv, input=self.netconf, env=env, capture_output=True, timeout=120)
        elapsed = (time.perf_counter() - t0) * 1000
        if proc.returncode != 0:
            raise RuntimeError(f"{path} {command} {container}: {proc.stdout.decode()} "
                               f"{proc.stderr.decode()[-2000:]}")
        return elapsed

    def add_then_delete(self, path: str, pods: list[str]) -> tuple[list[float], list[float]]:
        adds = [self.cni(path, "ADD", f"{path}-{i}", ns) for i, ns in enumerate(pods)]
        if len(self.ds.list("WorkloadEndpoint").items) != len(pods):
            raise RuntimeError(f"{path}: {len(pods)} ADDs but not as many WorkloadEndpoints")
        dels = [self.cni(path, "DEL", f"{path}-{i}", ns) for i, ns in enumerate(pods)]
        if self.ds.list("WorkloadEndpoint").items:
            raise RuntimeError(f"{path}: WorkloadEndpoints left after every DEL")
        print(f"{path}: {len(pods)} pods, ADD p50 {percentile(adds, 50):.1f} ms, "
              f"DEL p50 {percentile(dels, 50):.1f} ms", flush=True)
        return adds, dels

    def python_start_ms(self) -> float:
        t0 = time.perf_counter()
        subprocess.run([SYSTEM_PYTHON, "-IS", "-c", "pass"], check=True)
        return (time.perf_counter() - t0) * 1000

    @contextlib.contextmanager
    def server(self) -> Iterator[list[float]]:
        """A CNIServer on its own loop thread; yields the in-server milliseconds of each ADD."""
        from cni.server import CNIServer
        from tests.helpers import LoopThread

        server_ms: list[float] = []

        class Timed(CNIServer):
            def handle(self, env, stdin):
                t0 = time.perf_counter()
                try:
                    return super().handle(env, stdin)
                finally:
                    if env.get("CNI_COMMAND") == "ADD":
                        server_ms.append((time.perf_counter() - t0) * 1000)

        loop = LoopThread()
        server = Timed(self.socket, self.ds, NODE)
        try:
            loop.run(server.start())
            yield server_ms
        finally:
            loop.run(server.stop())
            loop.close()


@contextlib.contextmanager
def node_lab(pods: int) -> Iterator[NodeLab]:
    """A node namespace joined by this thread (so by every thread and child started later), etcd in
    it, a pool, ``pods`` pod namespaces. All removed on exit, and this thread goes back to the
    host's namespace."""
    from pyroute2 import netns as pyroute2_netns

    import cni.ipam_plugin
    import datastore
    from crds import IPPool, ObjectMeta
    from tests.conftest import NetnsFactory
    from tests.helpers import etcd_running

    spaces = NetnsFactory()
    host_ns = os.open("/proc/self/ns/net", os.O_RDONLY)
    try:
        with tempfile.TemporaryDirectory(prefix="bench-pods-") as tmp:
            node = spaces("bench-node")
            pod_spaces = [spaces(f"bench-p{i}") for i in range(pods)]
            pyroute2_netns.setns(node, flags=0)
            run_root = Path(tmp) / "run"
            cni.ipam_plugin.RUN_ROOT = run_root  # the node flock, shared with the exec'd plugin
            with etcd_running(str(Path(tmp) / "etcd")) as url:
                ds = datastore.connect("etcdv3", etcd_endpoints=url)
                try:
                    ds.create(IPPool(metadata=ObjectMeta(name="default-ipv4-ippool"),
                                     spec={"cidr": "10.244.0.0/16", "blockSize": 26}))
                    yield NodeLab(url, run_root, pod_spaces, ds)
                finally:
                    ds.close()
    finally:
        pyroute2_netns.setns(host_ns, flags=0)
        os.close(host_ns)
        spaces.cleanup()


def plot(result: dict, samples: dict[str, list[float]]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for key, label in (("add", "ADD thin + agent"), ("del", "DEL thin + agent"),
                       ("exec_add", "ADD exec (pycalico-cni + pycalico-ipam)"),
                       ("exec_del", "DEL exec"),
                       ("reachable", "Pod created -> pingable from every other node")):
        if key not in samples:
            continue
        ordered = sorted(samples[key])
        ax.plot(ordered, [(i + 1) / len(ordered) for i in range(len(ordered))], label=label)
    ax.axvline(result["goal_add_p50_ms"], color="grey", linestyle=":", label="ADD p50 goal")
    ax.set_xscale("log")
    ax.set_xlabel("plugin exec -> exit (ms, log)")
    ax.set_ylabel("fraction of invocations")
    ax.set_title(f"CNI latency on one node: {result['pods']} pods thin, "
                 f"{result['exec_pods']} exec")
    ax.legend()
    return save_figure(fig, "pod_startup.png")


if __name__ == "__main__":
    sys.exit(main())
