"""The lab end to end, through the real CLI: 3 nodes x 2 pods, BGP full mesh, pings, restart, down."""
from __future__ import annotations

import ipaddress
import json
import os
import re
import stat
import secrets
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest
import yaml

from tests import helpers
from tests.helpers import ctl, wait_for

LAB = f"e{secrets.token_hex(2)}"  # lab names are short: namespace/interface names derive from them


def lab_state() -> dict:
    return helpers.lab_state(LAB)


def lab_namespaces() -> list[str]:
    return helpers.lab_namespaces(LAB)


@pytest.fixture(scope="module")
def lab():
    try:
        # Under umask 000: every file, directory and socket must still be private (issue 5).
        ctl("lab", "up", "--name", LAB, "--nodes", "3", "--pods-per-node", "2", umask=0)
        yield lab_state()
    finally:
        subprocess.run([helpers.CTL, "lab", "down", "--name", LAB], capture_output=True, timeout=120)


def routes(ns: str) -> list[str]:
    return subprocess.run(["ip", "-n", ns, "route"], capture_output=True, text=True,
                          check=True).stdout.splitlines()


def test_node1_routes_match_calico(lab):
    lines = routes(f"{LAB}-node1")
    blackholes = [ln for ln in lines if ln.startswith("blackhole") and "proto 80" in ln]
    assert len(blackholes) == 1 and blackholes[0].split()[1].endswith("/26"), lines
    own_block = ipaddress.ip_network(blackholes[0].split()[1])
    local_pods = [p for p in lab["pods"] if p["node"] == f"{LAB}-node1"]
    for pod in local_pods:
        assert ipaddress.ip_address(pod["ip"]) in own_block
        assert any(re.match(rf"^{re.escape(pod['ip'])} dev cali[0-9a-f]{{11}} proto 80 scope link", ln)
                   for ln in lines), (pod, lines)
    vias = {ln.split()[2] for ln in lines if " via " in ln and "proto 80" in ln}
    node_ips = {str(ipaddress.ip_interface(a).ip) for n, a in lab["nodes"].items()
                if n != f"{LAB}-node1"}
    assert vias == node_ips, lines
    # every other node's pods are inside one of the blocks routed via that node
    for pod in lab["pods"]:
        if pod["node"] == f"{LAB}-node1":
            continue
        gw = str(ipaddress.ip_interface(lab["nodes"][pod["node"]]).ip)
        via_blocks = [ipaddress.ip_network(ln.split()[0]) for ln in lines if f"via {gw} " in ln]
        assert any(ipaddress.ip_address(pod["ip"]) in b for b in via_blocks), (pod, lines)


def test_node_status_shows_two_established_mesh_peers(lab):
    out = ctl("node", "status", "--node", f"{LAB}-node1").stdout
    assert "Calico process is running." in out
    rows = [ln for ln in out.splitlines() if "node-to-node mesh" in ln]
    assert len(rows) == 2, out
    assert all("| up " in r and "Established" in r for r in rows), out


def test_node_status_says_why_a_peer_is_not_up(lab, tmp_path):
    """Issue 9 item 6: a BGPPeer to a host where nothing listens on 179 (the fabric's etcd
    address) is shown as calicoctl shows BIRD's: STATE start, INFO the BGP state and the socket
    error; the mesh sessions stay up."""
    from lab.topology import ETCD_IP

    peer = tmp_path / "nothing-there.yaml"
    peer.write_text(json.dumps({"apiVersion": "projectcalico.org/v3", "kind": "BGPPeer",
                                "metadata": {"name": "nothing-there"},
                                "spec": {"peerIP": ETCD_IP, "asNumber": 65009}}))

    def status() -> str:
        return ctl("node", "status", "--node", f"{LAB}-node1", check=False).stdout

    def refused_row() -> str | None:
        return next((ln for ln in status().splitlines()
                     if f"| {ETCD_IP} " in ln and "Connection refused" in ln), None)
    try:
        ctl("lab", "apply", "--name", LAB, "-f", str(peer))
        row = wait_for(refused_row, 30, what="node status giving the refused peer's reason")
        assert "| global " in row and "| start " in row, row
        assert "Active Socket: Connection refused" in row, row
        mesh = [ln for ln in status().splitlines() if "node-to-node mesh" in ln]
        assert len(mesh) == 2 and all("| up " in r for r in mesh), mesh
    finally:
        ctl("--lab", LAB, "delete", "bgppeer", "nothing-there", check=False)
    wait_for(lambda: ETCD_IP not in status(), 30, what="the deleted peer gone from node status")


