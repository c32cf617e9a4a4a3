"""The lab on the Kubernetes datastore: the API server stand-in in the fabric, Nodes and Pods as a
kubelet would make them.

Does I/O (spawns the stand-in, HTTP to it from inside the lab's fabric namespace). The stand-in
(``lab.apiserver``) listens on the fabric bridge address, beside the lab's etcd, which stores its
objects; agents and the CNI path reach it from the node namespaces with the lab's kubeconfig. As
every address lives only inside the lab's namespaces, ``kubectl`` runs in the fabric namespace:
``ip netns exec <L>-fabric kubectl --kubeconfig /run/pycalico-lab/<L>/kubeconfig get nodes``.
"""
from __future__ import annotations

import time
from pathlib import Path

import hostio

API_PORT = 6443
NAMESPACE = "default"


def write_kubeconfig(lab_dir: Path, server: str) -> Path:
    """The lab's kubeconfig (plain HTTP, no credentials: the stand-in has none), 0600."""
    from lab.apiserver.launch import kubeconfig

    path = lab_dir / "kubeconfig"
    hostio.write_private(path, kubeconfig(server))
    return path


def apiserver_argv(etcd_url: str, listen_ip: str) -> list[str]:
    import sys

    return [sys.executable, "-m", "lab.apiserver", "--etcd-endpoints", etcd_url,
            "--listen", f"{listen_ip}:{API_PORT}"]


def _api(kubeconfig: str):
    from kubernetes import config

    return config.new_client_from_config(config_file=kubeconfig)


def wait_ready(kubeconfig: str, timeout: float = 30.0) -> None:
    """Runs inside the fabric namespace: until the stand-in answers /version."""
    from kubernetes import client

    deadline = time.monotonic() + timeout
    api = _api(kubeconfig)
    api.configuration.retries = False
    try:
        while True:
            try:
                client.VersionApi(api).get_code()
                return
            except Exception:  # noqa: BLE001 - not listening yet; the deadline decides
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
    finally:
        api.close()


def apply_crds(kubeconfig: str) -> int:
    """Runs inside the fabric namespace: the CRDs we ship (generated from the models)."""
    from kubernetes import client

    from crds.manifests import definitions

    api = _api(kubeconfig)
    try:
        ext = client.ApiextensionsV1Api(api)
        for crd in definitions():
            ext.create_custom_resource_definition(crd)
        return len(definitions())
    finally:
        api.close()


def create_nodes(kubeconfig: str, nodes: list[tuple[str, str]]) -> None:
    """Runs inside the fabric namespace: each ``(name, address)`` as a Kubernetes Node, as kubelet
    registers it. All in one call: each call is a fork that imports the client."""
    from kubernetes import client

    api = _api(kubeconfig)
    try:
        core = client.CoreV1Api(api)
        for name, address in nodes:
            core.create_node({
                "apiVersion": "v1", "kind": "Node",
                "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name,
                                                      "kubernetes.io/os": "linux"}},
                "status": {"addresses": [{"type": "InternalIP", "address": address},
                                         {"type": "Hostname", "address": name}]}})
    finally:
        api.close()


def create_pods(kubeconfig: str, pods: list[tuple[str, str]]) -> dict[str, str]:
    """Runs inside the fabric namespace: each ``(name, node)`` as a Pod bound to its node (what the
    scheduler leaves for kubelet); returns ``{name: uid}``."""
    from kubernetes import client

    api = _api(kubeconfig)
    try:
        core = client.CoreV1Api(api)
        return {name: core.create_namespaced_pod(NAMESPACE, {
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"app": name}},
            "spec": {"nodeName": node, "containers": [{"name": "main", "image": "pause"}]},
        }).metadata.uid for name, node in pods}
    finally:
        api.close()
