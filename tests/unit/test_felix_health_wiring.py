"""The wiring contract of felix.health's docstring, checked against a real (not running) Agent: each
AgentHealth field is filled from state the agent already keeps, and means what the probes need.

``snapshot_of`` is the ``_health`` method the docstring asks the agent to grow; the three values it
takes as arguments are the ones the agent does not keep yet (loop tick, last apply's failures,
whether an apply completed). The reconcile is replaced (our own seam), as in test_felix_agent_loop.
"""
from __future__ import annotations

import asyncio
import ipaddress
import time
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from datastore.memory import MemoryDatastore
from datastore.syncer import Connection, InSync
from felix.agent import Agent, AgentConfig, Backoff
from felix.calc import workload_route
from felix.health import AgentHealth, check_readiness
from felix.metrics import AgentMetrics, count_route_kinds


def snapshot_of(self: Agent, tick: float, routes_applied: bool, route_failures: dict) -> AgentHealth:
    sp = self.speaker
    return AgentHealth(
        loop_tick=tick, datastore_in_sync=self.state.in_sync,
        connection=self.state.connection, bgp_enabled=True,
        speaker=sp.status() if sp else None, peers=tuple(sp.peer_status()) if sp else (),
        routes_applied=routes_applied, route_failures=route_failures,
        reconcile_error=self.last_error[0] if self._error_backoff.failures else None,
        reconciles=dict(self.reconciles), reconcile_errors=self.reconcile_errors,
        routes_by_kind=count_route_kinds(r.reason for r in self._desired.values()),
        route_writes=self.routes.writes, route_dumps=self.routes.dumps,
        bgp_counters=sp.counters() if sp else {},
        prefixes_accepted=len(sp.learned_routes()) if sp else 0)


def make_agent(tmp_path: Path) -> Agent:
    cfg = AgentConfig(node="n1", ipv4=ipaddress.IPv4Interface("10.0.0.1/24"), datastore_type="memory",
                      etcd_endpoints=None, run_dir=tmp_path)
    agent = Agent(cfg, MemoryDatastore())
    agent._error_backoff = Backoff(0.01, 0.02)
    return agent


def metric(agent_health: AgentHealth, name: str, **labels) -> float:
    text = AgentMetrics().render(agent_health).decode()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return s.value
    raise AssertionError(f"{name}{labels} not in metrics")


def test_a_fresh_agent_is_not_ready_and_says_the_datastore_is_connecting(tmp_path):
    h = snapshot_of(make_agent(tmp_path), time.monotonic(), False, {})
    assert check_readiness(h).text() == ("not ready: datastore connecting (no connection yet); "
                                         "routes not applied yet")  # only failing checks are named


def test_in_sync_connected_agent_with_applied_routes_is_ready(tmp_path):
    agent = make_agent(tmp_path)
    agent.state.apply([Connection("connected", time.time()), InSync(7)])
    route = workload_route(ipaddress.IPv4Address("10.244.0.5"), "cali1", "default/pod-1")
    agent._desired = {route.dst: route}
    h = snapshot_of(agent, time.monotonic(), True, {})
    assert check_readiness(h).text() == ("ready: datastore in sync; bgp no peers configured; "
                                         "routes programmed (1)")
    assert metric(h, "pycalico_routes", kind="local_workload") == 1


def test_a_failing_reconcile_shows_until_one_succeeds(tmp_path):
    async def main() -> None:
        agent = make_agent(tmp_path)
        agent.state.apply([Connection("connected", time.time()), InSync(7)])
        outcomes = [RuntimeError("netlink said no"), None]

        async def reconcile() -> None:
            outcome = outcomes.pop(0)
            if outcome is not None:
                raise outcome

        agent._reconcile = reconcile
        await agent._guarded_reconcile({"event"})
        failing = snapshot_of(agent, time.monotonic(), True, {})
        assert check_readiness(failing).text() == (
            "not ready: reconcile failing: RuntimeError: netlink said no")
        assert metric(failing, "pycalico_reconcile_errors_total") == 1
        await agent._guarded_reconcile({"retry"})
        if agent._retry is not None:
            agent._retry.cancel()
        recovered = snapshot_of(agent, time.monotonic(), True, {})
        assert check_readiness(recovered).ok
        assert metric(recovered, "pycalico_reconciles_total", cause="retry") == 1
        assert metric(recovered, "pycalico_reconciles_total", cause="event") == 1

    asyncio.run(main())
