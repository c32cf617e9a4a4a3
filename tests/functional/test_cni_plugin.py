"""The real ``pycalico-cni`` / ``pycalico-ipam`` console scripts against real namespaces and etcd.

Layout: a "node" namespace (where the plugin runs, via ``ip netns exec``) with etcd on its own
loopback and an uplink veth to a "fabric" namespace holding its default route (proxy ARP for
169.254.1.1 answers only when the node routes that address through another interface); a "pod"
namespace per pod. The test process reads etcd through a relay: a listening socket on the root
loopback whose upstream sockets are opened inside the node namespace, so nothing of the lab is
addressed from the root namespace.
"""
from __future__ import annotations

import io
import ipaddress
import json
import logging
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from pyroute2 import netns as pyroute2_netns

import datastore
from cni import dataplane, plugin, runtime
from cni.errors import DATAPLANE_FAILURE, CNIError
from cni.names import handle_id, host_ifname, wep_name
from crds import IPPool, ObjectMeta
from ipam import IPAM
from tests.helpers import etcd_healthy, veth_between, wait_for

BIN = str(Path(sys.executable).parent)  # the venv running the tests holds our console scripts
NODE = "node1"
NETWORK = "k8s-pod-network"
ETCD_PORT = 2379

pytestmark = pytest.mark.root


