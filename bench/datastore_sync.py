"""``python -m bench.datastore_sync --resources 10000 --watchers 20``: one agent's syncer from a
cold start to "in sync" over N objects, and event latency (write -> every watcher notified), on
real etcd and on the Kubernetes API server stand-in over real etcd, in the same run.

Objects are IPAM blocks (/26, with their 64 allocation slots), the kind a large cluster has most
of. In sync: a new client and a Syncer over the agent's watched kinds, until its InSync batch
(median of 3). Event latency: W watchers each with its own client; the writer updates one block
at a time and waits until every watcher has that revision; p50/p99 over the updates.
JSON keys: insync_s_<backend>, event_p50_ms_<backend>, event_p99_ms_<backend> for backend
etcd / kubernetes, plus ratio_insync_kubernetes_vs_etcd and ratio_event_p99_kubernetes_vs_etcd.
"""
from __future__ import annotations

import argparse
import contextlib
import ipaddress
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.common import emit, percentile, save_figure
from datastore import Datastore
from datastore.syncer import InSync, Syncer
from felix.cluster import WATCHED_KINDS
from ipam.blocks import new_block

Factory = Callable[[], Datastore]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.datastore_sync", description=__doc__)
    p.add_argument("--resources", type=int, default=10_000)
    p.add_argument("--watchers", type=int, default=20)
    p.add_argument("--events", type=int, default=200)
    p.add_argument("--backends", default="etcd,kubernetes")
    a = p.parse_args(argv)
    result: dict = {"resources": a.resources, "watchers": a.watchers, "events": a.events}
    samples: dict[str, list[float]] = {}
    for backend in a.backends.split(","):
        with running(backend) as factory:
            t0 = time.monotonic()
            populate(factory, a.resources)
            print(f"{backend}: stored {a.resources} blocks in {time.monotonic() - t0:.1f}s",
                  flush=True)
            result[f"insync_s_{backend}"] = round(statistics.median(
                insync_seconds(factory) for _ in range(3)), 3)
            samples[backend] = event_latencies(factory, a.watchers, a.events)
        result[f"event_p50_ms_{backend}"] = round(percentile(samples[backend], 50), 2)
        result[f"event_p99_ms_{backend}"] = round(percentile(samples[backend], 99), 2)
        print(f"{backend}: {result}", flush=True)
    if {"etcd", "kubernetes"} <= samples.keys():
        result["ratio_insync_kubernetes_vs_etcd"] = round(
            result["insync_s_kubernetes"] / result["insync_s_etcd"], 2)
        result["ratio_event_p99_kubernetes_vs_etcd"] = round(
            result["event_p99_ms_kubernetes"] / result["event_p99_ms_etcd"], 2)
    plot(result, samples)
    emit(result)
    return 0


@contextlib.contextmanager
def running(backend: str) -> Iterator[Factory]:
    """A fresh etcd (and for kubernetes the stand-in with our CRDs) on loopback; yields a
    factory of new clients. Everything started here is stopped here."""
    from tests.helpers import etcd_running

    with tempfile.TemporaryDirectory(prefix="bench-ds-") as tmp, \
            etcd_running(str(Path(tmp) / "etcd")) as etcd_url:
        if backend == "etcd":
            import datastore

            yield lambda: datastore.connect("etcdv3", etcd_endpoints=etcd_url)
            return
        with apiserver(etcd_url, Path(tmp)) as kubeconfig:
            import datastore

            yield lambda: datastore.connect("kubernetes", kubeconfig=str(kubeconfig))


@contextlib.contextmanager
def apiserver(etcd_url: str, tmp: Path) -> Iterator[Path]:
    from lab import kube
    from lab.apiserver.launch import running_apiserver

    with running_apiserver(etcd_url) as url:
        config = kube.write_kubeconfig(tmp, url)
        kube.apply_crds(str(config))
        yield config


def blocks(n: int) -> Iterator:
    nets = ipaddress.ip_network("10.0.0.0/8").subnets(new_prefix=26)
    for i, cidr in zip(range(n), nets):
        yield new_block(cidr, f"node{i % 500}")


def populate(factory: Factory, n: int, workers: int = 8) -> None:
    local = threading.local()

    def create(block) -> None:
        if not hasattr(local, "ds"):
            local.ds = factory()
        local.ds.create(block)

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(create, blocks(n)))


def insync_seconds(factory: Factory) -> float:
    done = threading.Event()
    started = time.monotonic()
    ds = factory()
    syncer = Syncer(ds, WATCHED_KINDS,
                    lambda batch: done.set() if any(isinstance(i, InSync) for i in batch) else None)
    syncer.start()
    try:
        if not done.wait(120):
            raise RuntimeError("the syncer did not get in sync within 120 s")
        return time.monotonic() - started
    finally:
        syncer.stop()
        ds.close()


def event_latencies(factory: Factory, watchers: int, events: int) -> list[float]:
    """Milliseconds from the start of each write until every watcher has seen its revision."""
    writer = factory()
    target = writer.list("IPAMBlock").items[0]
    start = writer.list("IPAMBlock").revision
    seen: list[dict[int, float]] = [{} for _ in range(watchers)]
    cond = threading.Condition()
    stop = threading.Event()

    def watch(i: int) -> None:
        ds = factory()
        try:
            for event in ds.watch(["IPAMBlock"], start, stop):
                with cond:
                    seen[i][event.revision] = time.monotonic()
                    cond.notify_all()
        finally:
            ds.close()

    threads = [threading.Thread(target=watch, args=(i,), daemon=True) for i in range(watchers)]
    for t in threads:
        t.start()
    latencies = []
    try:
        time.sleep(1.0)  # let every watch open its stream before the first write is timed
        for n in range(events):
            target = target.model_copy(update={"metadata": target.metadata.model_copy(
                update={"labels": {"n": str(n)}})})
            t0 = time.monotonic()
            target = writer.update(target)
            rev = int(target.metadata.resource_version)
            with cond:
                if not cond.wait_for(lambda: all(rev in s for s in seen), timeout=30):
                    raise RuntimeError(f"watchers did not all see revision {rev} within 30 s")
                latencies.append((max(s[rev] for s in seen) - t0) * 1000)
    finally:
        stop.set()
        for t in threads:
            t.join(5)
        writer.close()
    return latencies


def plot(result: dict, samples: dict[str, list[float]]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    names = list(samples)
    left.bar(names, [result[f"insync_s_{b}"] for b in names], color=["#4c72b0", "#dd8452"][:len(names)])
    left.set_ylabel("seconds")
    left.set_title(f"cold start to in sync, {result['resources']} objects")
    for backend, values in samples.items():
        ordered = sorted(values)
        right.plot(ordered, [(i + 1) / len(ordered) for i in range(len(ordered))], label=backend)
    right.set_xlabel("write -> every watcher notified (ms)")
    right.set_ylabel("fraction of events")
    right.set_title(f"event latency, {result['watchers']} watchers")
    right.legend()
    return save_figure(fig, "datastore_sync.png")


if __name__ == "__main__":
    sys.exit(main())
