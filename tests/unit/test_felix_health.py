"""Readiness and liveness as pure functions of AgentHealth, and the metrics text read from it."""
from __future__ import annotations

import doctest
import math
from dataclasses import replace
from datetime import datetime, timezone
from ipaddress import IPv4Address, IPv4Network

import pytest
from prometheus_client.parser import text_string_to_metric_families

import felix.health
import felix.metrics
from bgp.speaker import PeerStatus, SpeakerStatus
from datastore.syncer import Connection
from felix.health import AgentHealth, check_liveness, check_readiness
from felix.metrics import AgentMetrics, count_route_kinds, route_kind

T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
RUNNING = SpeakerStatus("running", T0, "")


def peer(n: int, state: str = "up", info: str = "Established") -> PeerStatus:
    return PeerStatus(IPv4Address(f"10.0.0.{n}"), f"node{n}", "mesh", state, T0, info)


def healthy(**changes) -> AgentHealth:
    base = AgentHealth(
        loop_tick=100.0, datastore_in_sync=True, connection=Connection("connected", T0.timestamp()),
        speaker=RUNNING, peers=(peer(2), peer(3)), routes_applied=True,
        routes_by_kind={"local_workload": 4, "local_block": 1, "learned": 2})
    return replace(base, **changes)


def test_all_good_is_ready_and_says_what_it_checked():
    v = check_readiness(healthy())
    assert v.ok
    assert v.text() == "ready: datastore in sync; bgp 2/2 peers established; routes programmed (7)"


def test_unreachable_datastore_names_state_since_and_reason():
    conn = Connection("unreachable", T0.timestamp(), "connection refused", errors=3)
    v = check_readiness(healthy(connection=conn))
    assert not v.ok
    assert v.text() == ("not ready: datastore unreachable since 2026-01-02T03:04:05+00:00: "
                        "connection refused")
    assert v.as_json()["checks"]["datastore"]["ok"] is False
    assert v.as_json()["checks"]["bgp"]["ok"] is True


def test_connected_but_not_in_sync_is_not_ready():
    v = check_readiness(healthy(datastore_in_sync=False))
    assert v.text() == "not ready: datastore connected, not in sync yet"


def test_in_sync_but_disconnected_is_not_ready():
    # ClusterState.in_sync stays True while the datastore is away: connection decides.
    v = check_readiness(healthy(connection=Connection("failing", T0.timestamp(), "Boom: x")))
    assert not v.ok and "datastore failing since" in v.text() and "Boom: x" in v.text()


def test_one_peer_down_names_it_with_its_state():
    v = check_readiness(healthy(peers=(peer(2), peer(3, "active", "Active connect refused"))))
    assert v.text() == ("not ready: bgp 1/2 peers established "
                        "(down: 10.0.0.3 Active connect refused)")


def test_many_peers_down_are_counted_not_all_listed():
    peers = tuple(peer(n, "idle", "Idle") for n in range(2, 8))
    text = check_readiness(healthy(peers=peers)).text()
    assert "bgp 0/6 peers established" in text and "and 3 more" in text
    assert "10.0.0.4" in text and "10.0.0.5" not in text


def test_zero_peers_is_ready_even_before_the_speaker_starts():
    v = check_readiness(healthy(peers=(), speaker=None))
    assert v.ok and "bgp no peers configured" in v.text()


def test_peers_with_a_restarting_speaker_are_not_ready():
    sp = SpeakerStatus("restarting", T0, "exabgp exited 1")
    v = check_readiness(healthy(speaker=sp))
    assert v.text() == "not ready: bgp speaker restarting: exabgp exited 1; bgp 2/2 peers established"


def test_bgp_disabled_is_not_checked():
    v = check_readiness(healthy(bgp_enabled=False, speaker=None, peers=(peer(2, "idle", "Idle"),)))
    assert v.ok and "bgp" not in v.as_json()["checks"]