class NetnsRelay:
    """127.0.0.1:<port> in the root namespace -> 127.0.0.1:<target> inside ``ns``."""

    def __init__(self, ns: str, target: int) -> None:
        self.ns, self.target = ns, target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.socks: list[socket.socket] = [self.listener]
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        pyroute2_netns.setns(self.ns, flags=0)  # this thread only: upstream sockets live in ns
        while True:
            try:
                down, _ = self.listener.accept()
            except OSError:
                return  # closed
            try:
                up = socket.create_connection(("127.0.0.1", self.target), timeout=5)
            except OSError:
                down.close()  # upstream not listening yet: the client retries
                continue
            up.settimeout(None)
            self.socks += [down, up]
            for a, b in ((down, up), (up, down)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the other side went away; the relay is closed with the test

    def close(self) -> None:
        for s in self.socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()


@pytest.fixture
def lab(netns, procs, tmp_path):
    node, fabric = netns("node"), netns("fab")
    veth_between(node, "eth0", "10.99.0.1/24", fabric, "eth0", "10.99.0.254/24")
    _ip(node, "route", "add", "default", "via", "10.99.0.254")
    url = f"http://127.0.0.1:{ETCD_PORT}"
    etcd = procs.add(subprocess.Popen(  # ip netns exec execs etcd: this PID is etcd's
        ["ip", "netns", "exec", node, "etcd", "--name", "t", "--data-dir", str(tmp_path / "etcd"),
         "--listen-client-urls", url, "--advertise-client-urls", url,
         "--listen-peer-urls", "http://127.0.0.1:2380",
         "--initial-advertise-peer-urls", "http://127.0.0.1:2380",
         "--initial-cluster", "t=http://127.0.0.1:2380", "--log-level", "error"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    relay = NetnsRelay(node, ETCD_PORT)
    wait_for(lambda: etcd_healthy(f"http://127.0.0.1:{relay.port}", timeout=1), timeout=20, what="etcd in the node namespace")
    relay_url = f"http://127.0.0.1:{relay.port}"
    ds = datastore.connect("etcdv3", etcd_endpoints=relay_url)
    ds.create(IPPool(metadata=ObjectMeta(name="default-ipv4-ippool"),
                     spec={"cidr": "10.244.0.0/16", "blockSize": 26}))
    ds.create(IPPool(metadata=ObjectMeta(name="tiny"), spec={"cidr": "10.250.0.0/30",
                                                              "blockSize": 30}))
    try:
        yield Lab(node, netns, ds, url, tmp_path / "run", etcd.pid, relay_url)
    finally:
        ds.close()
        relay.close()


class Lab:
    def __init__(self, node: str, netns, ds, url: str, run_root: Path, etcd_pid: int,
                 relay_url: str) -> None:
        self.node, self.netns, self.ds, self.url = node, netns, ds, url
        self.run_root = run_root  # the IPAM lock lives here, not in the machine's /run/pycalico
        self.etcd_pid = etcd_pid
        self.relay_url = relay_url  # etcd as seen from the root namespace (the test process)

    def conf(self, pools=("default-ipv4-ippool",), **extra) -> dict:
        return {"cniVersion": "1.0.0", "name": NETWORK, "type": "pycalico-cni",
                "datastore_type": "etcdv3", "etcd_endpoints": self.url, "nodename": NODE,
                "ipam": {"type": "pycalico-ipam", "ipv4_pools": list(pools)}, **extra}

    def cni(self, command: str, container: str, netns_path: str, pod: str = "pod-1",
            conf: dict | None = None, ifname: str = "eth0",
            umask: int = -1) -> tuple[int, dict | None, str]:
        env = {"PATH": os.environ["PATH"], "CNI_COMMAND": command, "CNI_CONTAINERID": container,
               "CNI_NETNS": netns_path, "CNI_IFNAME": ifname, "CNI_PATH": BIN,
               "PYCALICO_RUN_ROOT": str(self.run_root),
               "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={pod}"}
        proc = subprocess.run(["ip", "netns", "exec", self.node, f"{BIN}/pycalico-cni"],
                              input=json.dumps(conf or self.conf()).encode(), env=env,
                              capture_output=True, timeout=60, umask=umask)
        out = json.loads(proc.stdout) if proc.stdout.strip() else None
        return proc.returncode, out, proc.stderr.decode()

    def links(self, ns: str) -> dict[str, dict]:
        data = json.loads(_ip(ns, "-j", "link", "show"))
        return {link["ifname"]: link for link in data}

    def sysctl(self, path: str) -> str:
        return subprocess.run(["ip", "netns", "exec", self.node, "cat", f"/proc/sys/{path}"],
                              capture_output=True, text=True, check=True).stdout.strip()

    def nothing_left(self, container: str, pod_ns: str, pod: str = "pod-1") -> None:
        assert not [n for n in self.links(self.node) if n.startswith("cali")]
        assert "eth0" not in self.links(pod_ns)
        assert IPAM(self.ds).addresses(handle_id(NETWORK, container)) == []
        assert [w.name for w in self.ds.list("WorkloadEndpoint").items] == []


def test_add_check_del(lab):
    pod_ns = lab.netns("pod")
    path = f"/var/run/netns/{pod_ns}"
    rc, result, err = lab.cni("ADD", "c1", path)
    assert rc == 0, (result, err)
    host = host_ifname("default", "pod-1")
    [ip_entry] = result["ips"]
    addr = ipaddress.ip_interface(ip_entry["address"])
    assert addr.network.prefixlen == 32 and addr.ip in ipaddress.ip_network("10.244.0.0/26")
    assert [i["name"] for i in result["interfaces"]] == [host, "eth0"]
    assert result["interfaces"][1]["sandbox"] == path and ip_entry["interface"] == 1

    # Pod side: /32 on eth0, the link-scope gateway route, then the default via it; lo up.
    pod_links = lab.links(pod_ns)
    assert pod_links["eth0"]["operstate"] in ("UP", "UNKNOWN") and "UP" in pod_links["lo"]["flags"]
    assert f"inet {addr}" in _ip(pod_ns, "addr", "show", "eth0")
    routes = [r.strip() for r in _ip(pod_ns, "route", "show").splitlines()]
    assert "169.254.1.1 dev eth0 scope link" in routes
    assert "default via 169.254.1.1 dev eth0" in routes

    # Host side: Calico's MAC and sysctls; no route to the pod (felix owns it).
    assert lab.links(lab.node)[host]["address"] == "ee:ee:ee:ee:ee:ee"
    assert lab.sysctl(f"net/ipv4/conf/{host}/proxy_arp") == "1"
    assert lab.sysctl(f"net/ipv4/conf/{host}/forwarding") == "1"
    assert lab.sysctl(f"net/ipv4/neigh/{host}/proxy_delay") == "0"
    assert str(addr.ip) not in _ip(lab.node, "route", "show")

    wep = lab.ds.get("WorkloadEndpoint", wep_name(NODE, "pod-1", "eth0"), "default")
    assert wep.name == "node1-k8s-pod--1-eth0"
    assert (wep.spec.node, wep.spec.orchestrator, wep.spec.pod, wep.spec.endpoint) == (
        NODE, "k8s", "pod-1", "eth0")
    assert wep.spec.container_id == "c1" and wep.spec.ip_networks == [str(addr)]
    assert wep.spec.interface_name == host
    assert wep.spec.mac == pod_links["eth0"]["address"] == result["interfaces"][1]["mac"]

    # Felix's part, simulated: the /32 route on the host side. Then the node reaches the pod.
    _ip(lab.node, "route", "add", str(addr), "dev", host, "scope", "link")
    wait_for(lambda: _ping(lab.node, addr.ip), timeout=10, what="node -> pod ping")

    rc, out, err = lab.cni("CHECK", "c1", path)
    assert (rc, out) == (0, None), err

    rc, out, err = lab.cni("DEL", "c1", path)
    assert (rc, out) == (0, None), err
    lab.nothing_left("c1", pod_ns)
    rc, out, err = lab.cni("DEL", "c1", path)
    assert (rc, out) == (0, None), err


def test_two_pods_on_one_node_reach_each_other(lab):
    pods = {}
    for name in ("pod-a", "pod-b"):
        ns = lab.netns(name)
        rc, result, err = lab.cni("ADD", f"c-{name}", f"/var/run/netns/{ns}", pod=name)
        assert rc == 0, (result, err)
        addr = ipaddress.ip_interface(result["ips"][0]["address"])
        _ip(lab.node, "route", "add", str(addr), "dev", host_ifname("default", name))
        pods[name] = (ns, addr.ip)
    assert pods["pod-a"][1] != pods["pod-b"][1]
    subprocess.run(["ip", "netns", "exec", lab.node, "sysctl", "-qw", "net.ipv4.ip_forward=1"],
                   check=True)
    wait_for(lambda: _ping(pods["pod-a"][0], pods["pod-b"][1]), timeout=10, what="pod-a -> pod-b")
    # DEL for an unknown container, and DEL after the pod's namespace is gone, both succeed.
    assert lab.cni("DEL", "never-added", "/var/run/netns/nope", pod="ghost")[0] == 0
    subprocess.run(["ip", "netns", "delete", pods["pod-b"][0]], check=True)
    rc, out, err = lab.cni("DEL", "c-pod-b", f"/var/run/netns/{pods['pod-b'][0]}", pod="pod-b")
    assert rc == 0, (out, err)
    assert IPAM(lab.ds).addresses(handle_id(NETWORK, "c-pod-b")) == []
    wait_for(lambda: host_ifname("default", "pod-b") not in lab.links(lab.node), timeout=5,
             what="the host end of a deleted namespace's veth to go")


LOG_LEVELS = [case(level) for level in ("debug", "info", "warning", "error")
              for case in (str.lower, str.upper)]


def test_add_check_del_at_every_log_level(lab):
    """Regression: at info (Calico's manifest) and debug every ADD and DEL failed with a KeyError."""
    pod_ns = lab.netns("pod")
    path = f"/var/run/netns/{pod_ns}"
    for level in LOG_LEVELS:
        conf = lab.conf(log_level=level)
        for command in ("ADD", "CHECK", "DEL"):
            rc, out, err = lab.cni(command, f"c-{level}", path, conf=conf)
            assert rc == 0, (level, command, out, err)
            # stderr holds the logs: the "cni ADD" line shows at debug and info only.
            assert (f"cni {command}" in err) == (level.lower() in ("debug", "info")), (level, err)
        lab.nothing_left(f"c-{level}", pod_ns)


def test_unknown_log_level_is_a_config_error(lab):
    pod_ns = lab.netns("pod")
    rc, out, err = lab.cni("ADD", "c1", f"/var/run/netns/{pod_ns}", conf=lab.conf(log_level="loud"))
    assert rc == 1 and out["code"] == 7 and "log_level" in out["msg"], (out, err)
    lab.nothing_left("c1", pod_ns)


def test_log_file_and_ipam_lock_are_private_under_umask_000(lab, tmp_path):
    """Under umask 000 the log file, the node's run directory and its IPAM lock are not world-open."""
    pod_ns = lab.netns("pod")
    log_file = tmp_path / "log" / "cni.log"
    conf = lab.conf(log_level="info", log_file_path=str(log_file))
    rc, out, err = lab.cni("ADD", "c1", f"/var/run/netns/{pod_ns}", conf=conf, umask=0)
    assert rc == 0, (out, err)
    mode = lambda p: oct(stat.S_IMODE(p.stat().st_mode))  # noqa: E731
    assert (mode(log_file), mode(log_file.parent)) == ("0o600", "0o700")
    assert (mode(lab.run_root), mode(lab.run_root / NODE)) == ("0o700", "0o700")
    assert mode(lab.run_root / NODE / "ipam.lock") == "0o600"
    # Both plugins (main and delegated IPAM) append to the same file; stdout stays the result.
    text = log_file.read_text()
    assert text.count("cni ADD") == 2 and "cni_args=" in text
    assert lab.cni("DEL", "c1", f"/var/run/netns/{pod_ns}", conf=conf, umask=0)[0] == 0


def _allocations(ds) -> int:
    return sum(idx is not None for b in ds.list("IPAMBlock").items for idx in b.spec.allocations)


def test_repeated_add_is_idempotent(lab):
    """Regression: a second ADD for the same container took a second address and re-plumbed the pod."""
    pod_ns = lab.netns("pod")
    path, host = f"/var/run/netns/{pod_ns}", host_ifname("default", "pod-1")
    wep = lambda: lab.ds.get("WorkloadEndpoint", wep_name(NODE, "pod-1", "eth0"), "default")  # noqa: E731
    rc, first, err = lab.cni("ADD", "c1", path)
    assert rc == 0, (first, err)
    address = ipaddress.ip_interface(first["ips"][0]["address"]).ip
    ifindex, revision = lab.links(lab.node)[host]["ifindex"], wep().metadata.resource_version

    rc, again, err = lab.cni("ADD", "c1", path)
    assert (rc, again) == (0, first), err
    assert IPAM(lab.ds).addresses(handle_id(NETWORK, "c1")) == [address]
    assert _allocations(lab.ds) == 1
    assert lab.links(lab.node)[host]["ifindex"] == ifindex, "a wired pod was torn down"
    assert wep().metadata.resource_version == revision, "an unchanged endpoint was rewritten"

    # Half wired (the pod lost its default route): wired again, with the same address.
    _ip(pod_ns, "route", "del", "default")
    rc, third, err = lab.cni("ADD", "c1", path)
    assert rc == 0 and third["ips"] == first["ips"], (third, err)
    assert lab.links(lab.node)[host]["ifindex"] != ifindex
    assert wep().spec.mac == lab.links(pod_ns)["eth0"]["address"] == third["interfaces"][1]["mac"]
    assert _allocations(lab.ds) == 1
    assert lab.cni("CHECK", "c1", path)[0] == 0
    assert lab.cni("DEL", "c1", path)[0] == 0
    lab.nothing_left("c1", pod_ns)


FREEZE = 13.0  # seconds: longer than the plugins' 10 s etcd timeout, so the first release fails


def test_failed_add_releases_its_address_after_an_etcd_outage(lab, monkeypatch, caplog):
    """Regression: the undo of a failed ADD called the IPAM DEL once; with etcd briefly unreachable
    that failed and the address leaked. Here the wiring fails and etcd is frozen (SIGSTOP) at that
    moment; the plugin runs in-process so the failure is injected at our seam, the IPAM plugin it
    delegates to is the real pycalico-ipam process."""
    pod_ns = lab.netns("pod")
    assert Path(f"/proc/{lab.etcd_pid}/comm").read_text().strip() == "etcd"
    env = {**os.environ, "CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_IFNAME": "eth0",
           "CNI_NETNS": f"/var/run/netns/{pod_ns}", "CNI_PATH": BIN,
           "PYCALICO_RUN_ROOT": str(lab.run_root),
           "CNI_ARGS": "K8S_POD_NAMESPACE=default;K8S_POD_NAME=pod-1"}
    conf = {**lab.conf(), "etcd_endpoints": lab.relay_url}
    thawed = threading.Event()
    thaw = threading.Timer(FREEZE, lambda: (os.kill(lab.etcd_pid, signal.SIGCONT), thawed.set()))

    def wire_while_etcd_freezes(*args, **kwargs):
        os.kill(lab.etcd_pid, signal.SIGSTOP)
        thaw.start()
        raise CNIError(DATAPLANE_FAILURE, "injected: wiring failed")

    monkeypatch.setattr(dataplane, "wire_pod", wire_while_etcd_freezes)
    caplog.set_level(logging.WARNING)
    out = io.StringIO()
    try:
        rc = runtime.run({"ADD": plugin.cmd_add}, stdin=json.dumps(conf).encode(), env=env,
                         stdout=out, configure_logging=False)
    finally:
        thaw.cancel()
        os.kill(lab.etcd_pid, signal.SIGCONT)
    result = json.loads(out.getvalue())
    assert rc == 1 and result["code"] == DATAPLANE_FAILURE and "injected" in result["msg"]
    wait_for(lambda: etcd_healthy(lab.relay_url, timeout=1), timeout=10, what="etcd answering")
    assert IPAM(lab.ds).addresses(handle_id(NETWORK, "c1")) == [], "the address leaked"
    assert _allocations(lab.ds) == 0
    # And it was the outage the release rode out: a first attempt failed, a retry succeeded later.
    assert [r for r in caplog.records if "retrying" in r.getMessage()], "no release met the outage"
    assert thawed.is_set(), "the ADD returned while etcd was still frozen"


def _exhaust_tiny(lab):
    ipam = IPAM(lab.ds)
    for i in range(4):
        ipam.assign(node=NODE, handle=f"filler-{i}", pools=["tiny"])
    return ["tiny"]


@pytest.mark.parametrize("case,code", [
    ("missing-netns", 3), ("unknown-pool", 7), ("exhausted-pool", 100), ("ifname-taken", 101),
    ("bad-nodename", 7), ("bad-mtu", 7),
])
def test_failed_add_leaves_nothing(lab, case, code):
    pod_ns = lab.netns("pod")
    path, conf = f"/var/run/netns/{pod_ns}", lab.conf()
    if case == "missing-netns":
        path = "/var/run/netns/does-not-exist"
    elif case == "unknown-pool":
        conf = lab.conf(pools=["no-such-pool"])
    elif case == "exhausted-pool":
        conf = lab.conf(pools=_exhaust_tiny(lab))
    elif case == "ifname-taken":  # fails after IPAM and the veth: exercises every undo step
        _ip(pod_ns, "link", "add", "eth0", "type", "veth", "peer", "name", "other")
    elif case == "bad-nodename":
        conf = {**lab.conf(), "nodename": "L-node1"}
    elif case == "bad-mtu":
        conf = lab.conf(mtu="1440")  # a string: Calico's conflist has a number here
    before = {b.name: b.spec.allocations for b in lab.ds.list("IPAMBlock").items}
    rc, result, err = lab.cni("ADD", "c1", path, conf=conf)
    assert rc != 0 and result["code"] == code, (result, err)
    assert result["cniVersion"] == "1.0.0" and result["msg"]
    assert not [n for n in lab.links(lab.node) if n.startswith("cali")]
    assert not [n for n in lab.links(pod_ns) if n.startswith("pcp")]
    assert IPAM(lab.ds).addresses(handle_id(NETWORK, "c1")) == []
    assert lab.ds.list("WorkloadEndpoint").items == []
    after = {b.name: b.spec.allocations for b in lab.ds.list("IPAMBlock").items}
    assert {k: v for k, v in after.items() if k in before} == before


def test_conflist_mtu_sets_both_veth_ends(lab):
    """Issue 7 leftover: the conflist's "mtu" (the manifest's veth_mtu) was ignored."""
    pod_ns = lab.netns("pod")
    rc, result, err = lab.cni("ADD", "c1", f"/var/run/netns/{pod_ns}", conf=lab.conf(mtu=1410))
    assert rc == 0, (result, err)
    host = result["interfaces"][0]["name"]
    assert lab.links(lab.node)[host]["mtu"] == 1410 and lab.links(pod_ns)["eth0"]["mtu"] == 1410
    assert lab.cni("DEL", "c1", f"/var/run/netns/{pod_ns}")[0] == 0


def test_version_and_ipam_plugin_alone(lab):
    proc = subprocess.run([f"{BIN}/pycalico-cni"], input=b'{"cniVersion":"1.0.0"}',
                          env={"CNI_COMMAND": "VERSION"}, capture_output=True, check=True)
    assert "1.0.0" in json.loads(proc.stdout)["supportedVersions"]
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "x", "CNI_NETNS": "/var/run/netns/x",
           "CNI_IFNAME": "eth0", "CNI_PATH": BIN, "PYCALICO_RUN_ROOT": str(lab.run_root)}
    conf = json.dumps({**lab.conf(pools=["10.244.0.0/16"]), "cniVersion": "0.4.0"}).encode()
    run = lambda cmd: subprocess.run(  # noqa: E731
        ["ip", "netns", "exec", lab.node, f"{BIN}/pycalico-ipam"], input=conf,
        env={**env, "CNI_COMMAND": cmd}, capture_output=True)
    add = run("ADD")
    result = json.loads(add.stdout)
    assert add.returncode == 0 and result["cniVersion"] == "0.4.0"
    assert result["ips"][0]["version"] == "4"
    assert run("CHECK").returncode == 0
    assert run("DEL").returncode == 0 and run("DEL").returncode == 0
    assert run("CHECK").returncode != 0


def _ip(ns: str, *args: str) -> str:
    return subprocess.run(["ip", "-n", ns, *args], capture_output=True, text=True,
                          check=True).stdout


def _ping(ns: str, ip) -> bool:
    return subprocess.run(["ip", "netns", "exec", ns, "ping", "-c1", "-W1", str(ip)],
                          capture_output=True).returncode == 0


def test_parallel_adds_on_one_node_get_distinct_ips(lab):
    """Eight concurrent ADDs (as the lab does): all succeed, all different, one block."""
    from concurrent.futures import ThreadPoolExecutor

    spaces = {f"p{i}": lab.netns(f"p{i}") for i in range(8)}
    with ThreadPoolExecutor(8) as pool:
        runs = list(pool.map(lambda p: lab.cni("ADD", f"c-{p}", f"/var/run/netns/{spaces[p]}",
                                               pod=p), spaces))
    assert [rc for rc, _, _ in runs] == [0] * 8, [err for _, _, err in runs]
    ips = {r["ips"][0]["address"] for _, r, _ in runs}
    assert len(ips) == 8
    assert len(lab.ds.list("IPAMBlock").items) == 1
    assert len(lab.ds.list("WorkloadEndpoint").items) == 8
