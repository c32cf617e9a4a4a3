"""``python -m bench.block_latency --nodes 10 --blocks 50``: how fast a new IPAM block reaches every
other node's kernel.

Setup: a lab (``lab.up``: the manifest's agents, the Kubernetes API stand-in, BGP full mesh) with no
pods; then a pool of /30 blocks (4 addresses: a new block every 4 pods) with the lab's /26 pool
disabled, so pods on node1 keep claiming blocks. Each new block is timed from its IPAM commit -- the
moment a watch on IPAMBlocks (in this process, through the same datastore) sees it -- to the moment
the last other node's kernel announces the route (an RTM_NEWROUTE netlink notification, read by one
socket per node namespace). The lab is taken down in ``finally``.
JSON keys: block_p50_ms, block_p99_ms, block_max_ms, blocks, nodes, goal_block_p99_ms (100),
commit_to_add_return_p50_ms (how long the CNI ADD went on after the commit), load_avg_1m (when
the last block was timed: a shared machine's other work skews every figure).
"""
from __future__ import annotations

import argparse
import ipaddress
import json
import os
import secrets
import subprocess
import sys
import threading
import time
from pathlib import Path

from bench.common import cdf_figure, emit, percentile
from felix import rtnl
from lab import lab

SMALL_POOL = {"apiVersion": "projectcalico.org/v3", "kind": "IPPool",
              "metadata": {"name": "bench-small-blocks"},
              "spec": {"cidr": "10.250.0.0/16", "blockSize": 30, "nodeSelector": "all()"}}


class RouteWatch:
    """One netlink event socket per node namespace; ``seen[node][(dst, len)]``: first RTM_NEWROUTE."""

    def __init__(self, nodes: list[str]) -> None:
        self.seen: dict[str, dict[tuple[int, int], float]] = {n: {} for n in nodes}
        self.cond = threading.Condition()
        self.socks = [rtnl.RtnlSocket(netns=n, groups=rtnl.RTMGRP_IPV4_ROUTE) for n in nodes]
        self.threads = [threading.Thread(target=self._read, args=(n, s), daemon=True)
                        for n, s in zip(nodes, self.socks)]
        for t in self.threads:
            t.start()

    def _read(self, node: str, sock: rtnl.RtnlSocket) -> None:
        try:
            while True:
                buf = sock.recv()
                now = time.monotonic()
                for mtype, _, msg in rtnl.parse_events(buf):
                    if mtype != rtnl.RTM_NEWROUTE:
                        continue
                    route = rtnl.decode_route(msg[16:])
                    with self.cond:
                        self.seen[node].setdefault(rtnl.key_parts(route.key), now)
                        self.cond.notify_all()
        except OSError:
            return  # closed at the end

    def wait_all(self, key: tuple[int, int], timeout: float) -> float:
        """When the last node saw ``key`` (monotonic seconds); raises after ``timeout``."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while not all(key in seen for seen in self.seen.values()):
                left = deadline - time.monotonic()
                if left <= 0:
                    missing = [n for n, seen in self.seen.items() if key not in seen]
                    raise RuntimeError(f"block {key} never reached {missing}")
                self.cond.wait(left)
            return max(seen[key] for seen in self.seen.values())

    def close(self) -> None:
        for s in self.socks:
            s.close()


class BlockWatch:
    """IPAMBlock creations as the datastore's watch delivers them (inside the lab's fabric)."""

    def __init__(self, state: lab.LabState) -> None:
        self.commits: dict[ipaddress.IPv4Network, float] = {}
        self.cond = threading.Condition()
        self.stop = threading.Event()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True,
                                       args=(f"{state.name}-fabric", state.datastore_env()))
        self.thread.start()
        if not self.ready.wait(30):
            raise RuntimeError("the IPAMBlock watch did not start")

    def _run(self, fabric: str, env: dict[str, str]) -> None:
        import datastore
        import hostio

        # This thread (and the watch threads it starts) in the fabric, where the API listens.
        with hostio.netns_entered(f"/var/run/netns/{fabric}"):
            self._watch(datastore.connect(env["DATASTORE_TYPE"], kubeconfig=env.get("KUBECONFIG"),
                                          etcd_endpoints=env.get("ETCD_ENDPOINTS")))

    def _watch(self, ds) -> None:
        listing = ds.list("IPAMBlock")
        self.ready.set()
        try:
            for event in ds.watch(["IPAMBlock"], listing.revision, self.stop):
                if event.resource is None:
                    continue
                cidr = event.resource.spec.network
                with self.cond:
                    self.commits.setdefault(cidr, time.monotonic())
                    self.cond.notify_all()
        finally:
            ds.close()

    def wait(self, cidr: ipaddress.IPv4Network, timeout: float = 10.0) -> float:
        deadline = time.monotonic() + timeout
        with self.cond:
            while cidr not in self.commits:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise RuntimeError(f"the watch never saw block {cidr}")
                self.cond.wait(left)
            return self.commits[cidr]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.block_latency", description=__doc__)
    p.add_argument("--nodes", type=int, default=10)
    p.add_argument("--blocks", type=int, default=50)
    a = p.parse_args(argv)
    if os.geteuid() != 0:
        p.error("needs root (network namespaces)")
    name = f"bl{secrets.token_hex(2)}"
    samples, after_commit, load = [], [], None
    try:
        state = lab.up(name, a.nodes, 0, timeout=180)
        _apply(name, SMALL_POOL)
        _apply(name, {**lab.POOL, "spec": {**lab.POOL["spec"], "disabled": True}})
        source, others = sorted(state.nodes)[0], sorted(state.nodes)[1:]
        routes, blocks = RouteWatch(others), BlockWatch(state)
        try:
            seen: set[ipaddress.IPv4Network] = set()
            j = 0
            while len(samples) < a.blocks:
                j += 1
                pod = lab.add_pod(state, source, j)
                returned = time.monotonic()
                block = ipaddress.ip_network(f"{pod.ip}/30", strict=False)
                if block in seen:
                    continue
                seen.add(block)
                committed = blocks.wait(block)
                everywhere = routes.wait_all((int(block.network_address), 30), timeout=30)
                samples.append((everywhere - committed) * 1000)
                after_commit.append((returned - committed) * 1000)
            load = os.getloadavg()[0]
        finally:
            blocks.stop.set()
            routes.close()
    finally:
        lab.down(name)
    result = {"nodes": a.nodes, "blocks": len(samples), "goal_block_p99_ms": 100,
              "block_p50_ms": round(percentile(samples, 50), 1),
              "block_p99_ms": round(percentile(samples, 99), 1),
              "block_max_ms": round(max(samples), 1),
              "commit_to_add_return_p50_ms": round(percentile(after_commit, 50), 1),
              "load_avg_1m": round(load, 2)}
    _plot(result, samples)
    emit(result)
    return 0


def _apply(name: str, doc: dict) -> None:
    ctl = Path(sys.executable).parent / "pycalicoctl"
    out = subprocess.run([str(ctl), "--lab", name, "apply", "-f", "-"], input=json.dumps(doc),
                         capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise RuntimeError(f"apply {doc['metadata']['name']}: {out.stderr}")


def _plot(result: dict, samples: list[float]) -> None:
    cdf_figure(samples, label="IPAM commit -> route in every other node's kernel",
               goal=result["goal_block_p99_ms"], ylabel="fraction of blocks", name="block_latency.png",
               title=f"new block latency, {result['nodes']} nodes: p50 {result['block_p50_ms']} ms, "
                     f"p99 {result['block_p99_ms']} ms")

if __name__ == "__main__":
    sys.exit(main())
