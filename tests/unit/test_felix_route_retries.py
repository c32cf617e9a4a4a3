"""The agent's timed route retries: none for routes that only wait for their device (the route
table wakes the agent when it appears), so a pod deleted veth-first costs no retry -- at 100k
routes a retry is a full diff."""
from __future__ import annotations

import asyncio
import ipaddress
from pathlib import Path

from datastore.memory import MemoryDatastore
from felix.agent import Agent, AgentConfig
from felix.calc import dst_key
from felix.dataplane import ApplyResult

POD = ipaddress.IPv4Network("10.244.1.5/32")
BLOCK = ipaddress.IPv4Network("10.244.2.0/26")


def make_agent(tmp_path: Path) -> Agent:
    cfg = AgentConfig(node="n1", ipv4=ipaddress.IPv4Interface("10.0.0.1/24"), datastore_type="memory",
                      etcd_endpoints=None, run_dir=tmp_path)
    return Agent(cfg, MemoryDatastore())


def test_routes_waiting_for_their_device_get_no_timed_retry(tmp_path):
    async def main():
        agent = make_agent(tmp_path)
        waiting = ApplyResult(failed={dst_key(POD): "ENODEV: device cali0123456789a does not exist"},
                              awaiting_device={dst_key(POD)})
        agent._schedule_route_retries(waiting)
        none_for_waiting, shown = agent._retry, dict(agent._route_failures)
        other = ApplyResult(failed={**waiting.failed, dst_key(BLOCK): "ENETUNREACH: Network is unreachable"},
                            awaiting_device={dst_key(POD)})
        agent._schedule_route_retries(other)
        retry_for_other = agent._retry is not None
        if agent._retry is not None:
            agent._retry.cancel()
        return none_for_waiting, shown, retry_for_other

    none_for_waiting, shown, retry_for_other = asyncio.run(main())
    assert none_for_waiting is None and shown == {POD: "ENODEV: device cali0123456789a does not exist"}
    assert retry_for_other
