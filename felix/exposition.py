"""``AgentMetrics``: the agent's Prometheus metrics (see ``felix.metrics`` for what they are and
why this module is separate: prometheus-client is imported only when metrics are served).
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import (CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector,
                               generate_latest)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from felix.metrics import (CNI_BUCKETS, CNI_COMMANDS, CONNECTION_STATES, PEER_STATES,
                           RECONCILE_BUCKETS, ROUTE_KINDS, SPEAKER_STATES)

if TYPE_CHECKING:
    from felix.health import AgentHealth


class AgentMetrics:
    """The agent's metrics on their own ``CollectorRegistry`` (never the process-wide default: a test
    process, or the lab, runs several agents)."""

    def __init__(self, registry: CollectorRegistry | None = None, *, process: bool = True) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self._collector = _SnapshotCollector()
        self.registry.register(self._collector)
        r = self.registry
        if process:  # the agent's own CPU, RSS and fds from /proc/self (not its ExaBGP child's)
            ProcessCollector(registry=r)
        self._reconcile_seconds = Histogram(
            "pycalico_reconcile_duration_seconds", "Time one reconcile took, by what caused it.",
            ["cause"], registry=r, buckets=RECONCILE_BUCKETS)
        self._cni_requests = Counter(
            "pycalico_cni_requests", "CNI requests handled, by command and result.",
            ["command", "result"], registry=r)
        self._cni_seconds = Histogram(
            "pycalico_cni_request_duration_seconds", "Time the agent took to answer a CNI request.",
            ["command"], registry=r, buckets=CNI_BUCKETS)
        self._ipam_in_use = Gauge(
            "pycalico_ipam_addresses_in_use", "Addresses this node has allocated, by pool.",
            ["pool"], registry=r)

    def observe_reconcile(self, seconds: float, cause: str) -> None:
        """After each reconcile. ``cause``: one of event/retry/resync, or several joined with '+'
        (``'+'.join(sorted(causes))``: at most 7 label values)."""
        _check_duration("seconds", seconds)
        self._reconcile_seconds.labels(cause=cause).observe(seconds)

    def observe_cni(self, command: str, seconds: float, ok: bool) -> None:
        """After each CNI request. An unknown command is counted as 'other' (a client's typo must not
        mint a new time series)."""
        _check_duration("seconds", seconds)
        command = command.upper() if command.upper() in CNI_COMMANDS else "other"
        self._cni_requests.labels(command=command, result="ok" if ok else "error").inc()
        self._cni_seconds.labels(command=command).observe(seconds)

    def set_ipam_in_use(self, pool: str, addresses: int) -> None:
        if addresses < 0:
            raise ValueError(f"addresses: {addresses} for pool {pool} is negative")
        self._ipam_in_use.labels(pool=pool).set(addresses)

    def render(self, snapshot: AgentHealth) -> bytes:
        """The exposition text, the collector reading ``snapshot`` (set for this call only)."""
        self._collector.current = snapshot
        try:
            return generate_latest(self.registry)
        finally:
            self._collector.current = None


def _check_duration(name: str, seconds: float) -> None:
    if not seconds >= 0:  # also rejects NaN
        raise ValueError(f"{name}: {seconds!r} is not a duration (must be >= 0)")


class _SnapshotCollector:
    """Reads one AgentHealth at scrape time. Outside ``render`` it has nothing and yields nothing."""

    def __init__(self) -> None:
        self.current: AgentHealth | None = None

    def collect(self) -> Iterator[Metric]:
        h = self.current
        if h is None:
            return
        yield from _datastore_metrics(h)
        yield from _reconcile_metrics(h)
        yield from _route_metrics(h)
        yield from _bgp_metrics(h)


def _one_hot(name: str, doc: str, label: str, known: Iterable[str], current: str | None) -> Metric:
    """1 for the current state, 0 for every other known one (absent series would hide a state)."""
    family = GaugeMetricFamily(name, doc, labels=[label])
    states = list(known) + ([current] if current is not None and current not in known else [])
    for state in states:
        family.add_metric([state], 1.0 if state == current else 0.0)
    return family


def _datastore_metrics(h: AgentHealth) -> Iterator[Metric]:
    yield GaugeMetricFamily("pycalico_datastore_in_sync",
                            "1 once a complete snapshot of the datastore arrived.",
                            value=float(h.datastore_in_sync))
    conn = h.connection
    yield _one_hot("pycalico_datastore_connection_state", "The datastore connection's state.",
                   "state", CONNECTION_STATES, "connecting" if conn is None else conn.state)
    yield CounterMetricFamily("pycalico_datastore_errors",
                              "Temporary datastore failures seen by the syncer (as of its last "
                              "state change).", value=0 if conn is None else conn.errors)


def _reconcile_metrics(h: AgentHealth) -> Iterator[Metric]:
    family = CounterMetricFamily("pycalico_reconciles", "Reconciles started, by cause.",
                                 labels=["cause"])
    for cause, count in sorted(h.reconciles.items()):
        family.add_metric([cause], count)
    yield family
    yield CounterMetricFamily("pycalico_reconcile_errors", "Reconciles that failed (retried).",
                              value=h.reconcile_errors)


def _route_metrics(h: AgentHealth) -> Iterator[Metric]:
    family = GaugeMetricFamily("pycalico_routes",
                               "Routes the agent programs into the kernel, by kind.", labels=["kind"])
    for kind, count in sorted({**dict.fromkeys(ROUTE_KINDS, 0), **h.routes_by_kind}.items()):
        family.add_metric([kind], count)
    yield family
    yield GaugeMetricFamily("pycalico_route_failures",
                            "Routes the last apply failed to program (retried).",
                            value=len(h.route_failures))
    yield CounterMetricFamily("pycalico_route_writes", "Kernel route writes (add, replace, delete).",
                              value=h.route_writes)
    yield CounterMetricFamily("pycalico_route_dumps", "Full kernel route table dumps.",
                              value=h.route_dumps)


def _bgp_metrics(h: AgentHealth) -> Iterator[Metric]:
    speaker_state = None if h.speaker is None else h.speaker.state
    yield _one_hot("pycalico_bgp_speaker_state", "The BGP speaker (ExaBGP child) state.", "state",
                   SPEAKER_STATES, speaker_state or "stopped")
    peers = GaugeMetricFamily("pycalico_bgp_peers", "Configured BGP peers, by session state.",
                              labels=["state"])
    counts = dict.fromkeys(PEER_STATES, 0)
    for p in h.peers:
        counts[p.state] = counts.get(p.state, 0) + 1
    for state, count in counts.items():
        peers.add_metric([state], count)
    yield peers
    yield GaugeMetricFamily("pycalico_bgp_prefixes_accepted",
                            "Prefixes learned from peers that passed the import filter (best paths).",
                            value=h.prefixes_accepted)
    yield from _bgp_counter_metrics(h.bgp_counters)


def _bgp_counter_metrics(counters: dict[str, int]) -> Iterator[Metric]:
    """The speaker's ``counters()``: ``rejected_<reason>`` and ``malformed`` are rejections by reason;
    ``received`` (when the speaker counts it) is every announcement; any other key is exported as is
    under ``pycalico_bgp_events_total`` rather than dropped."""
    rejected = CounterMetricFamily("pycalico_bgp_prefixes_rejected",
                                   "Announcements rejected, by reason.", labels=["reason"])
    other = CounterMetricFamily("pycalico_bgp_events", "Other speaker counters.", labels=["counter"])
    for key, value in sorted(counters.items()):
        if key.startswith("rejected_"):
            rejected.add_metric([key.removeprefix("rejected_")], value)
        elif key == "malformed":
            rejected.add_metric(["malformed"], value)
        elif key == "received":
            yield CounterMetricFamily("pycalico_bgp_prefixes_received",
                                      "Announcements received from peers.", value=value)
        else:
            other.add_metric([key], value)
    yield rejected
    if other.samples:
        yield other