def test_node_routes_lists_reasons_and_kernel_state(lab):
    out = ctl("node", "routes", "--node", f"{LAB}-node1").stdout
    assert "local block" in out and "local workload" in out and "learned from" in out, out
    assert ", 0 not matching the kernel" in out, out


def test_every_pod_reaches_every_other_pod(lab):
    out = ctl("lab", "ping", "--name", LAB).stdout
    assert "30/30 pod pairs reachable" in out, out


def test_lab_files_are_private_whatever_the_umask(lab):
    """Regression (issue 5, defect 5): under umask 000 the lab left exabgp.sock 0777, run dirs 0777
    and exabgp.conf / state.json 0666, and a local user injected kernel routes."""
    roots = [Path(f"/run/pycalico-lab/{LAB}"), *Path("/run/pycalico").glob(f"{LAB}-node*")]
    assert len(roots) == 4
    paths = [p for root in roots for p in (root, *root.rglob("*"))]
    assert any(p.name == "exabgp.sock" for p in paths) and any(p.name == "state.json" for p in paths)
    mode = lambda p: stat.S_IMODE(os.lstat(p).st_mode)  # noqa: E731
    # Each node's host paths (/opt/cni/bin, /etc/cni/net.d) keep the modes install-cni sets for a
    # real host, where kubelet and the runtime read them -- inside a 0700 node directory.
    host_paths = {p for p in paths if p.parent.name in ("opt-cni-bin", "etc-cni-net.d")
                  or p.name in ("opt-cni-bin", "etc-cni-net.d")}
    loose = [f"{p} {oct(mode(p))}" for p in paths
             if p not in host_paths and not p.is_symlink() and mode(p) & 0o077]
    assert loose == []
    node_dirs = {p.parent for p in host_paths if p.name in ("opt-cni-bin", "etc-cni-net.d")}
    assert len(node_dirs) == 3 and all(mode(d) == 0o700 for d in node_dirs), node_dirs
    assert {mode(p) for p in host_paths if p.name == "pycalico-kubeconfig"} == {0o600}  # its token
    for top in (Path("/run/pycalico-lab"), Path("/run/pycalico")):
        assert mode(top) == 0o700, top


def node_status(node: str) -> dict:
    from felix.status import query

    return query(node, "status")


def test_a_quiet_lab_does_no_work(lab):
    """Regression (issue 5, defect 1): idle agents did ~18 full link + route dumps a second each."""
    nodes = sorted(lab["nodes"])

    def settled():
        first = [node_status(n)["reconciles"] for n in nodes]
        time.sleep(0.5)
        second = [node_status(n) for n in nodes]
        return first == [s["reconciles"] for s in second] and second

    before = wait_for(settled, timeout=30, what="the lab's agents to settle")
    time.sleep(3)  # a measurement window, not a synchronisation: nothing may happen in it
    for node, old in zip(nodes, before):
        new = node_status(node)
        resyncs = new["reconciles_by_cause"]["resync"] - old["reconciles_by_cause"]["resync"]
        assert new["reconciles"] - old["reconciles"] == resyncs, (node, old, new)
        assert new["route_dumps"] - old["route_dumps"] == resyncs, (node, old, new)
        assert new["route_writes"] == old["route_writes"], node


