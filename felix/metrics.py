"""Prometheus metrics of ``pycalico-node`` (Felix's port 9091), on a registry of their own.

Builds the exposition text only; no I/O (``felix.health.HealthServer`` serves it over HTTP).
``AgentMetrics`` lives in ``felix.exposition`` and is imported from here on first use: the agent
pays prometheus-client's 2.3 MB of RSS only when it serves metrics (Felix's default is off).

Two kinds of metric, so that nothing is counted twice:

- **Read at scrape time** from one ``AgentHealth`` snapshot by a custom collector: everything the agent
  already counts (reconciles by cause, route writes and dumps, the speaker's rejection counters, peer
  states, the datastore connection). The agent keeps its own counters; this module never mirrors them.
- **Observed by the agent** through small methods, for what only the agent sees happen: reconcile
  and CNI durations (histograms), CNI requests by result, IPAM addresses in use.

>>> from felix.health import AgentHealth
>>> from felix.metrics import AgentMetrics
>>> m = AgentMetrics()
>>> m.observe_reconcile(0.02, "event")
>>> text = m.render(AgentHealth(loop_tick=0.0, datastore_in_sync=True, connection=None,
...                             reconciles={"event": 3})).decode()
>>> 'pycalico_reconciles_total{cause="event"} 3.0' in text
True
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from felix.exposition import AgentMetrics

CONNECTION_STATES = ("connecting", "connected", "unreachable", "failing")
SPEAKER_STATES = ("running", "starting", "restarting", "stopped")
# ExaBGP's FSM states as the speaker reports them ('up' = Established); others appear as they come.
PEER_STATES = ("up", "start", "idle", "connect", "active", "opensent", "openconfirm")
ROUTE_KINDS = ("local_workload", "local_block", "learned", "vxlan", "ipip", "direct")
CNI_COMMANDS = ("ADD", "DEL", "CHECK", "VERSION", "STATUS", "GC")
# A reconcile is a few ms to a few s (a full kernel dump of thousands of routes); CNI ADD aims at 60 ms.
RECONCILE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
CNI_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.06, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def route_kind(reason: str) -> str:
    """The metric label of a ``felix.calc.DesiredRoute.reason`` (``'other'`` for a reason we do not
    know yet, rather than one label value per route)."""
    if reason.startswith("local workload"):
        return "local_workload"
    if reason == "local block":
        return "local_block"
    if reason.startswith("learned from"):
        return "learned"
    for prefix, kind in (("vxlan to ", "vxlan"), ("ipip to ", "ipip"), ("direct to ", "direct")):
        if reason.startswith(prefix):
            return kind
    return "other"


def count_route_kinds(reasons: Iterable[str]) -> dict[str, int]:
    """``{kind: count}`` for ``AgentHealth.routes_by_kind``: pass ``(r.reason for r in desired.values())``."""
    counts = dict.fromkeys(ROUTE_KINDS, 0)
    for reason in reasons:
        kind = route_kind(reason)
        counts[kind] = counts.get(kind, 0) + 1
    return counts


def __getattr__(name: str):
    if name == "AgentMetrics":  # PEP 562: `from felix.metrics import AgentMetrics` loads it now
        from felix.exposition import AgentMetrics
        return AgentMetrics
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
