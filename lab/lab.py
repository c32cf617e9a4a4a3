"""The multi-node lab: a real etcd, N node namespaces on one L2 segment, an agent in each, pods
created through the real CNI plugin.

Topology: ``<L>-fabric`` holds the bridge ``br0`` (the segment, 10.99.0.0/24) and the lab's etcd on
10.99.0.254; ``<L>-nodeI`` joins it by a veth (``eth0`` = 10.99.0.I/24, default route onlink via
the fabric so proxy ARP for 169.254.1.1 works) and runs ``pycalico-node``; pods are namespaces
``<L>-nodeI-podJ`` wired by ``pycalico-cni``. All addresses live only inside these namespaces.
State (PIDs, pods, encapsulation) is kept in ``/run/pycalico-lab/<L>/state.json``; ``down`` also
cleans up after a crash by the namespace names alone.

``--encap`` sets the seeded pool's ``ipipMode``/``vxlanMode``. The ``*-crosssubnet`` modes also
change the topology, which is fixed at ``up``: odd nodes stay on 10.99.0.0/24 (``br0``), even nodes
go on 10.99.1.0/24 (a second bridge ``br1`` in the fabric), and ``<L>-router`` joins the two
(``.253`` on each, ip_forward=1). Every node's default route is its subnet's router (etcd and the
API server stay on subnet A; subnet-B nodes reach them through the router), so each agent
autodetects its own address with its /24, which is what CrossSubnet compares.

>>> pool_modes("vxlan-crosssubnet")
{'ipipMode': 'Never', 'vxlanMode': 'CrossSubnet'}
>>> [(node_link("ipip-crosssubnet", i).address, node_link("ipip-crosssubnet", i).gateway)
...  for i in (1, 2)]
[('10.99.0.1/24', '10.99.0.253'), ('10.99.1.2/24', '10.99.1.253')]
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import hostio
from felix.status import RUN_ROOT, query
from lab import kube, manifest
from lab.topology import (  # noqa: F401  (re-exported: lab.lab is the lab's API)
    FABRIC_NET, SUBNET_B, ETCD_IP, ROUTER_HOST, POOL, BGPCONFIG, DATASTORES, ENCAPS, LabError,
    RR_CLUSTER_ID, RR_LABEL, RR_PEER, expected_peers,
    NodeLink, check_encap, check_encap_change, check_name, node_link, pool_for, pool_modes, two_subnets,
)
from lab.netns import (
    add_bridge, add_netns, in_netns, ip, kill_and_delete_netns, list_netns, netns_pids,
    port_into_bridge, sysctl,
)

LAB_ROOT = Path(os.environ.get("PYCALICO_LAB_ROOT", "/run/pycalico-lab"))
DATAPLANE_GRACE = 10.0  # seconds an --encap lab waits for its routes once the sessions are up
@dataclass(frozen=True)
class Pod:
    name: str
    node: str
    netns: str
    ip: str


@dataclass
class LabState:
    name: str
    nodes: dict[str, str] = field(default_factory=dict)  # node name -> ipv4/24
    agent_pids: dict[str, int] = field(default_factory=dict)
    etcd_pid: int | None = None
    pods: list[Pod] = field(default_factory=list)
    datastore: str = "etcdv3"  # etcdv3 | kubernetes (then the API server stand-in runs too)
    apiserver_pid: int | None = None
    encap: str = "none"  # an ENCAPS key; *-crosssubnet: the two-subnet topology
    hosts: dict[str, str] = field(default_factory=dict)  # add-host: host name -> ipv4/24
    metrics: bool = True  # agents serve /metrics (the lab scrapes it; the manifest leaves it off)
    route_reflectors: int = 0  # the last K nodes reflect; no mesh (lab up --route-reflectors K)

    @property
    def endpoint(self) -> str:
        return f"http://{ETCD_IP}:2379"

    @property
    def kubeconfig(self) -> Path:
        return self.dir / "kubeconfig"

    def datastore_env(self) -> dict[str, str]:
        """What a datastore client of this lab needs (calicoctl's environment variables)."""
        if self.datastore == "kubernetes":
            return {"DATASTORE_TYPE": "kubernetes", "KUBECONFIG": str(self.kubeconfig)}
        return {"DATASTORE_TYPE": "etcdv3", "ETCD_ENDPOINTS": self.endpoint}

    def datastore_args(self) -> list[str]:
        """The same as pycalico-node flags."""
        if self.datastore == "kubernetes":
            return ["--datastore-type", "kubernetes", "--kubeconfig", str(self.kubeconfig)]
        return ["--datastore-type", "etcdv3", "--etcd-endpoints", self.endpoint]

    @property
    def dir(self) -> Path:
        return LAB_ROOT / self.name

    def save(self) -> None:
        lab_dir(self.name)
        hostio.write_private(self.dir / "state.json", json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, name: str) -> LabState:
        path = LAB_ROOT / check_name(name) / "state.json"
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            raise LabError(f"lab {name!r} is not up (no {path})") from None
        # `lab restart` kills the PIDs this file names: trust it only if nobody else could write it.
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
            raise LabError(f"{path}: not a regular file owned by us and writable only by us; "
                           "refusing to trust it (run 'lab down' to start over)")
        data = json.loads(path.read_text())
        data["pods"] = [Pod(**p) for p in data["pods"]]
        return cls(**data)


def lab_dir(name: str) -> Path:
    """The lab's own directory (state, logs, etcd data): 0700, under a 0700 LAB_ROOT."""
    hostio.private_dir(LAB_ROOT)
    return hostio.private_dir(LAB_ROOT / name)


def _bin(name: str) -> str:
    """Our console scripts live beside the running interpreter (the venv's bin)."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else (shutil.which(name) or name)


def _log(msg: str) -> None:
    print(msg, flush=True)


# -- up --

def up(name: str, nodes: int, pods_per_node: int, timeout: float = 90.0,
       datastore: str = "kubernetes", encap: str = "none", metrics: bool = True,
       route_reflectors: int = 0) -> LabState:
    check_name(name)
    check_encap(encap)
    if datastore not in DATASTORES:
        raise LabError(f"--datastore: {datastore!r} is not one of {', '.join(DATASTORES)}")
    if not 1 <= nodes <= 200 or not 0 <= pods_per_node <= 60:
        raise LabError("--nodes must be 1-200 and --pods-per-node 0-60")
    if not 0 <= route_reflectors <= 4:
        raise LabError(f"--route-reflectors: {route_reflectors} is not 0-4")
    if (LAB_ROOT / name / "state.json").exists() or _lab_namespaces(name):
        raise LabError(f"lab {name!r} already exists; run 'pycalicoctl lab down --name {name}' first")
    state = LabState(name=name, datastore=datastore, encap=encap, metrics=metrics,
                     route_reflectors=route_reflectors)
    total = nodes + route_reflectors
    try:
        _make_fabric(state)
        if state.datastore == "kubernetes":  # kubelets register their Nodes; agents annotate them
            in_netns(f"{name}-fabric", kube.create_nodes, str(state.kubeconfig),
                     [(f"{name}-node{i}", node_link(encap, i).address.split("/")[0])
                      for i in range(1, total + 1)])
        for i in range(1, total + 1):
            _make_node(state, i)
        state.save()
        if route_reflectors:
            in_netns(f"{name}-fabric", _make_reflectors, state.datastore_env(),
                     [f"{name}-node{i}" for i in range(nodes + 1, total + 1)])
        _add_pods(state, pods_per_node)
        wait_converged(state, timeout)
    except BaseException:
        _log(f"lab up failed; logs are in {state.dir}; "
             f"'pycalicoctl lab down --name {name}' removes what was made")
        raise
    return state


def _make_fabric(state: LabState) -> None:
    fabric = f"{state.name}-fabric"
    add_netns(fabric)
    add_bridge(fabric, "br0", f"{ETCD_IP}/24")
    if two_subnets(state.encap):
        _make_router(state.name)
    lab_dir(state.name)
    url = state.endpoint
    proc = _spawn(state.dir / "etcd.log",
        ["ip", "netns", "exec", fabric, "etcd", "--name", "lab", "--data-dir", str(state.dir / "etcd"),
         "--listen-client-urls", url, "--advertise-client-urls", url,
         "--listen-peer-urls", "http://127.0.0.1:2380",
         "--initial-advertise-peer-urls", "http://127.0.0.1:2380",
         "--initial-cluster", "lab=http://127.0.0.1:2380"])
    state.etcd_pid = proc.pid
    state.save()
    _log(f"etcd      {url} (in {fabric}, pid {proc.pid})")
    if state.datastore == "kubernetes":
        _start_apiserver(state)
    in_netns(fabric, _seed_datastore, state.datastore_env(), pool_for(state.encap),
             state.route_reflectors > 0)


def _make_router(name: str) -> None:
    """Subnet B's bridge ``br1`` beside ``br0`` in the fabric, and ``<L>-router`` forwarding
    between them. The fabric (etcd, API server) reaches subnet B through the router too."""
    fabric, router = f"{name}-fabric", f"{name}-router"
    add_bridge(fabric, "br1")
    add_netns(router)
    for dev, bridge, port, net in (("eth0", "br0", "ra", FABRIC_NET), ("eth1", "br1", "rb", SUBNET_B)):
        port_into_bridge(fabric, bridge, router, dev, port)
        ip("-n", router, "addr", "add", f"{net}.{ROUTER_HOST}/24", "dev", dev)
        ip("-n", router, "link", "set", dev, "up")
    sysctl(router, "net.ipv4.ip_forward", "1")
    ip("-n", fabric, "route", "add", f"{SUBNET_B}.0/24", "via", f"{FABRIC_NET}.{ROUTER_HOST}")
    _log(f"router    {router:<14} {FABRIC_NET}.{ROUTER_HOST} (br0) <-> {SUBNET_B}.{ROUTER_HOST} (br1)")


def _start_apiserver(state: LabState) -> None:
    """The Kubernetes API server stand-in beside etcd (storing in it), and the CRDs we ship."""
    fabric = f"{state.name}-fabric"
    proc = _spawn(state.dir / "apiserver.log",
                  ["ip", "netns", "exec", fabric, *kube.apiserver_argv(state.endpoint, ETCD_IP)])
    state.apiserver_pid = proc.pid
    state.save()
    config = str(kube.write_kubeconfig(state.dir, f"http://{ETCD_IP}:{kube.API_PORT}"))
    in_netns(fabric, kube.wait_ready, config)
    crds = in_netns(fabric, kube.apply_crds, config)
    _log(f"apiserver http://{ETCD_IP}:{kube.API_PORT} (in {fabric}, pid {proc.pid}, {crds} CRDs; "
         f"kubeconfig {config})")


def _connect(env: dict[str, str]):
    import datastore

    return datastore.connect(env["DATASTORE_TYPE"], etcd_endpoints=env.get("ETCD_ENDPOINTS"),
                             kubeconfig=env.get("KUBECONFIG"))


def _seed_datastore(env: dict[str, str], pool: dict, reflectors: bool = False) -> None:
    """Runs inside the fabric namespace: wait for the datastore, then store the pool and BGP config
    (with reflectors: the mesh off and the BGPPeer to them)."""
    from crds import load
    from datastore.base import DatastoreError

    bgp = BGPCONFIG
    if reflectors:
        bgp = {**BGPCONFIG, "spec": {**BGPCONFIG["spec"], "nodeToNodeMeshEnabled": False}}
    deadline = time.monotonic() + 30
    while True:
        try:
            ds = _connect(env)
            for doc in (pool, bgp, *([RR_PEER] if reflectors else [])):
                ds.apply(load(doc))
            ds.close()
            return
        except DatastoreError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _make_reflectors(env: dict[str, str], names: list[str]) -> None:
    """Runs inside the fabric namespace: as the article does (calicoctl patch node, kubectl label
    node), give each of ``names`` the cluster ID and the route-reflector label (CAS, once each
    has registered its Node)."""
    from datastore.base import Conflict, NotFound

    ds = _connect(env)
    try:
        for name in names:
            deadline = time.monotonic() + 30
            while True:
                try:
                    node = ds.get("Node", name)
                    bgp = node.spec.bgp.model_copy(update={"route_reflector_cluster_id": RR_CLUSTER_ID})
                    meta = node.metadata.model_copy(update={"labels": {**node.metadata.labels,
                                                                       RR_LABEL[0]: RR_LABEL[1]}})
                    ds.update(node.model_copy(update={
                        "metadata": meta, "spec": node.spec.model_copy(update={"bgp": bgp})}))
                    break
                except (NotFound, Conflict, AttributeError):  # not registered (or no bgp) yet
                    if time.monotonic() > deadline:
                        raise LabError(f"{name}: never registered its Node with a BGP address")
                    time.sleep(0.2)
            _log(f"reflector {name:<14} cluster {RR_CLUSTER_ID}, label {'='.join(RR_LABEL)}")
    finally:
        ds.close()


def _make_node(state: LabState, i: int) -> None:
    node, fabric = f"{state.name}-node{i}", f"{state.name}-fabric"
    link = node_link(state.encap, i)
    addr = link.address
    add_netns(node)
    port_into_bridge(fabric, link.bridge, node, "eth0", f"n{i}")
    ip("-n", node, "addr", "add", addr, "dev", "eth0")
    ip("-n", node, "link", "set", "eth0", "up")
    # A default route is what lets the host side of each cali* answer proxy ARP for 169.254.1.1;
    # on two subnets it is also the way to the other subnet (and, from subnet B, to etcd).
    ip("-n", node, "route", "add", "default", "via", link.gateway, "dev", "eth0", "onlink")
    state.nodes[node] = addr
    _install_cni(state, node)
    state.agent_pids[node] = _start_agent(state, node)
    _log(f"node      {node:<14} {addr:<16} agent pid {state.agent_pids[node]}")


def _node_dirs(state: LabState, node: str) -> tuple[Path, Path, Path]:
    """The node's host paths, in the lab's directory: (/opt/cni/bin, /etc/cni/net.d, the service
    account's secret mount)."""
    base = hostio.private_dir(state.dir / node)
    return base / "opt-cni-bin", base / "etc-cni-net.d", base / "serviceaccount"


def _install_cni(state: LabState, node: str) -> None:
    """The DaemonSet's init container for this node, as kubelet runs it: install-cni puts the
    CNI plugin and its conflist into the node's host paths (mapped into the lab's directory)."""
    bin_dir, net_dir, sa_dir = _node_dirs(state, node)
    hostio.private_dir(sa_dir)
    hostio.write_private(sa_dir / "token", "lab")  # the stand-in checks no credentials
    hostio.write_private(sa_dir / "ca.crt", "# the lab's stand-in serves plain HTTP: no CA\n")
    argv, env = manifest.container_command(manifest.documents(), node, init=True)
    env |= {"CNI_BIN_DIR": str(bin_dir), "CNI_NET_DIR": str(net_dir),
            "SERVICEACCOUNT_DIR": str(sa_dir), "KUBERNETES_SERVICE_HOST": ETCD_IP,
            "KUBERNETES_SERVICE_PORT": str(kube.API_PORT),
            **_host_env()}
    out = subprocess.run(["ip", "netns", "exec", node, _bin(argv[0]), *argv[1:]], env=env,
                         capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise LabError(f"{node}: init container {argv[0]} failed: {out.stderr.strip()}")


def _start_agent(state: LabState, node: str) -> int:
    """The DaemonSet's main container for this node, as kubelet runs it (deploy/pycalico.yaml):
    its command and environment, field references resolved for the node. The lab adds only what
    a kubelet and a service account would give it: the API's kubeconfig (or, for an etcd lab,
    the etcd endpoints) and, unless the lab was made with ``metrics=False``, metrics on, which
    the lab scrapes."""
    argv, env = manifest.container_command(manifest.documents(), node)
    env |= state.datastore_env() | {"PYCALICO_RUN_ROOT": str(RUN_ROOT)}  # the hostPath, mapped
    if state.metrics:
        env["FELIX_PROMETHEUSMETRICSENABLED"] = "true"
    proc = _spawn(state.dir / f"{node}.log", ["ip", "netns", "exec", node, _bin(argv[0]), *argv[1:]],
                  env={**_host_env(), **env})
    return proc.pid


def _host_env() -> dict[str, str]:
    """What a lab daemon inherits from the host: PATH, and PYTHONPATH when one is set (a lab run
    from another checkout of the source then runs that checkout's code, not the installed one)."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    if os.environ.get("PYTHONPATH"):
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    return env


_CHILDREN: list[subprocess.Popen] = []  # daemons outlive this command; keep them referenced


def _spawn(log_path: Path, argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start a lab daemon in its own session, output appended to ``log_path`` (0600)."""
    log = hostio.open_private(log_path)
    try:
        proc = subprocess.Popen(argv, stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                                start_new_session=True, env=env)
    finally:
        os.close(log)
    _CHILDREN.append(proc)
    return proc


def _add_pods(state: LabState, per_node: int) -> None:
    """As kubelets do: every node starts its pods at once, in parallel with the other nodes (each
    agent is its node's single IPAM writer; nodes race each other for blocks by CAS)."""
    regular = list(state.nodes)[:len(state.nodes) - state.route_reflectors]  # reflectors: no pods
    jobs = [(node, j) for j in range(1, per_node + 1) for node in regular]
    uids: dict[str, str] = {}
    if state.datastore == "kubernetes" and jobs:  # the Pod objects first, as the scheduler does
        uids = in_netns(f"{state.name}-fabric", kube.create_pods, str(state.kubeconfig),
                        [(_pod_name(node, j), node) for node, j in jobs])
    with ThreadPoolExecutor(max_workers=min(16, len(jobs) or 1)) as pool:
        futures = [pool.submit(_add_pod, state, node, j, uids.get(_pod_name(node, j)))
                   for node, j in jobs]
        try:
            for future in futures:
                state.pods.append(future.result())
        finally:
            state.pods.sort(key=lambda p: p.netns)
            state.save()  # whatever was made, so 'lab down' and the logs know of it


def pod_object(state: LabState, node: str, j: int) -> str | None:
    """The scheduler's part of pod ``j`` on ``node``: its Pod object (Kubernetes datastore only;
    None on etcd). Returns its uid, for ``add_pod``."""
    if state.datastore != "kubernetes":
        return None
    return in_netns(f"{state.name}-fabric", kube.create_pods, str(state.kubeconfig),
                    [(_pod_name(node, j), node)])[_pod_name(node, j)]


def add_pod(state: LabState, node: str, j: int, uid: str | None = None) -> Pod:
    """One more pod ``j`` on ``node`` of a running lab, as kubelet starts it: the CNI ADD (after
    ``pod_object``, when ``uid`` is not given); recorded in the lab's state."""
    if uid is None:
        uid = pod_object(state, node, j)
    pod = _add_pod(state, node, j, uid)
    state.pods.append(pod)
    state.save()
    return pod


def _pod_name(node: str, j: int) -> str:
    return f"pod-{node.rsplit('-', 1)[1]}-{j}"


def _add_pod(state: LabState, node: str, j: int, uid: str | None = None) -> Pod:
    """The pod's sandbox (a namespace) wired by the CNI plugin; ``uid``: its Pod object's."""
    podns, pod_name = f"{node}-pod{j}", _pod_name(node, j)
    add_netns(podns)
    cni_args = f"K8S_POD_NAMESPACE={kube.NAMESPACE};K8S_POD_NAME={pod_name}"
    if uid is not None:
        cni_args += f";K8S_POD_INFRA_CONTAINER_ID={podns};K8S_POD_UID={uid}"
    bin_dir, net_dir, _ = _node_dirs(state, node)
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "CNI_COMMAND": "ADD", "CNI_CONTAINERID": podns,
           "CNI_NETNS": f"/var/run/netns/{podns}", "CNI_IFNAME": "eth0", "CNI_ARGS": cni_args,
           "CNI_PATH": str(bin_dir), "PYCALICO_RUN_ROOT": str(RUN_ROOT)}
    out = _cni_add(node, env, _installed_netconf(net_dir), podns, str(bin_dir / "pycalico-cni"))
    address = json.loads(out)["ips"][0]["address"].split("/")[0]
    _log(f"pod       {podns:<20} {address:<14} on {node}")
    return Pod(name=pod_name, node=node, netns=podns, ip=address)


def _installed_netconf(net_dir: Path) -> str:
    """The first plugin's network configuration from the installed conflist, as libcni gives
    it to the plugin (with the list's name and cniVersion)."""
    conflist = json.loads((net_dir / "10-pycalico.conflist").read_text())
    return json.dumps({"cniVersion": conflist["cniVersion"], "name": conflist["name"],
                       **conflist["plugins"][0]})


def _cni_add(node: str, env: dict[str, str], netconf: str, podns: str, plugin: str,
             timeout: float = 30.0) -> str:
    """What kubelet does: run the host's CNI plugin -- the thin stdlib one (cni/thin.py, run by
    the system python3 as on any host), which hands the request to the node's agent -- and retry
    while it says the agent is not ready yet (code 11)."""
    deadline = time.monotonic() + timeout
    while True:
        out = subprocess.run(["ip", "netns", "exec", node, plugin], env=env, input=netconf,
                             capture_output=True, text=True, timeout=120)
        if out.returncode == 0:
            return out.stdout
        code = _cni_error_code(out.stdout)
        if code != 11 or time.monotonic() > deadline:
            raise LabError(f"CNI ADD for {podns} failed: {out.stdout.strip()} {out.stderr.strip()}")
        time.sleep(0.2)


def _cni_error_code(stdout: str) -> int | None:
    try:
        return json.loads(stdout).get("code")
    except (ValueError, AttributeError):
        return None


def wait_converged(state: LabState, timeout: float) -> None:
    """Until every agent has all its mesh peers Established, a route in the kernel per other node
    that has pods (each such node owns at least one block), and passes its readiness probe.

    With ``--encap`` only the sessions are required; the routes and the probe are waited for
    DATAPLANE_GRACE seconds, then reported. This kernel has no ipip module (no ``tunl0``: an IPIP
    route can never be written), and a VXLAN route needs the other node's VTEP: an agent without
    it leaves the block unroutable (and a plain route to another subnet is not on-link). The
    lab must still come up, so that pools and agents can be inspected and switched."""
    with_pods = {p.node for p in state.pods}

    regular = len(state.nodes) - state.route_reflectors

    def lag(node: str, dataplane: bool) -> str | None:
        peers = expected_peers(int(node.rsplit("node", 1)[1]), regular, state.route_reflectors)
        return _node_lag(node, peers, len(with_pods - {node}), dataplane)

    required = state.encap == "none"
    pending = _wait_nodes(state.nodes, lambda n: lag(n, required), timeout)
    if pending:
        raise LabError(f"not converged after {timeout:.0f}s: {pending}")
    if required:
        _log("converged: every node has its mesh peers Established and routes to every other block")
        return
    _log(f"converged: every node has its mesh peers Established (--encap {state.encap})")
    lagging = _wait_nodes(state.nodes, lambda n: lag(n, True), DATAPLANE_GRACE)
    _log(f"warning: --encap {state.encap}: routes not all in the kernel after "
         f"{DATAPLANE_GRACE:.0f}s; not waiting: {lagging}" if lagging
         else "converged: routes to every other block are in the kernel")


def _wait_nodes(nodes, lag, timeout: float) -> dict[str, str]:
    """Poll ``lag(node)`` until it is None for every node; what still lags at the deadline."""
    deadline = time.monotonic() + timeout
    pending = dict.fromkeys(nodes, "not asked yet")
    while pending:
        for node in list(pending):
            pending[node] = lag(node)
            if pending[node] is None:
                del pending[node]
        if not pending or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    return pending


def remote_block_routes(routes: list[dict]) -> int:
    """How many of a node's routes (``query(node, "routes")``) go to another node's block and are
    in the kernel as wanted: whatever brought them (BGP, an affinity, a tunnel), not local, not a
    /32 (a pod, a VTEP).

    >>> r = {"dst": "10.244.1.0/26", "reason": "vxlan to n2", "state": "ok", "in_sync": True}
    >>> remote_block_routes([r, {**r, "in_sync": False}, {**r, "reason": "local block"}])
    1
    """
    return sum(1 for r in routes if r["in_sync"] and r["state"] != "not-desired"
               and not r["reason"].startswith("local") and not r["dst"].endswith("/32"))


def _node_lag(node: str, n_peers: int, n_remote: int, dataplane: bool = True) -> str | None:
    """What node still lacks (None: nothing); ``dataplane=False`` asks only for the sessions."""
    try:
        status = query(node, "status")
        routes = query(node, "routes")
    except (OSError, RuntimeError) as exc:
        return f"agent not answering ({exc.__class__.__name__})"
    up_peers = [p for p in status["peers"] if p["state"] == "Established"]
    if len(up_peers) < n_peers:
        return f"{len(up_peers)}/{n_peers} peers up"
    if not dataplane:
        return None
    in_kernel = remote_block_routes(routes)
    if in_kernel < n_remote:
        return f"{in_kernel}/{n_remote} remote block routes in the kernel"
    status_code = in_netns(node, _http_status, manifest.readiness_url(manifest.documents()))
    if status_code != 200:  # kubelet's readiness probe, from the manifest
        return f"readiness probe answered {status_code}"
    return None


def _http_status(url: str) -> int:
    """Runs inside a node namespace: the status code of GET url (0: no answer)."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code
    except OSError:
        return 0


# -- ping --

def ping(name: str, attempts: int = 3) -> bool:
    state = LabState.load(name)
    pods = state.pods
    pairs = [(a, b) for a in pods for b in pods if a is not b]
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = dict(zip(pairs, pool.map(lambda ab: _ping_once(ab[0], ab[1], attempts), pairs)))
    width = max([len(p.netns) for p in pods] + [4])
    print(" " * width + " | " + " ".join(f"{p.ip:>12}" for p in pods))
    for a in pods:
        cells = ["-" if a is b else ("ok" if results[(a, b)] else "FAIL") for b in pods]
        print(f"{a.netns:<{width}} | " + " ".join(f"{c:>12}" for c in cells))
    failed = sum(1 for ok in results.values() if not ok)
    print(f"{len(pairs) - failed}/{len(pairs)} pod pairs reachable")
    return failed == 0 and bool(pairs)


def _ping_once(src: Pod, dst: Pod, attempts: int) -> bool:
    for _ in range(attempts):
        out = subprocess.run(["ip", "netns", "exec", src.netns, "ping", "-c", "1", "-W", "1", dst.ip],
                             capture_output=True)
        if out.returncode == 0:
            return True
    return False


# -- kubeconfig --

def kubeconfig(name: str) -> str:
    """The lab's kubeconfig. Its server lives in the fabric namespace: run kubectl there, e.g.
    ``ip netns exec <L>-fabric kubectl --kubeconfig /run/pycalico-lab/<L>/kubeconfig get nodes``."""
    state = LabState.load(name)
    if state.datastore != "kubernetes":
        raise LabError(f"lab {name!r} runs on etcd (--datastore etcdv3): it has no Kubernetes API")
    return state.kubeconfig.read_text()


# -- set-encap --

def set_encap(name: str, mode: str) -> list[str]:
    """Set every IPv4 pool of lab ``name`` to ``mode``'s ipipMode/vxlanMode, in place: the agents
    watch the pools, nothing is restarted. Returns the names of the pools it changed."""
    state = LabState.load(name)
    check_encap_change(state.encap, mode)
    changed = in_netns(f"{name}-fabric", _patch_pools, state.datastore_env(), pool_modes(mode))
    old, state.encap = state.encap, mode
    state.save()
    what = ", ".join(changed) if changed else "no pool needed a change"
    _log(f"lab {name}: --encap {old} -> {mode} ({what})")
    return changed


def _patch_pools(env: dict[str, str], modes: dict[str, str]) -> list[str]:
    """Runs inside the fabric namespace: each IPv4 pool's modes set, the names of those changed."""
    from datastore.base import DatastoreError

    ds = _connect(env)
    try:
        names = [p.name for p in ds.list("IPPool").items if ":" not in p.spec.cidr]
        return [name for name in names if _patch_pool(ds, name, modes)]
    except DatastoreError as exc:
        raise LabError(f"set-encap: {exc.__class__.__name__}: {exc}") from None
    finally:
        ds.close()


def _patch_pool(ds, name: str, modes: dict[str, str]) -> bool:
    """Compare-and-swap (a concurrent writer makes us re-read); a pool that already has the modes
    is not written. True if it was written."""
    from crds import load
    from datastore.base import Conflict

    for _ in range(5):
        pool = ds.get("IPPool", name)
        if {"ipipMode": pool.spec.ipip_mode, "vxlanMode": pool.spec.vxlan_mode} == modes:
            return False
        doc = pool.to_dict()
        try:
            ds.update(load({**doc, "spec": {**doc["spec"], **modes}}))
            return True
        except Conflict:
            continue
    raise LabError(f"IPPool {name} kept changing under set-encap (5 conflicts); try again")


# -- restart --

RESTART_SIGNALS = {"KILL": signal.SIGKILL, "TERM": signal.SIGTERM}
TERM_WAIT = 30.0  # a SIGTERMed agent ends its ExaBGP (5 s at most) and its servers well before


def restart(name: str, node: str, sig: str = "KILL") -> int:
    """End ``node``'s agent with SIGKILL (a crash) or SIGTERM (a rolling update: the agent stops
    as for a restart), then start a new one as the DaemonSet would."""
    if sig not in RESTART_SIGNALS:
        raise LabError(f"--signal: {sig!r} is not one of {', '.join(RESTART_SIGNALS)}")
    state = LabState.load(name)
    if node not in state.nodes:
        raise LabError(f"--node: {node!r} is not a node of lab {name} ({', '.join(state.nodes)})")
    old = state.agent_pids[node]
    if old in netns_pids(node):  # ours for sure: it runs in the lab's own node namespace
        try:
            os.kill(old, RESTART_SIGNALS[sig])
        except ProcessLookupError:
            pass
        _wait_gone(old, TERM_WAIT if sig == "TERM" else 10.0)
    else:
        _log(f"{node}: agent pid {old} is not running in {node}; starting a new agent")
    state.agent_pids[node] = _start_agent(state, node)
    state.save()
    _log(f"{node}: agent pid {old} ended (SIG{sig}), new agent pid {state.agent_pids[node]}")
    return state.agent_pids[node]


def _wait_gone(pid: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        try:  # reap it if it is our child
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        time.sleep(0.05)
    raise LabError(f"process {pid} did not exit")


# -- down --

HOST_RE = re.compile(r"^[a-z][a-z0-9]{0,5}$")
FIRST_HOST = 200  # add-host addresses: <subnet A>.200, .201, ... (nodes count up from .1)


def add_host(name: str, host: str) -> tuple[str, str]:
    """An extra namespace ``<L>-h-<host>`` on the lab's L2 segment (subnet A), for an external
    router or a test client: returns (namespace, its address/24). Nothing runs in it."""
    if not HOST_RE.match(host):
        raise LabError(f"HOST: {host!r} must be 1-6 lowercase letters/digits starting with a letter")
    state = LabState.load(name)
    if host in state.hosts:
        raise LabError(f"HOST: {host!r} already exists in lab {name!r} ({state.hosts[host]})")
    used = {int(a.split("/")[0].rsplit(".", 1)[1]) for a in state.hosts.values()}
    k = next(i for i in range(FIRST_HOST, ROUTER_HOST) if i not in used)
    ns, addr = f"{name}-h-{host}", f"{FABRIC_NET}.{k}/24"
    add_netns(ns)
    try:
        port_into_bridge(f"{name}-fabric", "br0", ns, "eth0", f"h{k}")
        ip("-n", ns, "addr", "add", addr, "dev", "eth0")
        ip("-n", ns, "link", "set", "eth0", "up")
        ip("-n", ns, "link", "set", "lo", "up")
    except BaseException:
        kill_and_delete_netns(ns)
        raise
    state.hosts[host] = addr
    state.save()
    return ns, addr


def _lab_namespaces(name: str) -> list[str]:
    pattern = re.compile(rf"^{re.escape(name)}-(fabric|router|node\d+(-pod\d+)?|h-[a-z0-9]+)$")
    return [ns for ns in list_netns() if pattern.match(ns)]


def down(name: str) -> None:
    """Remove every namespace, process and file of lab ``name``. Idempotent; works after a crash."""
    namespaces = _lab_namespaces(check_name(name))
    # Pods first, then nodes (their agents), then the router and the fabric (etcd).
    namespaces.sort(key=lambda ns: (0 if "-pod" in ns else 1 if "-node" in ns else 2, ns))
    for ns in namespaces:
        killed = kill_and_delete_netns(ns)
        _log(f"deleted   {ns}" + (f" (killed {', '.join(map(str, killed))})" if killed else ""))
    for node_dir in RUN_ROOT.glob(f"{name}-node*"):
        shutil.rmtree(node_dir, ignore_errors=True)
    shutil.rmtree(LAB_ROOT / name, ignore_errors=True)
    # Daemons this process started and the kills above ended: reap them (no zombies, and no
    # "still running" warnings from their Popen objects at exit).
    _CHILDREN[:] = [proc for proc in _CHILDREN if proc.poll() is None]
    _log(f"lab {name} is down")
