"""The thin plugin (system python3, a real subprocess) against a CNIServer in the test process.

The server runs on a LoopThread moved into the lab's node namespace (``setns`` is per thread, and
its worker threads inherit it), so the veths it makes land where the agent's would; it shares one
datastore connection (through the lab's relay) across requests, as the agent would pass its own.
The thin plugin runs from the root namespace: it only needs the socket path.
"""
from __future__ import annotations

import ipaddress
import json
import os
import shutil
import socket
import stat
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from pyroute2 import netns as pyroute2_netns

import cni.ipam_plugin
import datastore
from cni.names import handle_id, host_ifname, wep_name
from cni.server import CNIServer, socket_path
from ipam import IPAM
from tests.functional.test_cni_plugin import BIN, NETWORK, NODE, _allocations, _ip, lab  # noqa: F401
from tests.helpers import LoopThread

pytestmark = pytest.mark.root

THIN = str(Path(__file__).resolve().parents[2] / "cni" / "thin.py")
SYSTEM_PYTHON = "/usr/bin/python3"  # not the venv: proves the plugin needs the stdlib only
NOBODY = 65534


class Agent:
    """A CNIServer on a loop thread in the node namespace; the thin plugin as a subprocess."""

    def __init__(self, lab, run_root: Path, monkeypatch) -> None:
        self.lab, self.run_root = lab, run_root
        monkeypatch.setattr(cni.ipam_plugin, "RUN_ROOT", run_root)  # the node flock, beside us
        self.ds = datastore.connect("etcdv3", etcd_endpoints=lab.relay_url)
        self.ds.list("IPPool")  # connected from the root namespace before any worker uses it
        self.path = socket_path(run_root, NODE)
        self.loop = LoopThread()
        self.loop.call(pyroute2_netns.setns, lab.node, 0)
        self.added: list = []  # on_added calls: where the agent writes the pod's /32
        self.fail_added = False
        self.server = CNIServer(self.path, self.ds, NODE, on_added=self._on_added)
        self.loop.run(self.server.start())

    def _on_added(self, host: str, address) -> None:
        if self.fail_added:
            raise OSError("route write failed (test)")
        self.added.append((host, address))

    def close(self) -> None:
        try:
            self.loop.run(self.server.stop())
            assert self.loop.leftover_tasks() == set()
        finally:
            self.loop.close()
            self.ds.close()

    def cni(self, command: str, container: str, netns_path: str, pod: str = "pod-1",
            conf: dict | None = None, user: int | None = None, plugin: str = THIN,
            timeout: str = "30", cni_path: str = BIN) -> tuple[int, dict | None, str]:
        env = {"CNI_COMMAND": command, "CNI_CONTAINERID": container, "CNI_NETNS": netns_path,
               "CNI_IFNAME": "eth0", "CNI_PATH": cni_path, "PYCALICO_RUN_ROOT": str(self.run_root),
               "PYCALICO_CNI_TIMEOUT": timeout,
               "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={pod}"}
        argv = [SYSTEM_PYTHON, "-IS", plugin]
        if user is not None:
            argv = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *argv]
        proc = subprocess.run(argv, input=json.dumps(conf or self.lab.conf()).encode(), env=env,
                              capture_output=True, timeout=60)
        assert "Traceback" not in proc.stderr.decode(), proc.stderr.decode()
        out = json.loads(proc.stdout) if proc.stdout.strip() else None
        return proc.returncode, out, proc.stderr.decode()


@pytest.fixture
def agent(lab, tmp_path, monkeypatch):
    a = Agent(lab, tmp_path / "run", monkeypatch)
    try:
        yield a
    finally:
        a.close()


