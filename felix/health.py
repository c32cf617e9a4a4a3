"""Health probes (Felix's port 9099) and Prometheus metrics (port 9091) of ``pycalico-node``.

Does I/O: ``HealthServer`` listens on two TCP ports from the agent's own asyncio loop (no threads
that could outlive the agent). The HTTP is ``_serve_http``'s few lines of GET-only HTTP/1.1 on
``asyncio.start_server``, not aiohttp: importing aiohttp cost every node 8 MB of RSS (issue 7's
memory budget; measured with ``python -m bench.node_memory``), for three fixed GET paths. The decisions, ``check_readiness`` and ``check_liveness``, are
pure functions of one ``AgentHealth`` snapshot.

- ``GET /liveness``: 200 ``live`` while the agent's loop answers the snapshot within
  ``snapshot_timeout`` and has ticked within ``stall_after``; else 503 saying which. A loop blocked
  in synchronous code answers nothing at all, which the kubelet's probe timeout counts as a failure.
- ``GET /readiness``: 200 ``ready: ...`` when the datastore is in sync and connected, every
  configured BGP peer is Established (none configured is ready), and the routes are programmed (a
  first apply done, no failed route, the last reconcile did not fail); else 503
  ``not ready: <each failing check and why>``. Both take ``?format=json``.
- ``GET /metrics`` on the metrics port: ``felix.metrics.AgentMetrics``, read from the same snapshot.

Wiring into ``felix.agent.Agent`` (the contract):

1. ``self._tick = time.monotonic()`` in ``__init__`` and at the top of every ``_loop`` iteration;
   ``self._route_failures = dict(result.failed)`` and ``self._routes_applied = True`` in
   ``_schedule_route_retries``.
2. A snapshot method, called on the loop for every probe and scrape (sync or async; keep it
   cheap): ``Agent._health`` in felix/agent.py fills every AgentHealth field from the agent's state
   (tests/unit/test_felix_health_wiring.py checks it against a real, not running, Agent).

3. In ``__init__``: ``self.health = HealthServer(self._health, host="127.0.0.1",
   metrics_host="0.0.0.0")`` (Felix's defaults: FELIX_HEALTHHOST=localhost, FELIX_HEALTHPORT=9099,
   FELIX_PROMETHEUSMETRICSPORT=9091). ``await self.health.start()`` in ``run()`` next to the status
   socket, before the syncer starts (probes answer 503 "datastore connecting" during start-up);
   ``await self.health.stop()`` in ``_shutdown()``.
4. In ``_guarded_reconcile``: ``started = time.monotonic()`` before ``await self._reconcile()`` and,
   in a ``finally``, ``self.health.metrics.observe_reconcile(time.monotonic() - started,
   "+".join(sorted(causes)))``. The CNI server calls ``metrics.observe_cni(command, seconds, ok)``;
   IPAM, when it knows, ``metrics.set_ipam_in_use(pool_cidr, count)``.

>>> check_readiness(AgentHealth(loop_tick=0.0, datastore_in_sync=False, connection=None)).text()
'not ready: datastore connecting (no connection yet); routes not applied yet'
"""
from __future__ import annotations

import asyncio
import inspect
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone

from urllib.parse import parse_qs, urlsplit

from bgp.speaker import PeerStatus, SpeakerStatus
from datastore.syncer import Connection
from felix.metrics import count_route_kinds  # noqa: F401  (part of the wiring contract)

log = logging.getLogger(__name__)

HEALTH_PORT = 9099  # Felix's
METRICS_PORT = 9091  # Felix's
SNAPSHOT_TIMEOUT = 2.0  # well inside a kubelet probe's default 1-10 s timeout window
# The agent's loop wakes at least every TICK_INTERVAL (60 s) even when idle; a full resync of a
# large table may add tens of seconds. Beyond this the loop is stuck, not idle.
STALL_AFTER = 120.0
# What generate_latest() writes by default, and what every Prometheus parses (the library's
# CONTENT_TYPE_LATEST moved to version=1.0.0 in 0.2x, which older servers do not negotiate).
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_SHOWN = 3  # failing peers / routes named in a reason; the rest are counted