def test_failed_routes_are_named():
    failures = {IPv4Network("10.244.1.5/32"): "no such device cali123"}
    v = check_readiness(healthy(route_failures=failures))
    assert v.text() == "not ready: routes 1 failed (10.244.1.5/32: no such device cali123)"


def test_routes_not_applied_yet_and_failing_reconcile_are_not_ready():
    assert check_readiness(healthy(routes_applied=False)).text() == "not ready: routes not applied yet"
    v = check_readiness(healthy(reconcile_error="NetlinkError: (1, 'EPERM')"))
    assert v.text() == "not ready: reconcile failing: NetlinkError: (1, 'EPERM')"


def test_every_failing_check_is_reported_together():
    v = check_readiness(healthy(connection=None, peers=(peer(2, "idle", "Idle"),),
                                route_failures={"10.0.0.9/32": "x"}))
    assert [c.name for c in v.checks if not c.ok] == ["datastore", "bgp", "routes"]


def test_liveness_follows_the_loop_tick():
    h = healthy(loop_tick=1000.0)
    assert check_liveness(h, now=1010.0, stall_after=120.0).ok
    v = check_liveness(h, now=1121.0, stall_after=120.0)
    assert not v.ok and v.text() == "not live: agent loop last ticked 121s ago (limit 120s)"


@pytest.mark.parametrize("name", ["reconcile_errors", "route_writes", "route_dumps",
                                  "prefixes_accepted"])
def test_negative_counts_are_rejected_naming_the_field(name):
    with pytest.raises(ValueError, match=name):
        healthy(**{name: -1})


def test_negative_count_in_a_mapping_is_rejected_naming_the_field():
    with pytest.raises(ValueError, match="reconciles: negative counts {'event': -1}"):
        healthy(reconciles={"event": -1})


def test_route_kinds_come_from_calc_reasons():
    assert route_kind("local workload default/pod-1") == "local_workload"
    assert route_kind("local block") == "local_block"
    assert route_kind("learned from 10.0.0.2") == "learned"
    assert route_kind("vxlan to n2") == "vxlan" and route_kind("ipip to n2") == "ipip"
    assert route_kind("direct to n2 (block affinity)") == "direct"
    assert route_kind("something new") == "other"
    assert count_route_kinds(["local block", "learned from a", "learned from b"]) == {
        "local_workload": 0, "local_block": 1, "learned": 2, "vxlan": 0, "ipip": 0, "direct": 0}