def test_add_check_del_through_the_agent(agent, lab):
    pod_ns = lab.netns("pod")
    path, host = f"/var/run/netns/{pod_ns}", host_ifname("default", "pod-1")
    assert stat.S_IMODE(agent.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(agent.path.parent.stat().st_mode) == 0o700

    # No pycalico-ipam on CNI_PATH: the exec path would fail; the agent does IPAM in-process.
    rc, result, err = agent.cni("ADD", "c1", path, cni_path="/nonexistent")
    assert rc == 0, (result, err)
    addr = ipaddress.ip_interface(result["ips"][0]["address"])
    assert addr.ip in ipaddress.ip_network("10.244.0.0/16") and addr.network.prefixlen == 32
    assert [i["name"] for i in result["interfaces"]] == [host, "eth0"]
    assert agent.added == [(host, addr.ip)]  # the agent writes the /32 before kubelet hears back
    # The veth is in the node's namespace (not the test's), the pod end has the address.
    assert host in lab.links(lab.node) and host not in _root_links()
    assert f"inet {addr}" in _ip(pod_ns, "addr", "show", "eth0")
    assert lab.sysctl(f"net/ipv4/conf/{host}/proxy_arp") == "1"
    wep = lab.ds.get("WorkloadEndpoint", wep_name(NODE, "pod-1", "eth0"), "default")
    assert wep.spec.container_id == "c1" and wep.spec.ip_networks == [str(addr)]
    assert IPAM(lab.ds).addresses(handle_id(NETWORK, "c1")) == [addr.ip]
    # The IPAM was done in-process under the node's flock (the exec'd plugin's lock file).
    assert stat.S_IMODE((agent.run_root / NODE / "ipam.lock").stat().st_mode) == 0o600

    # A repeated ADD: same answer, same veth, still one address.
    ifindex = lab.links(lab.node)[host]["ifindex"]
    agent.fail_added = True  # a failed route write at ADD is not an ADD failure
    rc, again, err = agent.cni("ADD", "c1", path)
    assert (rc, again) == (0, result), err
    agent.fail_added = False
    assert lab.links(lab.node)[host]["ifindex"] == ifindex and _allocations(lab.ds) == 1

    assert agent.cni("CHECK", "c1", path)[:2] == (0, None)
    _ip(pod_ns, "addr", "flush", "dev", "eth0")
    rc, out, err = agent.cni("CHECK", "c1", path)
    assert rc == 1 and out["code"] == 103 and "eth0" in out["msg"], (out, err)

    assert agent.cni("DEL", "c1", path)[:2] == (0, None)
    lab.nothing_left("c1", pod_ns)
    assert agent.cni("DEL", "c1", path)[:2] == (0, None)  # idempotent
    assert agent.server.requests == 6

    # DEL after the pod's namespace is gone, and for a container never added: both succeed.
    rc, again, err = agent.cni("ADD", "c2", path, pod="pod-2")
    assert rc == 0, (again, err)
    subprocess.run(["ip", "netns", "delete", pod_ns], check=True)
    assert agent.cni("DEL", "c2", path, pod="pod-2")[:2] == (0, None)
    assert IPAM(lab.ds).addresses(handle_id(NETWORK, "c2")) == []
    assert lab.ds.list("WorkloadEndpoint").items == []
    assert agent.cni("DEL", "never-added", "/var/run/netns/nope", pod="ghost")[:2] == (0, None)


def test_errors_come_back_as_cni_errors(agent, lab):
    pod_ns = lab.netns("pod")
    path = f"/var/run/netns/{pod_ns}"
    rc, out, _ = agent.cni("ADD", "c1", "/var/run/netns/does-not-exist")
    assert rc == 1 and out["code"] == 3 and "does-not-exist" in out["msg"]
    rc, out, _ = agent.cni("ADD", "c1", path, conf=lab.conf(pools=["no-such-pool"]))
    assert rc == 1 and out["code"] == 7, out
    rc, out, _ = agent.cni("ADD", "c1", path, conf={**lab.conf(), "cniVersion": "0.4.0",
                                                    "ipam": {"type": "no-such-ipam"}})
    assert rc == 1 and out["code"] == 7 and "no-such-ipam" in out["msg"]
    assert out["cniVersion"] == "0.4.0"
    lab.nothing_left("c1", pod_ns)


def test_an_exec_plugin_and_the_agent_share_the_node_lock(agent, lab):
    """The old exec'd plugin and the agent on one node: distinct addresses, one block."""
    spaces = {p: lab.netns(p) for p in ("a", "b")}
    rc, ra, err = agent.cni("ADD", "c-a", f"/var/run/netns/{spaces['a']}", pod="a")
    assert rc == 0, (ra, err)
    rc, rb, err = lab.cni("ADD", "c-b", f"/var/run/netns/{spaces['b']}", pod="b")
    assert rc == 0, (rb, err)
    assert ra["ips"] != rb["ips"] and len(lab.ds.list("IPAMBlock").items) == 1


def test_version_is_answered_without_an_agent(tmp_path):
    env = {"CNI_COMMAND": "VERSION", "PYCALICO_RUN_ROOT": str(tmp_path)}
    proc = subprocess.run([SYSTEM_PYTHON, "-IS", THIN], input=b'{"cniVersion": "0.3.1"}', env=env,
                          capture_output=True, check=True)
    assert json.loads(proc.stdout) == {"cniVersion": "0.3.1",
                                       "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0"]}
    # Executed as kubelet does, through its "#!/usr/bin/python3 -IS" line.
    assert os.access(THIN, os.X_OK)
    proc = subprocess.run([THIN], input=b'{"cniVersion": "1.0.0"}', env=env, capture_output=True,
                          check=True)
    assert json.loads(proc.stdout)["cniVersion"] == "1.0.0"


