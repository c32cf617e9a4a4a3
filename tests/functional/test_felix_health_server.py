"""HealthServer over real loopback HTTP: probes answer 200/503 with their reasons, /metrics parses,
and a hung agent fails liveness within the snapshot deadline. The snapshot callable is our own seam."""
from __future__ import annotations

import asyncio
import json
import socket
import time
import urllib.error
import urllib.request
from datetime import datetime, timezone
from ipaddress import IPv4Address

import pytest
from prometheus_client.parser import text_string_to_metric_families

from bgp.speaker import PeerStatus, SpeakerStatus
from datastore.syncer import Connection
from felix.health import AgentHealth, HealthServer

T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)


def health(**changes) -> AgentHealth:
    fields = dict(
        loop_tick=time.monotonic(), datastore_in_sync=True,
        connection=Connection("connected", T0.timestamp()), speaker=SpeakerStatus("running", T0, ""),
        peers=(PeerStatus(IPv4Address("10.0.0.2"), "n2", "mesh", "up", T0, "Established"),),
        routes_applied=True, routes_by_kind={"local_workload": 2, "local_block": 1, "learned": 1},
        reconciles={"event": 3, "resync": 1, "retry": 0})
    return AgentHealth(**{**fields, **changes})


def get(port: int, path: str, timeout: float = 5.0) -> tuple[int, str, str]:
    """(status, content type, body) of GET http://127.0.0.1:<port><path>."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as resp:
            return resp.status, resp.headers["Content-Type"], resp.read().decode()
    except urllib.error.HTTPError as err:
        with err:
            return err.code, err.headers["Content-Type"], err.read().decode()


@pytest.fixture
def serve(loop_thread):
    """``serve(snapshot, **kw)`` starts a HealthServer on free loopback ports; stopped afterwards."""
    servers: list[HealthServer] = []

    def start(snapshot, **kw) -> HealthServer:
        server = HealthServer(snapshot, host="127.0.0.1", health_port=0, metrics_port=0, **kw)
        servers.append(server)
        loop_thread.run(server.start())
        return server

    try:
        yield start
    finally:
        for server in servers:
            loop_thread.run(server.stop())


def test_ready_and_live_answer_200_with_a_short_body(serve):
    server = serve(lambda: health())
    assert server.health_port not in (0, 9099) and server.metrics_port not in (0, 9091)
    assert get(server.health_port, "/liveness")[::2] == (200, "live: agent loop ticked 0s ago\n")
    assert get(server.health_port, "/readiness")[::2] == (
        200, "ready: datastore in sync; bgp 1/1 peers established; routes programmed (4)\n")


def test_not_ready_is_503_naming_each_failing_check(serve):
    conn = Connection("unreachable", T0.timestamp(), "connection refused")
    peers = (PeerStatus(IPv4Address("10.0.0.2"), "n2", "mesh", "up", T0, "Established"),
             PeerStatus(IPv4Address("10.0.0.3"), "n3", "mesh", "active", T0, "Active"))
    server = serve(lambda: health(connection=conn, peers=peers))
    status, _, body = get(server.health_port, "/readiness")
    assert status == 503
    assert body == ("not ready: datastore unreachable since 2026-01-02T03:04:05+00:00: connection "
                    "refused; bgp 1/2 peers established (down: 10.0.0.3 Active)\n")
    # Not ready is not dead: the agent is working, kubelet must not restart it.
    assert get(server.health_port, "/liveness")[0] == 200


def test_json_format(serve):
    server = serve(lambda: health(route_failures={"10.244.0.7/32": "no such device cali1"}))
    status, ctype, body = get(server.health_port, "/readiness?format=json")
    assert (status, ctype) == (503, "application/json; charset=utf-8")
    doc = json.loads(body)
    assert doc["status"] == "not ready" and doc["checks"]["datastore"]["ok"] is True
    assert doc["checks"]["routes"] == {"ok": False,
                                       "detail": "routes 1 failed (10.244.0.7/32: no such device cali1)"}
    assert get(server.health_port, "/readiness?format=xml")[::2] == (
        400, "format: 'xml' is not supported (use 'json')\n")


def test_stale_loop_tick_fails_liveness(serve):
    server = serve(lambda: health(loop_tick=time.monotonic() - 30), stall_after=10)
    status, _, body = get(server.health_port, "/liveness")
    assert status == 503 and body == "not live: agent loop last ticked 30s ago (limit 10s)\n"


def test_hung_snapshot_fails_liveness_within_its_deadline(serve, loop_thread):
    async def hung() -> AgentHealth:
        await asyncio.Event().wait()  # e.g. waiting on a lock held by a stuck reconcile
        raise AssertionError("unreachable")

    server = serve(hung, snapshot_timeout=0.3)
    started = time.monotonic()
    status, _, body = get(server.health_port, "/liveness", timeout=5)
    assert status == 503
    assert body == "not live: agent did not answer the health snapshot within 0.3s\n"
    assert time.monotonic() - started < 2.0
    assert get(server.health_port, "/readiness")[0] == 503
    assert get(server.metrics_port, "/metrics")[0] == 503


def test_a_blocked_loop_answers_nothing_which_the_probe_timeout_counts(serve):
    """What no in-loop deadline can catch: synchronous code blocking the loop. The kubelet's
    timeoutSeconds turns the silence into a liveness failure; the server answers once unblocked."""
    blocked = {"for": 1.0}

    def snapshot() -> AgentHealth:
        time.sleep(blocked.pop("for", 0))
        return health()

    server = serve(snapshot)
    with pytest.raises(TimeoutError):
        get(server.health_port, "/liveness", timeout=0.3)
    assert get(server.health_port, "/liveness")[0] == 200


def test_async_snapshot_and_a_failing_one(serve):
    async def ok() -> AgentHealth:
        await asyncio.sleep(0)
        return health()

    assert get(serve(ok).health_port, "/readiness")[0] == 200
    server = serve(lambda: {"not": "a snapshot"})
    status, _, body = get(server.health_port, "/liveness")
    assert status == 503 and body == ("not live: health snapshot failed: TypeError: snapshot: "
                                      "returned dict, not AgentHealth\n")


def test_metrics_parse_with_values_from_the_snapshot_and_observations(serve):
    state = {"h": health()}
    server = serve(lambda: state["h"])
    server.metrics.observe_reconcile(0.02, "event")
    server.metrics.observe_cni("ADD", 0.04, ok=True)
    status, ctype, body = get(server.metrics_port, "/metrics")
    assert status == 200 and ctype.startswith("text/plain; version=0.0.4")
    families = {f.name: f for f in text_string_to_metric_families(body)}
    for name in ("pycalico_reconciles", "pycalico_reconcile_duration_seconds", "pycalico_routes",
                 "pycalico_route_failures", "pycalico_bgp_peers", "pycalico_bgp_prefixes_accepted",
                 "pycalico_bgp_prefixes_rejected", "pycalico_cni_requests",
                 "pycalico_cni_request_duration_seconds", "pycalico_ipam_addresses_in_use",
                 "pycalico_datastore_connection_state"):
        assert name in families, name
    values = {(s.name, tuple(sorted(s.labels.items()))): s.value
              for f in families.values() for s in f.samples}
    assert values[("pycalico_reconciles_total", (("cause", "event"),))] == 3
    assert values[("pycalico_bgp_peers", (("state", "up"),))] == 1
    assert values[("pycalico_cni_requests_total", (("command", "ADD"), ("result", "ok")))] == 1
    assert values[("process_resident_memory_bytes", ())] > 10 * 2**20  # this Python process
    # Read at scrape time: a changed agent shows on the next scrape.
    state["h"] = health(reconciles={"event": 8})
    assert 'pycalico_reconciles_total{cause="event"} 8.0' in get(server.metrics_port, "/metrics")[2]


def test_probe_paths_are_not_on_the_metrics_port_and_vice_versa(serve):
    server = serve(lambda: health())
    assert get(server.metrics_port, "/readiness")[0] == 404
    assert get(server.health_port, "/metrics")[0] == 404


def test_stop_frees_both_ports(loop_thread):
    server = HealthServer(lambda: health(), host="127.0.0.1", health_port=0, metrics_port=0)
    loop_thread.run(server.start())
    ports = (server.health_port, server.metrics_port)
    loop_thread.run(server.stop())
    for port in ports:
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", port)) != 0, f"port {port} still listening"


def test_a_taken_port_fails_start_naming_it_and_releases_the_other(loop_thread):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = HealthServer(lambda: health(), host="127.0.0.1", health_port=0, metrics_port=port)
        with pytest.raises(OSError, match=f"cannot listen on 127.0.0.1:{port}"):
            loop_thread.run(server.start())
        assert server._servers == []


def test_metrics_can_listen_on_another_address_than_the_probes(loop_thread):
    server = HealthServer(lambda: health(), host="127.0.0.1", metrics_host="127.0.0.2",
                          health_port=0, metrics_port=0)
    loop_thread.run(server.start())
    try:
        with urllib.request.urlopen(f"http://127.0.0.2:{server.metrics_port}/metrics", timeout=5) as r:
            assert r.status == 200
        with pytest.raises(urllib.error.URLError, match="refused"):
            get(server.metrics_port, "/metrics")  # 127.0.0.1
        assert get(server.health_port, "/liveness")[0] == 200
    finally:
        loop_thread.run(server.stop())


def _raw(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(request)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


def test_only_get_and_head_are_served_and_garbage_is_dropped(serve):
    """The probes' HTTP is our own few lines (aiohttp cost 8 MB per node): other methods get 405,
    HEAD the headers alone, and a request head that is not HTTP gets the connection closed."""
    server = serve(lambda: health())
    post = _raw(server.health_port, b"POST /readiness HTTP/1.1\r\nHost: x\r\n\r\n")
    assert post.startswith(b"HTTP/1.1 405 ") and b"method: POST is not allowed" in post
    head = _raw(server.health_port, b"HEAD /liveness HTTP/1.1\r\nHost: x\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and head.endswith(b"\r\n\r\n")
    body = get(server.health_port, "/liveness")[2].encode()
    assert f"Content-Length: {len(body)}\r\n".encode() in head  # the GET body's length, not sent
    assert _raw(server.health_port, b"\x00garbage\r\n\r\n") == b""
    over = _raw(server.health_port, b"GET /liveness HTTP/1.1\r\nX: " + b"a" * 9000 + b"\r\n\r\n")
    assert over == b""
    assert get(server.health_port, "/liveness")[0] == 200  # and the server still answers