def test_disabling_the_pool_keeps_traffic(lab, tmp_path):
    """Regression (issue 5, defect 3): `disabled: true` withdrew every remote route of the pool
    (8 s of 100% loss). Disabling only stops new allocations, as in Calico."""
    from lab.lab import POOL

    nodes = sorted(lab["nodes"])
    routes_before = {n: sorted(routes(n)) for n in nodes}
    seen = {n: node_status(n)["reconciles"] for n in nodes}
    disabled = tmp_path / "pool.yaml"
    disabled.write_text(json.dumps({**POOL, "spec": {**POOL["spec"], "disabled": True}}))
    try:
        ctl("--lab", LAB, "apply", "-f", str(disabled))
        # every agent has reconciled since the change reached it
        wait_for(lambda: all(node_status(n)["reconciles"] > seen[n] for n in nodes), timeout=20,
                 what="every agent to process the disabled pool")
        assert {n: sorted(routes(n)) for n in nodes} == routes_before
        out = ctl("lab", "ping", "--name", LAB).stdout
        assert "30/30 pod pairs reachable" in out, out
    finally:
        enabled = tmp_path / "enabled.yaml"
        enabled.write_text(json.dumps(POOL))
        ctl("--lab", LAB, "apply", "-f", str(enabled))


def _pool_with(**spec) -> str:
    from lab.lab import POOL
    return json.dumps({**POOL, "spec": {**POOL["spec"], **spec}})


