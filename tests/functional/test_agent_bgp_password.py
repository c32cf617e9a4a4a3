"""The agent on the Kubernetes datastore with a BGPPeer whose password is a Secret, against BIRD 2.

Everything runs in namespaces: etcd, the API server stand-in and the agent in the node namespace
(the stand-in on its loopback), BIRD in the fabric namespace at the other end of the node's eth0.
The Secret is read from the agent's namespace (POD_NAMESPACE, as the manifest's downward API
sets it) and watched: changing it moves the session to the new password without an agent
restart, and deleting it removes the session (never up without a password) with a log line
naming the BGPPeer, the field and the Secret.
"""
from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import hostio
from felix.status import query
from lab.apiserver.launch import kubeconfig, ready
from lab.netns import in_netns
from tests.functional.agent_node import BIN, start_etcd_in
from tests.helpers import free_port, veth_between, wait_for

pytestmark = pytest.mark.root

NS = "kube-system"
NODE_IP, BIRD_IP = "10.98.0.1", "10.98.0.254"
MARK = "Qv8Lm"  # in every password, and nowhere else

BIRD_CONF = """\
router id {bird};
log "{log}" all;
protocol device {{}}
protocol bgp tor {{
    local {bird} as 64512;
    neighbor {node} as 64512;
    direct;
    passive on;
    hold time 9;
    password "{password}";
    ipv4 {{ import all; export none; }};
}}
"""


def _seed(kubeconfig_path: str, node: str, password: str) -> None:
    """Inside the node namespace: the CRDs, our Node (as kubelet registers it), the BGPPeer and
    its Secret."""
    from kubernetes import client

    from lab.manifest import documents

    from kubernetes import config as k8s_config

    api = k8s_config.new_client_from_config(config_file=kubeconfig_path)
    try:
        ext = client.ApiextensionsV1Api(api)
        for crd in (d for d in documents() if d["kind"] == "CustomResourceDefinition"):
            ext.create_custom_resource_definition(crd)
        client.CoreV1Api(api).create_node({"metadata": {"name": node}})
        client.CustomObjectsApi(api).create_cluster_custom_object(
            "crd.projectcalico.org", "v1", "bgppeers", {
                "apiVersion": "crd.projectcalico.org/v1", "kind": "BGPPeer",
                "metadata": {"name": "router"},
                "spec": {"peerIP": BIRD_IP, "asNumber": 64512,
                         "password": {"secretKeyRef": {"name": "bgp-secrets", "key": "router"}}}})
        _put_secret(api, password)
    finally:
        api.close()


def _put_secret(api, password: str | None) -> None:
    from kubernetes import client

    core = client.CoreV1Api(api)
    if password is None:
        core.delete_namespaced_secret("bgp-secrets", NS)
        return
    body = {"metadata": {"name": "bgp-secrets"},
            "data": {"router": base64.b64encode(password.encode()).decode()}}
    try:
        core.replace_namespaced_secret("bgp-secrets", NS, body)
    except client.exceptions.ApiException as exc:
        if exc.status != 404:
            raise
        core.create_namespaced_secret(NS, body)


def _set_secret(kubeconfig_path: str, password: str | None) -> None:
    from kubernetes import config as k8s_config

    api = k8s_config.new_client_from_config(config_file=kubeconfig_path)
    try:
        _put_secret(api, password)
    finally:
        api.close()


