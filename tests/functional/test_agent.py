"""The agent process in a namespace against a real etcd: the data-flow rules of DESIGN.md.

Nothing is written to the kernel before the datastore is in sync; routes of another proto are never
touched; once in sync our routes match the datastore (stale ones of ours swept); on SIGTERM the
agent leaves its routes for the next agent to adopt.
"""
from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from felix.status import query
from lab.netns import in_netns
from tests.helpers import etcd_healthy, free_port, stop_process, veth_between, wait_for

BIN = Path(sys.executable).parent


def routes(ns: str) -> str:
    return subprocess.run(["ip", "-n", ns, "route"], capture_output=True, text=True,
                          check=True).stdout


def _seed(url: str, node: str) -> None:
    import datastore
    from crds import load

    ds = datastore.connect("etcdv3", etcd_endpoints=url)
    v3 = "projectcalico.org/v3"
    for doc in (
        {"kind": "IPPool", "metadata": {"name": "pool"}, "spec": {"cidr": "10.244.0.0/16"}},
        {"kind": "IPAMBlock", "metadata": {"name": "10-244-1-0-26"},
         "spec": {"cidr": "10.244.1.0/26", "affinity": f"host:{node}"}},
        {"kind": "WorkloadEndpoint",
         "metadata": {"name": f"{node}-k8s-pod--a-eth0", "namespace": "default"},
         "spec": {"node": node, "pod": "pod-a", "interfaceName": "cali0123456789a",
                  "ipNetworks": ["10.244.1.5/32"]}},
    ):
        ds.create(load({"apiVersion": v3, **doc}))
    ds.close()


def test_agent_waits_for_sync_and_owns_only_its_routes(netns, procs, tmp_path):
    node_ns, fab = netns("agent"), netns("fab")
    node = node_ns.lower()
    veth_between(node_ns, "eth0", "10.98.0.1/24", fab, "eth0", "10.98.0.254/24")
    subprocess.run(["ip", "-n", node_ns, "link", "add", "cali0123456789a", "type", "veth",
                    "peer", "name", "podside"], check=True)
    subprocess.run(["ip", "-n", node_ns, "link", "set", "cali0123456789a", "up"], check=True)
    # Left by someone else (proto static) and by a previous agent of ours (proto 80, now stale).
    subprocess.run(["ip", "-n", node_ns, "route", "add", "10.244.9.0/26", "via", "10.98.0.254",
                    "proto", "static"], check=True)
    subprocess.run(["ip", "-n", node_ns, "route", "add", "10.244.8.0/26", "via", "10.98.0.254",
                    "proto", "80"], check=True)
    url = f"http://127.0.0.1:{free_port()}"
    log_path = tmp_path / "agent.log"
    with open(log_path, "wb") as log:
        agent = procs.add(subprocess.Popen(
            ["ip", "netns", "exec", node_ns, str(BIN / "pycalico-node"), "--name", node,
             "--ip", "10.98.0.1/24", "--etcd-endpoints", url, "--run-dir", str(tmp_path / "run")],
            stdout=log, stderr=log))
    # The datastore is down: the agent is up and retrying, and has written nothing.
    wait_for(lambda: "datastore unavailable" in log_path.read_text(), timeout=30,
             what="the agent to report the datastore unavailable")
    before = routes(node_ns)
    assert "10.244.8.0/26 via 10.98.0.254 dev eth0 proto 80" in before
    assert "blackhole" not in before

    etcd = procs.add(subprocess.Popen(
        ["ip", "netns", "exec", node_ns, "etcd", "--data-dir", str(tmp_path / "etcd"),
         "--listen-client-urls", url, "--advertise-client-urls", url,
         "--listen-peer-urls", f"http://127.0.0.1:{free_port()}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    wait_for(lambda: in_netns(node_ns, etcd_healthy, url), timeout=20, what="etcd in the namespace")
    in_netns(node_ns, _seed, url, node)

    def converged() -> bool:
        table = routes(node_ns)
        return ("blackhole 10.244.1.0/26 proto 80" in table
                and "10.244.1.5 dev cali0123456789a proto 80 scope link" in table
                and "10.244.8.0/26" not in table)

    wait_for(converged, timeout=30, what="blackhole + workload route written, stale route swept")
    assert "10.244.9.0/26 via 10.98.0.254 dev eth0 proto static" in routes(node_ns)
    status = query(node, "status", path=tmp_path / "run" / "status.sock")
    assert status["datastore_in_sync"] and status["peers"] == []

    agent.send_signal(signal.SIGTERM)
    assert agent.wait(timeout=15) == 0
    after = routes(node_ns)
    assert "blackhole 10.244.1.0/26 proto 80" in after  # left for the next agent to adopt
    assert "10.244.9.0/26 via 10.98.0.254 dev eth0 proto static" in after
    stop_process(etcd)
