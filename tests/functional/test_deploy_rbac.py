"""The manifest's ClusterRole against the requests our Kubernetes client really makes.

The stand-in does no authorization, so the requests are recorded instead: the agent's start-up
(register its Node, snapshot and watch its kinds), the CNI path (IPAM assign, the pod annotation,
their removal) and pycalicoctl's writes run against the stand-in through one KubernetesDatastore,
every request is turned into the (API group, resource, verb) RBAC would check, and then:
every request is allowed, and every verb granted on a core resource is used (least privilege).
"""
from __future__ import annotations

import ipaddress
import threading

import pytest
from kubernetes import client as k8s

from crds import API_VERSION, load
from datastore.kubernetes import KubernetesDatastore
from felix.agent import register_node
from felix.cluster import WATCHED_KINDS
from ipam import IPAM
from lab.manifest import documents, find
from tests.apiserver_fixture import client_configuration, fresh_apiserver  # noqa: F401  (fixture)

NODE, NS, POD = "node-a", "default", "web"


def rbac_request(method: str, path: str, query: dict[str, str]) -> tuple[str, str, str]:
    """(apiGroup, resource, verb) as the API server's authorizer sees an HTTP request."""
    parts = path.strip("/").split("/")
    group, rest = ("", parts[2:]) if parts[0] == "api" else (parts[1], parts[3:])
    if rest[0] == "namespaces" and len(rest) > 2:
        rest = rest[2:]
    resource, item = "/".join(rest[::2]), len(rest) % 2 == 0
    verb = {"POST": "create", "PUT": "update", "PATCH": "patch",
            "DELETE": "delete" if item else "deletecollection"}.get(method)
    if method == "GET":
        verb = "watch" if query.get("watch") in ("1", "true") else "get" if item else "list"
    return group, resource, verb


def test_rbac_request_mapping():
    assert rbac_request("GET", "/api/v1/namespaces", {"limit": "1"}) == ("", "namespaces", "list")
    assert rbac_request("PATCH", "/api/v1/namespaces/d/pods/p", {}) == ("", "pods", "patch")
    assert rbac_request("GET", "/apis/crd.projectcalico.org/v1/ippools", {"watch": "1"}) == (
        "crd.projectcalico.org", "ippools", "watch")
    assert rbac_request("PUT", "/api/v1/nodes/n", {}) == ("", "nodes", "update")


def granted() -> dict[tuple[str, str], set[str]]:
    out: dict[tuple[str, str], set[str]] = {}
    for rule in find(documents(), "ClusterRole", "pycalico-node")["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                out.setdefault((group, resource), set()).update(rule["verbs"])
    return out


@pytest.fixture
def recorded(fresh_apiserver):  # noqa: F811
    """A datastore on the stand-in (the manifest's CRDs applied, a Node and a Pod made as kubelet
    and the scheduler would), and the list its requests are recorded into."""
    api = k8s.ApiClient(client_configuration(fresh_apiserver.url))
    try:
        ext = k8s.ApiextensionsV1Api(api)
        for crd in (d for d in documents() if d["kind"] == "CustomResourceDefinition"):
            ext.create_custom_resource_definition(crd)
        core = k8s.CoreV1Api(api)
        core.create_node({"metadata": {"name": NODE}})
        core.create_namespaced_pod(NS, {"metadata": {"name": POD}, "spec": {
            "nodeName": NODE, "containers": [{"name": "c", "image": "busybox"}]}})
        ds = KubernetesDatastore(k8s.ApiClient(client_configuration(fresh_apiserver.url)),
                                 node_name=NODE)
        calls: list[tuple[str, str, dict]] = []
        real = ds._request

        def recording(method, path, query=None, **kwargs):
            calls.append((method, path, dict(query or {})))
            return real(method, path, query, **kwargs)

        ds._request = recording  # type: ignore[method-assign]
        try:
            yield ds, calls
        finally:
            ds.close()
    finally:
        api.close()


def resource(kind: str, name: str, spec: dict, namespace: str | None = None):
    return load({"apiVersion": API_VERSION, "kind": kind,
                 "metadata": {"name": name, **({"namespace": namespace} if namespace else {})},
                 "spec": spec})


def agent_cni_and_cli(ds: KubernetesDatastore) -> None:
    # pycalicoctl: a pool and a peer, changed and removed.
    pool = ds.create(resource("IPPool", "default-ipv4", {"cidr": "10.244.0.0/16"}))
    ds.update(pool.model_copy(update={"spec": pool.spec.model_copy(update={"nat_outgoing": True})}))
    peer = ds.create(resource("BGPPeer", "tor", {"peerIP": "10.0.0.254", "asNumber": 64600}))
    ds.get("BGPPeer", peer.name)
    ds.delete("BGPPeer", peer.name)
    # The agent: its Node's address, then a snapshot and a watch of what it follows.
    register_node(ds, NODE, ipaddress.IPv4Interface("10.0.0.1/24"))
    listing = ds.snapshot(WATCHED_KINDS)
    stop = threading.Event()
    events = ds.watch(WATCHED_KINDS, listing.revision, stop)
    # The CNI path: an address, the pod's annotations, and both removed again.
    address = IPAM(ds).assign(node=NODE, handle=f"k8s-pod-network.{POD}")
    wep = ds.create(resource("WorkloadEndpoint", f"{NODE.replace('-', '--')}-k8s-{POD}-eth0", {
        "node": NODE, "pod": POD, "interfaceName": "cali0123456789a",
        "ipNetworks": [f"{address}/32"]}, namespace=NS))
    assert next(events) is not None  # the watch is really open and delivering
    stop.set()
    events.close()
    ds.delete("WorkloadEndpoint", wep.name, NS)
    assert IPAM(ds).release(f"k8s-pod-network.{POD}") == [address]


def test_every_request_is_allowed_and_every_core_grant_is_used(recorded):
    ds, calls = recorded
    agent_cni_and_cli(ds)
    used: dict[tuple[str, str], set[str]] = {}
    for method, path, query in calls:
        group, res, verb = rbac_request(method, path, query)
        used.setdefault((group, res), set()).add(verb)
    allowed = granted()
    denied = {k: v - allowed.get(k, set()) for k, v in used.items() if v - allowed.get(k, set())}
    assert not denied, f"the ClusterRole would deny {denied}"
    for key in (("", "nodes"), ("", "pods")):
        assert used.get(key) == allowed[key], f"{key}: granted {allowed[key]}, used {used.get(key)}"
    assert set(allowed) == set(used) | {  # every CRD is granted, whether this run used it or not
        k for k in allowed if k[0] == "crd.projectcalico.org"}
    crd_verbs = set().union(*(v for k, v in used.items() if k[0] == "crd.projectcalico.org"))
    assert crd_verbs == {"get", "list", "watch", "create", "update", "delete"}