class Bird:
    def __init__(self, ns: str, workdir: Path, procs, password: str) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.sock, self.log, self.conf = workdir / "bird.ctl", workdir / "bird.log", workdir / "bird.conf"
        self.set_password(password, reload=False)
        subprocess.run(["bird", "-p", "-c", str(self.conf)], check=True)  # parse only: clear errors
        self.proc = procs.add(subprocess.Popen(
            ["ip", "netns", "exec", ns, "bird", "-f", "-c", str(self.conf), "-s", str(self.sock),
             "-P", str(workdir / "bird.pid")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_for(lambda: self.proc.poll() is None and self.sock.exists(), 10, what="bird socket")

    def set_password(self, password: str, reload: bool = True) -> None:
        self.conf.write_text(BIRD_CONF.format(bird=BIRD_IP, node=NODE_IP, log=self.log,
                                              password=password))
        if reload:
            out = subprocess.run(["birdc", "-s", str(self.sock), "configure"], capture_output=True,
                                 text=True, timeout=10, check=False)
            assert "Reconfigur" in out.stdout, out.stdout + out.stderr  # "...ed" or "...ation in progress"

    def state(self) -> str:
        out = subprocess.run(["birdc", "-s", str(self.sock), "show", "protocols", "all", "tor"],
                             capture_output=True, text=True, timeout=10, check=False).stdout
        for line in out.splitlines():
            if line.strip().startswith("BGP state:"):
                return line.split(":", 1)[1].strip()
        return ""


def test_agent_reads_watches_and_drops_the_bgppeer_password(netns, procs, tmp_path):
    node_ns, fabric = netns("pw"), netns("pwf")
    node = node_ns.lower()
    veth_between(node_ns, "eth0", f"{NODE_IP}/24", fabric, "eth0", f"{BIRD_IP}/24")
    etcd_url = f"http://127.0.0.1:{free_port()}"
    start_etcd_in(procs, node_ns, etcd_url, tmp_path / "etcd")
    api_url = f"http://127.0.0.1:{free_port()}"
    procs.add(subprocess.Popen(
        ["ip", "netns", "exec", node_ns, sys.executable, "-m", "lab.apiserver", "--etcd-endpoints",
         etcd_url, "--listen", api_url.removeprefix("http://"), "--bookmark-interval", "0.5"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    wait_for(lambda: in_netns(node_ns, ready, api_url), 20, what="API server stand-in")
    config = tmp_path / "kubeconfig"
    hostio.write_private(config, kubeconfig(api_url))
    in_netns(node_ns, _seed, str(config), node, f"{MARK}-one")
    bird = Bird(fabric, tmp_path / "bird", procs, f"{MARK}-one")

    log_path = tmp_path / "agent.log"
    with open(log_path, "ab") as log:
        agent = procs.add(subprocess.Popen(
            ["ip", "netns", "exec", node_ns, str(BIN / "pycalico-node"), "--name", node,
             "--ip", f"{NODE_IP}/24", "--datastore-type", "kubernetes", "--kubeconfig", str(config),
             "--run-dir", str(tmp_path / "run"), "--health-port", "0"],
            env={**os.environ, "POD_NAMESPACE": NS}, stdout=log, stderr=log))
    sock = tmp_path / "run" / "status.sock"

    def peers() -> list[dict]:
        try:
            return query(node, "status", path=sock)["peers"]
        except (OSError, RuntimeError):
            return []

    wait_for(lambda: bird.state() == "Established", 30, what="BIRD established with the Secret's password")
    assert [(p["address"], p["state"]) for p in peers()] == [(BIRD_IP, "Established")]
    assert MARK not in json.dumps(query(node, "status", path=sock)), "password in node status"

    # A new password in the Secret: the session moves to it (BIRD still has the old one: down),
    # then comes back once BIRD has the new one too. The agent is the same process throughout.
    in_netns(node_ns, _set_secret, str(config), f"{MARK}-two")
    wait_for(lambda: bird.state() != "Established", 20, what="the old password's session goes down")
    bird.set_password(f"{MARK}-two")
    wait_for(lambda: bird.state() == "Established", 30, what="established with the new password")
    assert agent.poll() is None

    # The Secret gone: no session at all (not one without a password), and the log says why.
    in_netns(node_ns, _set_secret, str(config), None)
    wait_for(lambda: peers() == [] and bird.state() != "Established", 20,
             what="the session is removed with its Secret")
    text = log_path.read_text()
    assert "BGPPeer router: password: secret 'bgp-secrets' key 'router' not found" in text, text[-3000:]
    assert MARK not in text
    assert MARK not in (tmp_path / "run" / "exabgp.log").read_text()
    assert agent.poll() is None