@dataclass(frozen=True)
class AgentHealth:
    """What the agent knows right now. Health fields first, then metric-only ones (defaults: zero)."""

    loop_tick: float  # time.monotonic() at the top of the agent loop's latest iteration
    datastore_in_sync: bool
    connection: Connection | None  # None: the syncer has not reported yet (connecting)
    bgp_enabled: bool = True  # False with CALICO_NETWORKING_BACKEND=vxlan/none: BGP not checked
    speaker: SpeakerStatus | None = None  # None: not started yet
    peers: tuple[PeerStatus, ...] = ()
    routes_applied: bool = False  # one route apply has completed since start
    route_failures: Mapping[object, str] = field(default_factory=dict)  # dst -> why, last apply
    reconcile_error: str | None = None  # the latest reconcile's error, None once one succeeds
    reconciles: Mapping[str, int] = field(default_factory=dict)  # by cause
    reconcile_errors: int = 0
    routes_by_kind: Mapping[str, int] = field(default_factory=dict)  # felix.metrics.count_route_kinds
    route_writes: int = 0
    route_dumps: int = 0
    bgp_counters: Mapping[str, int] = field(default_factory=dict)  # Speaker.counters()
    prefixes_accepted: int = 0  # Speaker.learned_count()

    def __post_init__(self) -> None:
        for name in ("reconcile_errors", "route_writes", "route_dumps", "prefixes_accepted"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: {getattr(self, name)} is negative")
        for name in ("reconciles", "routes_by_kind", "bgp_counters"):
            bad = {k: v for k, v in getattr(self, name).items() if v < 0}
            if bad:
                raise ValueError(f"{name}: negative counts {bad}")


@dataclass(frozen=True)
class Check:
    name: str  # datastore | bgp | routes | loop | snapshot
    ok: bool
    detail: str


@dataclass(frozen=True)
class Verdict:
    ok: bool
    checks: tuple[Check, ...]
    good: str  # 'ready' / 'live'

    def text(self) -> str:
        """``ready: a; b`` with every check, or ``not ready: x; y`` with the failing ones only."""
        if self.ok:
            return f"{self.good}: " + "; ".join(c.detail for c in self.checks)
        return f"not {self.good}: " + "; ".join(c.detail for c in self.checks if not c.ok)

    def as_json(self) -> dict:
        return {"status": self.good if self.ok else f"not {self.good}", "ok": self.ok,
                "checks": {c.name: {"ok": c.ok, "detail": c.detail} for c in self.checks}}


def _verdict(good: str, checks: list[Check]) -> Verdict:
    return Verdict(all(c.ok for c in checks), tuple(checks), good)


# -- the decisions (pure) ---------------------------------------------------------------------------

def check_readiness(h: AgentHealth) -> Verdict:
    checks = [_datastore_check(h)]
    if h.bgp_enabled:
        checks.append(_bgp_check(h))
    checks.append(_routes_check(h))
    return _verdict("ready", checks)


def check_liveness(h: AgentHealth, now: float, stall_after: float = STALL_AFTER) -> Verdict:
    """``now`` on the clock of ``h.loop_tick`` (time.monotonic)."""
    age = now - h.loop_tick
    if age > stall_after:
        return _verdict("live", [Check("loop", False, f"agent loop last ticked {age:.0f}s ago "
                                                      f"(limit {stall_after:.0f}s)")])
    return _verdict("live", [Check("loop", True, f"agent loop ticked {max(age, 0):.0f}s ago")])


def _datastore_check(h: AgentHealth) -> Check:
    conn = h.connection
    if conn is None:
        return Check("datastore", False, "datastore connecting (no connection yet)")
    if conn.state != "connected":
        since = datetime.fromtimestamp(conn.since, timezone.utc).isoformat(timespec="seconds")
        why = f": {conn.reason}" if conn.reason else ""
        return Check("datastore", False, f"datastore {conn.state} since {since}{why}")
    if not h.datastore_in_sync:
        return Check("datastore", False, "datastore connected, not in sync yet")
    return Check("datastore", True, "datastore in sync")


def _bgp_check(h: AgentHealth) -> Check:
    if not h.peers:
        return Check("bgp", True, "bgp no peers configured")
    up = [p for p in h.peers if p.state == "up"]
    summary = f"bgp {len(up)}/{len(h.peers)} peers established"
    speaker = h.speaker
    if speaker is None or speaker.state != "running":
        state = "not started" if speaker is None else f"{speaker.state}: {speaker.reason}".rstrip(": ")
        return Check("bgp", False, f"bgp speaker {state}; {summary}")
    down = [p for p in h.peers if p.state != "up"]
    if not down:
        return Check("bgp", True, summary)
    named = ", ".join(f"{p.address} {p.info}" for p in down[:_SHOWN])
    more = f" and {len(down) - _SHOWN} more" if len(down) > _SHOWN else ""
    return Check("bgp", False, f"{summary} (down: {named}{more})")


def _routes_check(h: AgentHealth) -> Check:
    if h.reconcile_error is not None:
        return Check("routes", False, f"reconcile failing: {h.reconcile_error}")
    if not h.routes_applied:
        return Check("routes", False, "routes not applied yet")
    failed = sorted(h.route_failures.items(), key=lambda kv: str(kv[0]))
    if failed:
        named = ", ".join(f"{dst}: {why}" for dst, why in failed[:_SHOWN])
        more = f" and {len(failed) - _SHOWN} more" if len(failed) > _SHOWN else ""
        return Check("routes", False, f"routes {len(failed)} failed ({named}{more})")
    return Check("routes", True, f"routes programmed ({sum(h.routes_by_kind.values())})")


# -- the server (I/O) -------------------------------------------------------------------------------

Snapshot = Callable[[], "AgentHealth | Awaitable[AgentHealth]"]


class NullMetrics:
    """What the agent observes, dropped: metrics are off (Felix's default), so prometheus-client is
    not even imported."""

    def observe_reconcile(self, seconds: float, cause: str) -> None:
        pass

    def observe_cni(self, command: str, seconds: float, ok: bool) -> None:
        pass

    def set_ipam_in_use(self, pool: str, addresses: int) -> None:
        pass


class HealthServer:
    """Serves /liveness and /readiness on ``health_port`` and /metrics on ``metrics_port`` (``None``
    disables one; ``0`` picks a free port, read back from the attribute after ``start()``)."""

    def __init__(self, snapshot: Snapshot, *, host: str = "0.0.0.0", metrics_host: str | None = None,
                 health_port: int | None = HEALTH_PORT, metrics_port: int | None = METRICS_PORT,
                 metrics: AgentMetrics | None = None, snapshot_timeout: float = SNAPSHOT_TIMEOUT,
                 stall_after: float = STALL_AFTER,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if snapshot_timeout <= 0 or stall_after <= 0:
            raise ValueError(f"snapshot_timeout ({snapshot_timeout}) and stall_after "
                             f"({stall_after}) must be positive")
        self._snapshot, self.host = snapshot, host
        # Felix binds health to localhost (FELIX_HEALTHHOST) and metrics to all addresses.
        self.metrics_host = host if metrics_host is None else metrics_host
        self.health_port, self.metrics_port = health_port, metrics_port
        if metrics is not None:
            self.metrics = metrics
        elif metrics_port is not None:
            from felix.metrics import AgentMetrics  # prometheus-client: only when metrics are served
            self.metrics = AgentMetrics()
        else:
            self.metrics = NullMetrics()
        self._timeout, self._stall_after, self._clock = snapshot_timeout, stall_after, clock
        self._servers: list[asyncio.Server] = []

    async def start(self) -> None:
        try:
            if self.health_port is not None:
                self.health_port = await self._serve(self.host, self.health_port, {
                    "/liveness": self._liveness, "/readiness": self._readiness})
            if self.metrics_port is not None:
                self.metrics_port = await self._serve(self.metrics_host, self.metrics_port,
                                                      {"/metrics": self._metrics})
        except BaseException:
            await self.stop()  # the health port must not stay bound when the metrics port fails
            raise
        log.info("health and metrics listening", extra={
            "host": self.host, "health_port": self.health_port,
            "metrics_host": self.metrics_host, "metrics_port": self.metrics_port})

    async def stop(self) -> None:
        servers, self._servers = self._servers, []
        for server in servers:
            server.close()
            await server.wait_closed()

    async def _serve(self, host: str, port: int, routes: dict[str, Handler]) -> int:
        async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await _serve_http(reader, writer, routes)
        try:
            server = await asyncio.start_server(on_client, host, port, reuse_address=True,
                                                limit=MAX_REQUEST_HEAD)
        except OSError as exc:
            raise OSError(exc.errno, f"health server: cannot listen on {host}:{port}: "
                                     f"{exc.strerror}") from exc
        self._servers.append(server)
        return server.sockets[0].getsockname()[1]  # the real port when 0 was asked

    async def _take(self) -> AgentHealth:
        result = self._snapshot()
        if inspect.isawaitable(result):
            result = await asyncio.wait_for(result, self._timeout)
        if not isinstance(result, AgentHealth):
            raise TypeError(f"snapshot: returned {type(result).__name__}, not AgentHealth")
        return result

    async def _take_or_why(self) -> tuple[AgentHealth | None, str]:
        """The snapshot, or None and why there is none (a failed probe says so; it never raises)."""
        try:
            return await self._take(), ""
        except TimeoutError:
            log.warning("health snapshot timed out", extra={"timeout": self._timeout})
            return None, f"agent did not answer the health snapshot within {self._timeout:g}s"
        except Exception as exc:  # noqa: BLE001 - reported as the failing check, and logged
            log.error("health snapshot failed", exc_info=True)
            return None, f"health snapshot failed: {type(exc).__name__}: {exc}"

    async def _decide(self, good: str, decide: Callable[[AgentHealth], Verdict]) -> Verdict:
        h, why = await self._take_or_why()
        return decide(h) if h is not None else _verdict(good, [Check("snapshot", False, why)])

    async def _liveness(self, query: dict[str, list[str]]) -> Response:
        verdict = await self._decide(
            "live", lambda h: check_liveness(h, self._clock(), self._stall_after))
        return _respond(query, verdict)

    async def _readiness(self, query: dict[str, list[str]]) -> Response:
        return _respond(query, await self._decide("ready", check_readiness))

    async def _metrics(self, query: dict[str, list[str]]) -> Response:
        h, why = await self._take_or_why()
        if h is None:
            return Response(503, (why + "\n").encode())
        return Response(200, self.metrics.render(h), METRICS_CONTENT_TYPE)


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"


Handler = Callable[[dict[str, list[str]]], Awaitable[Response]]
MAX_REQUEST_HEAD = 8192  # request line and headers; a probe sends ~100 bytes
REQUEST_TIMEOUT = 5.0  # a client that sends nothing is dropped, never holds a task forever
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            503: "Service Unavailable"}


async def _serve_http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      routes: dict[str, Handler]) -> None:
    """One GET (or HEAD) per connection, answered with ``Connection: close``: what the kubelet's
    probes and Prometheus need. Anything else gets 400/404/405; a slow or oversized request
    head is dropped."""
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_TIMEOUT)
        method, target, _ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ValueError,
            ConnectionError):
        writer.close()
        return
    url = urlsplit(target)
    handler = routes.get(url.path)
    if method not in ("GET", "HEAD"):
        resp = Response(405, f"method: {method} is not allowed (GET only)\n".encode())
    elif handler is None:
        resp = Response(404, f"path: {url.path} is not served here\n".encode())
    else:
        resp = await handler(parse_qs(url.query))
    reason = _REASONS.get(resp.status, "")
    writer.write(f"HTTP/1.1 {resp.status} {reason}\r\nContent-Type: {resp.content_type}\r\n"
                 f"Content-Length: {len(resp.body)}\r\nConnection: close\r\n\r\n".encode())
    if method != "HEAD":
        writer.write(resp.body)
    try:
        await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


def _respond(query: dict[str, list[str]], verdict: Verdict) -> Response:
    status = 200 if verdict.ok else 503
    fmt = query.get("format", [None])[-1]
    if fmt == "json":
        return Response(status, (json.dumps(verdict.as_json()) + "\n").encode(),
                        "application/json; charset=utf-8")
    if fmt is not None:
        return Response(400, f"format: {fmt!r} is not supported (use 'json')\n".encode())
    return Response(status, (verdict.text() + "\n").encode())