def test_live_switch_to_vxlan_and_back_keeps_pods_talking(lab, tmp_path):
    """Issue 8 item 7: changing the pool's vxlanMode moves traffic to the new path with no pod
    restart; a continuous cross-node ping (50/s) loses at most one packet per switch."""
    src = next(p for p in lab["pods"] if p["node"].endswith("-node1"))
    dst = next(p for p in lab["pods"] if p["node"].endswith("-node2"))
    node1 = src["node"]
    dst_block = next(ln.split()[0] for ln in routes(node1)
                     if ln.startswith("10.244.") and "/26 via" in ln and "blackhole" not in ln
                     and ipaddress.ip_address(dst["ip"]) in ipaddress.ip_network(ln.split()[0]))
    pool = tmp_path / "pool.yaml"
    try:
        for mode, want_dev in (("Always", "dev vxlan.calico"), ("Never", "dev eth0")):
            ping = subprocess.Popen(["ip", "netns", "exec", src["netns"], "ping", "-q", "-i", "0.02",
                                     "-c", "400", "-W", "1", dst["ip"]],
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            try:
                time.sleep(1)  # the ping is running before the switch (a start, not a sync)
                pool.write_text(_pool_with(vxlanMode=mode))
                ctl("--lab", LAB, "apply", "-f", str(pool))
                wait_for(lambda: any(ln.startswith(dst_block) and want_dev in ln
                                     for ln in routes(node1)), timeout=20,
                         what=f"node1's route to {dst_block} over {want_dev} ({mode})")
                out, _ = ping.communicate(timeout=30)
            finally:
                if ping.poll() is None:
                    ping.kill()
                    ping.wait()
            sent, received = (int(w) for w in re.findall(r"(\d+) (?:packets transmitted|received)", out))
            assert sent == 400 and sent - received <= 1, f"vxlanMode {mode}: {out}"
            if mode == "Always":
                neigh = subprocess.run(["ip", "-n", node1, "neigh", "show", "dev", "vxlan.calico"],
                                       capture_output=True, text=True).stdout
                assert neigh.count("PERMANENT") == 2, neigh  # one VTEP per other node
    finally:
        pool.write_text(_pool_with())
        ctl("--lab", LAB, "apply", "-f", str(pool))
    assert "30/30 pod pairs reachable" in ctl("lab", "ping", "--name", LAB).stdout


def test_drift_is_repaired_from_netlink_events_and_foreign_routes_are_kept(lab):
    """Issue 8 item 6: a route of ours deleted or altered behind the agent's back comes back from
    the netlink notification (a "drift" reconcile, not the 90 s resync); a route of another
    protocol, even inside our pool, is never touched."""
    node = sorted(lab["nodes"])[0]
    ours = [ln for ln in routes(node) if "proto 80" in ln and " via " in ln]
    assert len(ours) == 2, routes(node)
    victim, altered = ours[0].split()[0], ours[1].split()[0]
    before = node_status(node)["reconciles_by_cause"]["drift"]
    foreign = "10.244.250.0/24 via 10.99.0.254 dev eth0 proto static"
    subprocess.run(["ip", "-n", node, "route", "add", *foreign.split()], check=True)
    try:
        subprocess.run(["ip", "-n", node, "route", "del", victim, "proto", "80"], check=True)
        subprocess.run(["ip", "-n", node, "route", "replace", altered, "via", "10.99.0.254",
                        "dev", "eth0", "proto", "80"], check=True)
        wait_for(lambda: sorted(ln for ln in routes(node) if "proto 80" in ln and " via " in ln)
                 == sorted(ours), timeout=10, what="the deleted and the altered route repaired")
        assert node_status(node)["reconciles_by_cause"]["drift"] > before
        assert any(ln.startswith("10.244.250.0/24") and "proto static" in ln for ln in routes(node))
    finally:
        subprocess.run(["ip", "-n", node, "route", "del", *foreign.split()], capture_output=True)


def test_add_host_and_apply(lab, tmp_path):
    """Issue 9 item 7: `lab add-host` puts an extra namespace on the lab's segment (an external
    router's place) and prints where the datastore is; `lab apply` writes to that datastore."""
    out = ctl("lab", "add-host", "--name", LAB, "rtr").stdout
    fields = dict(line.split(" ", 1) for line in out.splitlines() if " " in line)
    assert fields["namespace"] == f"{LAB}-h-rtr" and fields["address"].startswith("10.99.0.")
    assert "DATASTORE_TYPE=kubernetes" in out
    node1 = lab["nodes"][sorted(lab["nodes"])[0]].split("/")[0]
    assert subprocess.run(["ip", "netns", "exec", f"{LAB}-h-rtr", "ping", "-c1", "-W2", node1],
                          capture_output=True).returncode == 0
    assert ctl("lab", "add-host", "--name", LAB, "rtr", check=False).returncode == 1  # taken
    assert ctl("lab", "add-host", "--name", LAB, "../x", check=False).returncode == 1
    peer = tmp_path / "peer.yaml"
    peer.write_text(json.dumps({"apiVersion": "projectcalico.org/v3", "kind": "BGPPeer",
                                "metadata": {"name": "office"},
                                "spec": {"peerIP": fields["address"].split("/")[0],
                                         "asNumber": 65001, "node": sorted(lab["nodes"])[0]}}))
    ctl("lab", "apply", "--name", LAB, "-f", str(peer))
    try:
        assert "office" in ctl("--lab", LAB, "get", "bgppeers").stdout
    finally:
        ctl("--lab", LAB, "delete", "bgppeer", "office")


GOBGP_EXTERNAL = """
[global.config]
  as = 65001
  router-id = "{me}"
{neighbors}
"""
GOBGP_NEIGHBOR = """
[[neighbors]]
  [neighbors.config]
    neighbor-address = "{peer}"
    peer-as = 64512
  [neighbors.transport.config]
    passive-mode = true
"""


def test_external_gobgp_router_learns_every_pod_block_over_ebgp(lab, tmp_path):
    """Issue 9 items 2 and 8: a global BGPPeer (peerIP, asNumber) gives every node an eBGP session
    to a router outside the cluster -- GoBGP on a lab host -- which then holds every node's pod
    block with that node as next hop; `node status` calls the session global. Deleting the BGPPeer
    ends the sessions without restarting anything."""
    out = ctl("lab", "add-host", "--name", LAB, "gob").stdout
    me = dict(line.split(" ", 1) for line in out.splitlines() if " " in line)["address"].split("/")[0]
    nodes = {n: a.split("/")[0] for n, a in lab["nodes"].items()}
    conf = tmp_path / "gobgpd.toml"
    conf.write_text(GOBGP_EXTERNAL.format(me=me, neighbors="".join(
        GOBGP_NEIGHBOR.format(peer=ip) for ip in sorted(nodes.values()))))
    ns, port = f"{LAB}-h-gob", "50077"
    gobgpd = subprocess.Popen(["ip", "netns", "exec", ns, "gobgpd", "-f", str(conf), "-t", "toml",
                               "--api-hosts", f"127.0.0.1:{port}", "--pprof-disable"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    peer = tmp_path / "peer.yaml"
    peer.write_text(json.dumps({"apiVersion": "projectcalico.org/v3", "kind": "BGPPeer",
                                "metadata": {"name": "office-router"},
                                "spec": {"peerIP": me, "asNumber": 65001}}))

    def rib() -> dict[str, set[str]]:
        got = subprocess.run(["ip", "netns", "exec", ns, "gobgp", "-p", port, "global", "rib", "-j"],
                             capture_output=True, text=True)
        if got.returncode != 0 or not got.stdout.strip():
            return {}
        return {prefix: {a["nexthop"] for path in paths for a in path["attrs"] if a["type"] == 3}
                for prefix, paths in json.loads(got.stdout).items()}

    blocks = {}
    for node in nodes:
        for ln in routes(node):
            if ln.startswith("blackhole 10.244."):
                blocks[ln.split()[1]] = nodes[node]
    try:
        ctl("lab", "apply", "--name", LAB, "-f", str(peer))
        wait_for(lambda: rib() == {b: {ip} for b, ip in blocks.items()}, timeout=30,
                 what="GoBGP holding every pod block with its node as next hop")
        for node in nodes:
            [ext] = [p for p in node_status(node)["peers"] if p["address"] == me]
            assert ext["peer_type"] == "global" and ext["state"] == "Established", ext
    finally:
        ctl("--lab", LAB, "delete", "bgppeer", "office-router", check=False)
        gobgpd.terminate()
        gobgpd.wait(timeout=10)
    for node in nodes:
        wait_for(lambda: all(p["address"] != me for p in node_status(node)["peers"]), timeout=15,
                 what=f"{node} dropping the deleted BGPPeer's session")


def _relay_of(node: str) -> int:
    """PID of the relay (socat) that the node's ExaBGP runs (found in the node's namespace)."""
    pids = subprocess.run(["ip", "netns", "pids", node], capture_output=True, text=True).stdout.split()
    for pid in pids:
        try:
            if b"UNIX-CONNECT:" in Path(f"/proc/{pid}/cmdline").read_bytes():
                return int(pid)
        except OSError:
            continue
    pytest.fail(f"no relay process in {node}")


def test_killed_relay_keeps_traffic_is_reported_and_repaired(lab):
    """Regression (issue 5, defect 2): `kill -9` of a node's relay cut its agent off from BGP for
    good while node status still said Established."""
    node2 = f"{LAB}-node2"
    pairs = [(a, b) for a in lab["pods"] for b in lab["pods"]
             if a["node"] != b["node"] and node2 in (a["node"], b["node"])]
    os.kill(_relay_of(node2), 9)
    status = wait_for(lambda: (s := node_status(node2))["bgp_speaker"]["state"] != "running" and s,
                      timeout=5, what="node status to report the broken speaker")
    assert all(p["state"] != "Established" for p in status["peers"]), status["peers"]
    failures = [f"{a['netns']} -> {b['ip']}" for a, b in pairs if subprocess.run(
        ["ip", "netns", "exec", a["netns"], "ping", "-c", "1", "-W", "1", b["ip"]],
        capture_output=True).returncode != 0]
    assert not failures, f"traffic to/from {node2}'s pods failed while its speaker restarted"
    wait_for(lambda: ctl("node", "status", "--node", node2, check=False).returncode == 0,
             timeout=30, what="node2's sessions Established again")
    assert node_status(node2)["bgp_speaker"]["state"] == "running"


def test_kubectl_sees_the_lab_as_a_kubernetes_cluster(lab):
    """The lab runs on the Kubernetes datastore by default: its Nodes, Pods and Calico resources
    are Kubernetes objects a real kubectl reads (inside the fabric namespace, where the API is)."""
    assert lab["datastore"] == "kubernetes"
    config = ctl("lab", "kubeconfig", "--name", LAB).stdout
    path = Path(f"/run/pycalico-lab/{LAB}/kubeconfig")
    assert yaml.safe_load(config) == yaml.safe_load(path.read_text())
    assert yaml.safe_load(config)["clusters"][0]["cluster"]["server"].endswith(":6443")

    def kubectl(*args: str) -> str:
        return subprocess.run(["ip", "netns", "exec", f"{LAB}-fabric", "kubectl", "--kubeconfig",
                               str(path), *args], capture_output=True, text=True, check=True,
                              timeout=60).stdout

    assert kubectl("get", "nodes", "-o", "name").split() == [f"node/{n}" for n in sorted(lab["nodes"])]
    pods = json.loads(kubectl("get", "pods", "-o", "json"))["items"]
    ips = {p["metadata"]["name"]: p["metadata"]["annotations"]["cni.projectcalico.org/podIP"]
           for p in pods}
    assert ips == {p["name"]: f"{p['ip']}/32" for p in lab["pods"]}
    assert "default-ipv4-ippool" in kubectl("get", "ippools.crd.projectcalico.org", "-o", "name")
    node = json.loads(kubectl("get", "node", f"{LAB}-node1", "-o", "json"))
    assert node["metadata"]["annotations"]["projectcalico.org/IPv4Address"] == lab["nodes"][f"{LAB}-node1"]


def test_node_diags_writes_one_private_tarball(lab, tmp_path):
    out = ctl("node", "diags", "--node", f"{LAB}-node1", "--dir", str(tmp_path)).stdout
    [path] = list(tmp_path.glob(f"pycalico-diags-{LAB}-node1-*.tar.gz"))
    assert str(path) in out and stat.S_IMODE(path.stat().st_mode) == 0o600
    import tarfile

    with tarfile.open(path) as tar:
        files = {Path(m.name).name: tar.extractfile(m).read() for m in tar.getmembers()}
    assert {"agent-status.json", "agent-routes.json", "exabgp.conf", "exabgp.log", "agent.log",
            "ip-route.txt", "ip-addr.txt"} <= files.keys()
    assert json.loads(files["agent-status.json"])["node"] == f"{LAB}-node1"
    assert b"proto 80" in files["ip-route.txt"]  # the node's namespace, not this one
    assert files["errors.txt"] == b""


def _fetch(url: str) -> tuple[int, str]:
    """Runs inside a node namespace (lab.netns.in_netns): GET url -> (status, body)."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def test_health_and_metrics_of_a_real_agent(lab):
    """Felix's ports: /readiness and /liveness on 9099 (localhost), Prometheus on 9091."""
    from prometheus_client.parser import text_string_to_metric_families

    from lab.netns import in_netns

    node = f"{LAB}-node1"
    status, body = in_netns(node, _fetch, "http://127.0.0.1:9099/readiness")
    assert status == 200, body
    assert in_netns(node, _fetch, "http://127.0.0.1:9099/liveness")[0] == 200
    status, text = in_netns(node, _fetch, "http://127.0.0.1:9091/metrics")
    assert status == 200
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}
    assert samples[("pycalico_bgp_peers", (("state", "up"),))] == 2
    assert samples[("pycalico_routes", (("kind", "learned"),))] == 2
    assert samples[("pycalico_routes", (("kind", "local_workload"),))] == 2
    assert samples[("pycalico_datastore_in_sync", ())] == 1


def test_restart_keeps_traffic_and_adopts_routes(lab):
    node1_pod = next(p for p in lab["pods"] if p["node"] == f"{LAB}-node1")
    node2_pod = next(p for p in lab["pods"] if p["node"] == f"{LAB}-node2")
    node3_pod = next(p for p in lab["pods"] if p["node"] == f"{LAB}-node3")
    node2 = f"{LAB}-node2"
    # node1 <-> node3 is the acceptance; to and from node2's own pods is Calico defect 1 (traffic
    # drops while calico-node restarts): its kernel routes stay, and its peers hold its routes
    # as stale (graceful restart) until it has re-announced them.
    pairs = [(node1_pod, node3_pod), (node3_pod, node1_pod), (node1_pod, node2_pod),
             (node2_pod, node3_pod)]
    monitor = subprocess.Popen(["ip", "-n", node2, "monitor", "route"], stdout=subprocess.PIPE,
                               text=True)
    stop = threading.Event()
    failures: list[str] = []
    sent = [0]

    def keep_pinging() -> None:
        while not stop.is_set():
            for a, b in pairs:
                r = subprocess.run(["ip", "netns", "exec", a["netns"], "ping", "-c", "1", "-W", "1",
                                    b["ip"]], capture_output=True)
                sent[0] += 1
                if r.returncode != 0:
                    failures.append(f"{a['netns']} -> {b['ip']}")

    pinger = threading.Thread(target=keep_pinging)
    try:
        old_pid = lab_state()["agent_pids"][node2]
        pinger.start()
        ctl("lab", "restart", "--name", LAB, "--node", node2)
        new_pid = lab_state()["agent_pids"][node2]
        assert new_pid != old_pid
        wait_for(lambda: ctl("node", "status", "--node", node2, check=False).returncode == 0,
                 timeout=60, what="the restarted agent's peers to be Established again")
        wait_for(lambda: sent[0] >= 3 * len(pairs), timeout=30, what="pings during the restart")
    finally:
        stop.set()
        if pinger.is_alive():
            pinger.join(timeout=30)
        monitor.terminate()
        events, _ = monitor.communicate(timeout=10)
    assert not failures, f"pings failed during restart: {failures}"
    deleted = [ln for ln in events.splitlines() if ln.startswith("Deleted") and "proto 80" in ln]
    assert not deleted, f"the restarted agent deleted its routes instead of adopting them: {deleted}"
    wait_for(lambda: ctl("node", "routes", "--node", node2, check=False).returncode == 0,
             timeout=30, what="the restarted agent's desired routes to match the kernel")


def test_down_leaves_nothing(lab):
    state = lab_state()
    pids = [state["etcd_pid"], *state["agent_pids"].values()]
    ctl("lab", "down", "--name", LAB)
    assert lab_namespaces() == []
    for pid in pids:
        alive = Path(f"/proc/{pid}").exists() and "zombie" not in _proc_state(pid)
        assert not alive, f"pid {pid} still runs after lab down"
    assert not Path(f"/run/pycalico-lab/{LAB}").exists()
    ctl("lab", "down", "--name", LAB)  # idempotent


def _proc_state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().lower()
    except OSError:
        return "zombie"


def test_lab_rejects_bad_name():
    out = ctl("lab", "up", "--name", "Bad_Name", check=False)
    assert out.returncode != 0 and "--name" in out.stderr


def test_down_after_a_crash_needs_only_the_namespaces():
    """A lab whose state file is gone (the CLI crashed) is still removed completely by name."""
    name = f"c{secrets.token_hex(2)}"
    try:
        ctl("lab", "up", "--name", name, "--nodes", "1", "--pods-per-node", "1")
        pids = [int(p) for ns in (f"{name}-fabric", f"{name}-node1") for p in subprocess.run(
            ["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()]
        assert len(pids) >= 3  # etcd, agent, its ExaBGP child
        Path(f"/run/pycalico-lab/{name}/state.json").unlink()
    finally:
        ctl("lab", "down", "--name", name)
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert f"{name}-" not in out
    assert not [pid for pid in pids if Path(f"/proc/{pid}").exists()
                and "zombie" not in _proc_state(pid)]
    assert not list(Path("/run/pycalico").glob(f"{name}-*"))


def test_every_lab_command_refuses_a_name_that_is_a_path():
    """Regression: `lab down --name ../X` ran rmtree(/run/pycalico-lab/../X) on any directory."""
    canary = Path(f"/run/pyc-canary-{secrets.token_hex(3)}")
    canary.mkdir(mode=0o700)
    try:
        (canary / "keep").write_text("still here")
        name = f"../{canary.name}"
        for cmd in (["down"], ["ping"], ["restart", "--node", "x"], ["up"]):
            out = ctl("lab", *cmd, "--name", name, check=False)
            assert out.returncode != 0 and "--name" in out.stderr, (cmd, out.stderr)
        assert (canary / "keep").read_text() == "still here"
    finally:
        shutil.rmtree(canary, ignore_errors=True)


def test_a_lab_on_the_etcd_datastore():
    name = f"d{secrets.token_hex(2)}"
    try:
        ctl("lab", "up", "--name", name, "--nodes", "2", "--pods-per-node", "1", "--datastore", "etcdv3")
        assert json.loads(Path(f"/run/pycalico-lab/{name}/state.json").read_text())["datastore"] == "etcdv3"
        assert "2/2 pod pairs reachable" in ctl("lab", "ping", "--name", name).stdout
        out = ctl("lab", "kubeconfig", "--name", name, check=False)
        assert out.returncode == 1 and "no Kubernetes API" in out.stderr
        assert "default-ipv4-ippool" in ctl("--lab", name, "get", "ippool").stdout
    finally:
        ctl("lab", "down", "--name", name)