def test_agent_down_is_try_again_later(agent, lab):
    pod_ns = lab.netns("pod")
    agent.loop.run(agent.server.stop())
    assert not agent.path.exists()
    rc, out, err = agent.cni("ADD", "c1", f"/var/run/netns/{pod_ns}")
    assert rc == 1 and out["code"] == 11, (out, err)
    assert out["msg"] == f"pycalico agent not ready on this node, retry ({agent.path})"
    # A socket file left by a killed agent: connection refused, same answer.
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(agent.path))
    stale.close()
    rc, out, _ = agent.cni("ADD", "c1", f"/var/run/netns/{pod_ns}")
    assert rc == 1 and out["code"] == 11 and "ConnectionRefusedError" in out["details"]
    lab.nothing_left("c1", pod_ns)
    agent.path.unlink()
    agent.loop.run(agent.server.start())  # the agent is back: the same call now works
    rc, out, err = agent.cni("ADD", "c1", f"/var/run/netns/{pod_ns}")
    assert rc == 0, (out, err)
    assert agent.cni("DEL", "c1", f"/var/run/netns/{pod_ns}")[0] == 0


def test_a_non_root_caller_is_refused_by_its_credentials(lab, monkeypatch):
    """Even with the socket and its directory opened to everyone, uid 65534 gets a refusal."""
    loose = Path(tempfile.mkdtemp(prefix="pyc-cni-"))
    try:
        a = Agent(lab, loose / "run", monkeypatch)
        try:
            pod_ns = lab.netns("pod")
            plugin = shutil.copy(THIN, loose / "thin.py")
            for p in (loose, loose / "run", loose / "run" / NODE):
                os.chmod(p, 0o755)
            os.chmod(plugin, 0o644)
            rc, out, err = a.cni("ADD", "c1", f"/var/run/netns/{pod_ns}", user=NOBODY,
                                 plugin=str(plugin))
            # The socket's own mode (0600) stops it first: EACCES, reported as such.
            assert rc == 1 and out["code"] == 5 and "must run as root" in out["msg"], (out, err)
            os.chmod(a.path, 0o666)  # now only the peer-credential check stands in the way
            rc, out, err = a.cni("ADD", "c1", f"/var/run/netns/{pod_ns}", user=NOBODY,
                                 plugin=str(plugin))
            assert rc == 1 and out["code"] == 5, (out, err)
            assert out["msg"].startswith("permission denied: the pycalico agent serves"), out
            assert "uid 65534" in out["details"]
            assert a.server.requests == 0
            lab.nothing_left("c1", pod_ns)
        finally:
            a.close()
    finally:
        shutil.rmtree(loose, ignore_errors=True)


def test_a_silent_agent_times_out_as_try_again_later(agent, lab):
    """The agent accepts but never answers (hung): the plugin gives up after its timeout, code 11."""
    agent.loop.run(agent.server.stop())
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(agent.path))
    listener.listen(1)
    try:
        started = time.monotonic()
        rc, out, _ = agent.cni("ADD", "c1", "/var/run/netns/x", timeout="1")
        assert rc == 1 and out["code"] == 11 and "timed out" in out["details"], out
        assert time.monotonic() - started < 10
    finally:
        listener.close()
        agent.path.unlink()


def _root_links() -> set[str]:
    data = json.loads(subprocess.run(["ip", "-j", "link", "show"], capture_output=True,
                                     check=True).stdout)
    return {link["ifname"] for link in data}


def test_parallel_adds_through_the_agent(agent, lab):
    from concurrent.futures import ThreadPoolExecutor

    spaces = {f"p{i}": lab.netns(f"p{i}") for i in range(8)}
    with ThreadPoolExecutor(8) as pool:
        runs = list(pool.map(lambda p: agent.cni("ADD", f"c-{p}", f"/var/run/netns/{spaces[p]}",
                                                 pod=p), spaces))
    assert [rc for rc, _, _ in runs] == [0] * 8, [(out, err) for _, out, err in runs]
    assert len({r["ips"][0]["address"] for _, r, _ in runs}) == 8
    assert len(lab.ds.list("IPAMBlock").items) == 1
    assert len(lab.ds.list("WorkloadEndpoint").items) == 8
    assert len([n for n in lab.links(lab.node) if n.startswith("cali")]) == 8


def test_every_log_level_through_the_agent(agent, lab, caplog):
    """Calico's log_level values are accepted (any case); the agent logs through its own logger."""
    from tests.functional.test_cni_plugin import LOG_LEVELS

    pod_ns = lab.netns("pod")
    path = f"/var/run/netns/{pod_ns}"
    caplog.set_level("INFO", logger="cni")
    for level in LOG_LEVELS:
        conf = lab.conf(log_level=level)
        for command in ("ADD", "CHECK", "DEL"):
            rc, out, err = agent.cni(command, f"c-{level}", path, conf=conf)
            assert rc == 0, (level, command, out, err)
        lab.nothing_left(f"c-{level}", pod_ns)
    assert [r for r in caplog.records if r.getMessage() == "cni ADD"]
    rc, out, _ = agent.cni("ADD", "c1", path, conf=lab.conf(log_level="loud"))
    assert rc == 1 and out["code"] == 7 and "log_level" in out["msg"]
