"""The wiring contract of felix.health's docstring, checked against a real (not running) Agent: each
AgentHealth field is filled from state the agent already keeps, and means what the probes need.

``snapshot_of`` calls the agent's own ``_health`` with the three values its loop keeps (loop tick,
last apply's failures, whether an apply completed) set as given. The reconcile is replaced (our
own seam), as in test_felix_agent_loop.
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
from felix.metrics import AgentMetrics


def snapshot_of(agent: Agent, tick: float, routes_applied: bool, route_failures: dict) -> AgentHealth:
    """The agent's own ``_health()``, with the three values its loop keeps set as given."""
    agent._tick, agent._routes_applied, agent._route_failures = tick, routes_applied, route_failures
    return agent._health()


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
