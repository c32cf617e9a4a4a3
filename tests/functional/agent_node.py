"""One agent node for the functional tests that run the ``pycalico-node`` process: a node
namespace (``NODE_IP``/24 on eth0, a veth to a fabric namespace at ``FABRIC_IP``; a workload veth
``cali0123456789a`` up), a real etcd inside it on a free loopback port, seeded with resources,
and the agent with its run dir and log under the test's tmp_path.

``etcd_node`` does the usual start (namespace, etcd, resources) in one call; the parts are here
for the tests that need another order (an agent started before its datastore, say).
"""
from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import pytest

from felix.status import query
from lab.netns import in_netns
from tests.helpers import etcd_healthy, free_port, veth_between, wait_for

BIN = Path(sys.executable).parent
NODE_IP, FABRIC_IP = "10.98.0.1", "10.98.0.254"
WORKLOAD_IF = "cali0123456789a"
POOL = {"kind": "IPPool", "metadata": {"name": "pool"}, "spec": {"cidr": "10.244.0.0/16"}}


def block(cidr: str, node: str) -> dict:
    """An IPAMBlock for ``cidr`` affine to ``node``, named as Calico names blocks."""
    return {"kind": "IPAMBlock", "metadata": {"name": cidr.replace(".", "-").replace("/", "-")},
            "spec": {"cidr": cidr, "affinity": f"host:{node}"}}


def routes(ns: str) -> str:
    return subprocess.run(["ip", "-n", ns, "route"], capture_output=True, text=True,
                          check=True).stdout


def node_namespace(netns, short: str) -> tuple[str, str]:
    """A node namespace (``NODE_IP``/24 on eth0, towards the fabric namespace ``<ns>f`` at
    ``FABRIC_IP``) with the workload interface ``WORKLOAD_IF`` up; returns (namespace, node name)."""
    node_ns, fab = netns(short), netns(f"{short}f")
    veth_between(node_ns, "eth0", f"{NODE_IP}/24", fab, "eth0", f"{FABRIC_IP}/24")
    subprocess.run(["ip", "-n", node_ns, "link", "add", WORKLOAD_IF, "type", "veth",
                    "peer", "name", "podside"], check=True)
    subprocess.run(["ip", "-n", node_ns, "link", "set", WORKLOAD_IF, "up"], check=True)
    return node_ns, node_ns.lower()


def start_etcd_in(procs, ns: str, url: str, data_dir: Path) -> subprocess.Popen:
    """A real etcd listening on ``url`` inside ``ns``; returns once it is healthy."""
    etcd = procs.add(subprocess.Popen(
        ["ip", "netns", "exec", ns, "etcd", "--data-dir", str(data_dir),
         "--listen-client-urls", url, "--advertise-client-urls", url,
         "--listen-peer-urls", f"http://127.0.0.1:{free_port()}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    wait_for(lambda: in_netns(ns, etcd_healthy, url), timeout=20, what="etcd in the namespace")
    return etcd


def _create(url: str, docs: list[dict]) -> None:
    import datastore
    from crds import load

    ds = datastore.connect("etcdv3", etcd_endpoints=url)
    try:
        for doc in docs:
            ds.create(load({"apiVersion": "projectcalico.org/v3", **doc}))
    finally:
        ds.close()


def create(ns: str, url: str, *docs: dict) -> None:
    """Create ``docs`` (projectcalico.org/v3 resources without their apiVersion) in the etcd at
    ``url``, reached from namespace ``ns``."""
    in_netns(ns, _create, url, list(docs))


@dataclass(frozen=True)
class EtcdNode:
    ns: str
    node: str  # the node's name (the namespace's, lower-case)
    fabric: str  # the namespace at the other end of eth0
    url: str  # etcd's client URL, inside ``ns``
    etcd: subprocess.Popen


def etcd_node(netns, procs, tmp_path: Path, short: str,
              docs: Callable[[str], Iterable[dict]] = lambda node: ()) -> EtcdNode:
    """``node_namespace``, then etcd in it (data under tmp_path/etcd) holding ``docs(node)``."""
    node_ns, node = node_namespace(netns, short)
    url = f"http://127.0.0.1:{free_port()}"
    etcd = start_etcd_in(procs, node_ns, url, tmp_path / "etcd")
    create(node_ns, url, *docs(node))
    return EtcdNode(node_ns, node, f"{node_ns}f", url, etcd)


def start_agent(procs, node_ns: str, node: str, url: str, tmp_path: Path,
                umask: int | None = None, env: dict[str, str] | None = None) -> subprocess.Popen:
    """``pycalico-node`` in ``node_ns`` (address ``NODE_IP``/24), run dir and log under tmp_path;
    ``env``: added to ours."""
    with open(tmp_path / "agent.log", "ab") as log:
        return procs.add(subprocess.Popen(
            ["ip", "netns", "exec", node_ns, str(BIN / "pycalico-node"), "--name", node,
             "--ip", f"{NODE_IP}/24", "--etcd-endpoints", url, "--run-dir", str(tmp_path / "run")],
            stdout=log, stderr=log, env={**os.environ, **(env or {})},
            preexec_fn=None if umask is None else lambda: os.umask(umask)))


def wait_for_agent(agent: subprocess.Popen, log_path: Path, predicate, timeout: float, what: str):
    """``wait_for``; on a timeout the failure says what the agent was doing: running (and the CPU
    seconds it has used: a starved agent and a stuck one look alike otherwise) or its exit code,
    and the end of its log."""
    try:
        return wait_for(predicate, timeout, what=what)
    except pytest.fail.Exception:
        if agent.poll() is None:
            fields = Path(f"/proc/{agent.pid}/stat").read_text().rpartition(")")[2].split()
            cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
            state = f"still running, {cpu:.2f} CPU-s used"
        else:
            state = f"exited with {agent.returncode}"
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-40:])
        pytest.fail(f"timed out after {timeout}s waiting for {what}; the agent is {state}; "
                    f"the end of its log:\n{tail}")


def status_of(node: str, tmp_path: Path) -> dict:
    """The agent's ``status`` topic (what ``pycalicoctl node status`` shows)."""
    return query(node, "status", path=tmp_path / "run" / "status.sock")