def test_metrics_off_imports_no_prometheus_client():
    """Memory (issue 7): with metrics off (Felix's default) the agent never loads prometheus-client
    (2.3 MB per node); observations go to a no-op, and the metrics port is not served."""
    import subprocess
    import sys
    code = ("import sys; from felix.health import HealthServer, NullMetrics; "
            "s = HealthServer(lambda: None, metrics_port=None); s.metrics.observe_reconcile(0.1, 'event'); "
            "print(isinstance(s.metrics, NullMetrics), 'prometheus_client' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "False"]


def test_module_docstrings_run():
    for module in (felix.health, felix.metrics):
        assert doctest.testmod(module).failed == 0


# -- metrics ---------------------------------------------------------------------------------------

def samples(text: str) -> dict[tuple[str, tuple], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def test_metrics_read_the_snapshot_at_scrape_time():
    h = healthy(reconciles={"event": 5, "resync": 2, "retry": 0}, reconcile_errors=1,
                route_writes=9, route_dumps=3, route_failures={"10.0.0.9/32": "x"},
                peers=(peer(2), peer(3, "active", "Active")), prefixes_accepted=4,
                bgp_counters={"rejected_outside_pools": 2, "rejected_own_block": 1, "malformed": 1},
                connection=Connection("unreachable", 0.0, "refused", errors=6))
    got = samples(AgentMetrics().render(h).decode())
    assert got[("pycalico_reconciles_total", (("cause", "event"),))] == 5
    assert got[("pycalico_reconciles_total", (("cause", "resync"),))] == 2
    assert got[("pycalico_reconcile_errors_total", ())] == 1
    assert got[("pycalico_routes", (("kind", "local_workload"),))] == 4
    assert got[("pycalico_routes", (("kind", "learned"),))] == 2
    assert got[("pycalico_route_failures", ())] == 1
    assert got[("pycalico_route_writes_total", ())] == 9
    assert got[("pycalico_bgp_peers", (("state", "up"),))] == 1
    assert got[("pycalico_bgp_peers", (("state", "active"),))] == 1
    assert got[("pycalico_bgp_peers", (("state", "idle"),))] == 0
    assert got[("pycalico_bgp_prefixes_accepted", ())] == 4
    assert got[("pycalico_bgp_prefixes_rejected_total", (("reason", "outside_pools"),))] == 2
    assert got[("pycalico_bgp_prefixes_rejected_total", (("reason", "malformed"),))] == 1
    assert got[("pycalico_bgp_speaker_state", (("state", "running"),))] == 1
    assert got[("pycalico_bgp_speaker_state", (("state", "stopped"),))] == 0
    assert got[("pycalico_datastore_connection_state", (("state", "unreachable"),))] == 1
    assert got[("pycalico_datastore_connection_state", (("state", "connected"),))] == 0
    assert got[("pycalico_datastore_errors_total", ())] == 6


def test_a_second_scrape_reads_the_new_snapshot_not_a_copy():
    m = AgentMetrics()
    m.render(healthy(reconciles={"event": 1}))
    got = samples(m.render(healthy(reconciles={"event": 7})).decode())
    assert got[("pycalico_reconciles_total", (("cause", "event"),))] == 7


def test_unknown_states_and_counters_are_exported_not_dropped():
    h = healthy(peers=(peer(2, "weird", "Weird"),), bgp_counters={"received": 10, "odd": 2})
    got = samples(AgentMetrics().render(h).decode())
    assert got[("pycalico_bgp_peers", (("state", "weird"),))] == 1
    assert got[("pycalico_bgp_prefixes_received_total", ())] == 10
    assert got[("pycalico_bgp_events_total", (("counter", "odd"),))] == 2


def test_observed_histograms_and_counters():
    m = AgentMetrics()
    m.observe_reconcile(0.03, "event+retry")
    m.observe_cni("ADD", 0.05, ok=True)
    m.observe_cni("add", 0.2, ok=False)
    m.observe_cni("BOGUS", 0.01, ok=False)
    m.set_ipam_in_use("10.244.0.0/16", 12)
    got = samples(m.render(healthy()).decode())
    assert got[("pycalico_reconcile_duration_seconds_count", (("cause", "event+retry"),))] == 1
    assert math.isclose(got[("pycalico_reconcile_duration_seconds_sum", (("cause", "event+retry"),))],
                        0.03)
    assert got[("pycalico_cni_requests_total", (("command", "ADD"), ("result", "ok")))] == 1
    assert got[("pycalico_cni_requests_total", (("command", "ADD"), ("result", "error")))] == 1
    assert got[("pycalico_cni_requests_total", (("command", "other"), ("result", "error")))] == 1
    assert got[("pycalico_cni_request_duration_seconds_bucket",
                (("command", "ADD"), ("le", "0.06")))] == 1
    assert got[("pycalico_cni_request_duration_seconds_count", (("command", "ADD"),))] == 2
    assert got[("pycalico_ipam_addresses_in_use", (("pool", "10.244.0.0/16"),))] == 12


@pytest.mark.parametrize("bad", [-0.1, float("nan")])
def test_bad_durations_are_rejected_naming_the_field(bad):
    with pytest.raises(ValueError, match="seconds"):
        AgentMetrics().observe_cni("ADD", bad, ok=True)


def test_two_agents_in_one_process_have_separate_registries():
    a, b = AgentMetrics(), AgentMetrics()
    a.observe_cni("DEL", 0.01, ok=True)
    got = samples(b.render(healthy()).decode())
    assert ("pycalico_cni_requests_total", (("command", "DEL"), ("result", "ok"))) not in got
