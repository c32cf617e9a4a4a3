"""``python -m bench.node_memory``: RSS of everything one pycalico node runs, in a converged lab.

Starts a lab (default 3 nodes x 2 pods, the size issue 7 sets its 80 MB budget on), waits until
every node has its mesh up and its routes, lets it idle ``--settle`` seconds, then reads
``/proc/<pid>/status`` of every process in each node's namespace: the agent (pycalico-node),
ExaBGP and its API relay (socat). The lab is taken down in ``finally``. Agents run as the manifest
ships them (metrics off, Felix's default); a second lab with metrics on (as ``lab up`` runs them,
to scrape) gives ``node_rss_mb_metrics_on``.
JSON keys: node_rss_mb (the largest node's sum of VmRSS), node_pages_once_mb (the same processes with
each file-backed page counted once per node -- libpython, libcrypto and friends are mapped by the
agent, ExaBGP and socat alike; a pod's cgroup, which a DaemonSet's memory limit is enforced on,
charges a page once too), node_rss_mb_mean, agent_rss_mb, exabgp_rss_mb,
relay_rss_mb (largest of each), agent_anon_rss_mb / agent_file_rss_mb (where the agent's memory
is: its own heap vs shared library pages), budget_mb (80), nodes, pods_per_node.
"""
from __future__ import annotations

import argparse
import os
import secrets
import subprocess
import time
from pathlib import Path

from bench.common import emit, save_figure
from lab import lab

BUDGET_MB = 80


def _status(pid: int) -> dict[str, float]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile", "RssShmem"):
            fields[key] = int(value.split()[0]) / 1024
    return fields


def _component(cmdline: bytes) -> str:
    if b"pycalico-node" in cmdline:
        return "agent"
    if b"socat" in cmdline.split(b"\0")[0]:  # before exabgp: its argv names exabgp.sock
        return "relay"
    if b"exabgp" in cmdline:
        return "exabgp"
    return "other"


def pages_once_mb(node: str) -> float:
    """Anonymous RSS of the node's processes plus, per mapped file, the largest RSS any of them has
    of it (the pages of one file they share are counted once)."""
    pids = subprocess.run(["ip", "netns", "pids", node], capture_output=True, text=True).stdout
    anon, files = 0, {}
    for pid in pids.split():
        try:
            lines = Path(f"/proc/{pid}/smaps").read_text().splitlines()
        except OSError:
            continue
        mapped: dict[str, int] = {}
        current = ""
        for line in lines:
            parts = line.split()
            if parts and "-" in parts[0] and len(parts) >= 5 and ":" in parts[3]:
                current = parts[5] if len(parts) > 5 and parts[5].startswith("/") else ""
            elif line.startswith("Rss:"):
                if current:
                    mapped[current] = mapped.get(current, 0) + int(parts[1])
                else:
                    anon += int(parts[1])
        for path, kb in mapped.items():
            files[path] = max(files.get(path, 0), kb)
    return (anon + sum(files.values())) / 1024


def measure_node(node: str) -> dict[str, dict[str, float]]:
    pids = subprocess.run(["ip", "netns", "pids", node], capture_output=True, text=True).stdout
    found: dict[str, dict[str, float]] = {}
    for pid in map(int, pids.split()):
        try:
            kind = _component(Path(f"/proc/{pid}/cmdline").read_bytes())
            found[kind if kind not in found else f"{kind}-{pid}"] = _status(pid)
        except OSError:
            continue  # exited meanwhile
    return found


def measure_lab(a, *, metrics: bool) -> dict[str, dict[str, dict[str, float]]]:
    name = f"bm{secrets.token_hex(2)}"
    try:
        lab.up(name, a.nodes, a.pods, metrics=metrics)
        time.sleep(a.settle)  # the figure wanted is the idle, converged node, not start-up peaks
        nodes = {f"{name}-node{i}": measure_node(f"{name}-node{i}") for i in range(1, a.nodes + 1)}
        for node, comps in nodes.items():
            comps["_pages_once"] = {"VmRSS": 0.0, "once": pages_once_mb(node)}
        return nodes
    finally:
        lab.down(name)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.node_memory", description=__doc__)
    p.add_argument("--nodes", type=int, default=3)
    p.add_argument("--pods", type=int, default=2, help="pods per node")
    p.add_argument("--settle", type=float, default=5.0, help="idle seconds before reading RSS")
    a = p.parse_args(argv)
    if os.geteuid() != 0:
        p.error("needs root (network namespaces)")
    nodes = measure_lab(a, metrics=False)
    with_metrics = measure_lab(a, metrics=True)
    once = max(comps.pop("_pages_once")["once"] for comps in nodes.values())
    for comps in with_metrics.values():
        comps.pop("_pages_once")
    sums = {n: sum(c["VmRSS"] for c in comps.values()) for n, comps in nodes.items()}

    def largest(kind: str, key: str = "VmRSS") -> float:
        return max((c[key] for comps in nodes.values() for k, c in comps.items()
                    if k.split("-")[0] == kind), default=0.0)

    result = {
        "nodes": a.nodes, "pods_per_node": a.pods, "budget_mb": BUDGET_MB,
        "node_rss_mb": round(max(sums.values()), 1),
        "node_rss_mb_mean": round(sum(sums.values()) / len(sums), 1),
        "node_pages_once_mb": round(once, 1),
        "agent_rss_mb": round(largest("agent"), 1),
        "agent_anon_rss_mb": round(largest("agent", "RssAnon"), 1),
        "agent_file_rss_mb": round(largest("agent", "RssFile"), 1),
        "exabgp_rss_mb": round(largest("exabgp"), 1),
        "relay_rss_mb": round(largest("relay"), 1),
        "other_rss_mb": round(largest("other"), 1),
        "node_rss_mb_metrics_on": round(max(sum(c["VmRSS"] for c in comps.values())
                                            for comps in with_metrics.values()), 1),
    }
    _plot(nodes)
    emit(result)
    return 0


def _plot(nodes: dict[str, dict[str, dict[str, float]]]) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4))
    names = sorted(nodes)
    bottoms = [0.0] * len(names)
    for kind in ("agent", "exabgp", "relay", "other"):
        heights = [sum(c["VmRSS"] for k, c in nodes[n].items() if k.split("-")[0] == kind)
                   for n in names]
        ax.bar(names, heights, bottom=bottoms, label=kind)
        bottoms = [b + h for b, h in zip(bottoms, heights)]
    ax.axhline(BUDGET_MB, color="red", linestyle="--", label=f"budget {BUDGET_MB} MB")
    ax.set_ylabel("RSS (MB)")
    ax.set_title("RSS per lab node, idle and converged")
    ax.legend()
    save_figure(fig, "node_memory.png")


if __name__ == "__main__":
    raise SystemExit(main())
