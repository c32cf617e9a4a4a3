"""What every benchmark shares: percentiles, the JSON line, the PNG, private output files."""
from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import hostio

OUT = Path(__file__).resolve().parent / "out"


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (pct in 0..100) of a non-empty sequence."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


def emit(result: dict) -> None:
    """The benchmark's result: one JSON object, the last line on stdout."""
    print(json.dumps(result, sort_keys=True), flush=True)


def out_path(name: str) -> Path:
    hostio.private_dir(OUT)
    return OUT / name


def save_figure(fig, name: str) -> Path:
    path = out_path(name)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    path.chmod(0o600)
    return path


def cdf_figure(samples: Sequence[float], *, label: str, goal: float, ylabel: str, title: str,
               name: str) -> Path:
    """One latency CDF (ms) with its p99 goal marked, saved as ``bench/out/<name>``."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ordered = sorted(samples)
    ax.plot(ordered, [(i + 1) / len(ordered) for i in range(len(ordered))], label=label)
    ax.axvline(goal, color="grey", linestyle=":", label="p99 goal")
    ax.set_xlabel("ms")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend()
    try:
        return save_figure(fig, name)
    finally:
        plt.close(fig)


def step_figure(series: dict[str, tuple[float, Sequence[tuple[float, int]]]], *, xlabel: str,
                ylabel: str, title: str, name: str) -> Path:
    """Counts over time, one step line per label (``{label: (t0, [(t, count), ...])}``, times from
    t0), saved as ``bench/out/<name>``."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(9, 4.5))
    for label, (t0, points) in series.items():
        ax.step([t - t0 for t, _ in points], [n for _, n in points], where="post", label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend()
    try:
        return save_figure(fig, name)
    finally:
        plt.close(fig)
