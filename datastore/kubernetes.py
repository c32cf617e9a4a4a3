"""Kubernetes backend: Calico's resources in the Kubernetes API, through the official client.

Does network I/O (HTTP to the API server). Where each of our kinds lives (Calico's KDD layout):

- every Calico kind but Node and WorkloadEndpoint: a custom resource ``crd.projectcalico.org/v1``
  with the same ``spec`` as ``projectcalico.org/v3``;
- ``Node``: the Kubernetes Node, with our fields as ``projectcalico.org/*`` annotations (the rest of
  the Kubernetes Node is never touched);
- ``WorkloadEndpoint``: derived from a Pod that has a ``cni.projectcalico.org/podIP(s)`` annotation
  (written by the CNI path); creating one annotates an existing Pod, deleting one removes them.

Semantics are the etcd backend's (``tests/datastore_conformance.py`` runs against all): every write
is compare-and-swap on ``metadata.resourceVersion`` (the server answers 409), a write without a
usable revision never overwrites, a watch from a compacted revision raises ``Compacted`` (410).
A snapshot lists the first kind at the current revision and every other kind at exactly that one
(``resourceVersionMatch=Exact``), so it is one consistent view, as etcd's is. resourceVersions are
compared as integers, which holds for every etcd-backed API server (kube-apiserver and our stand-in).

Requests go through ``ApiClient.param_serialize``/``call_api``: one code path for custom resources,
nodes and pods, with the client's own auth and TLS handling from the kubeconfig.
"""
from __future__ import annotations

import hashlib
import json
import logging
import queue
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import urllib3

from hostio.lean import lean_kubernetes

lean_kubernetes()  # before the first kubernetes import: only the client parts we use (hostio.lean)
from kubernetes import client as k8s  # noqa: E402
from kubernetes import config as k8s_config  # noqa: E402
from kubernetes.client.exceptions import ApiException  # noqa: E402

from crds import API_VERSION, Resource, kind_class, load
from datastore.apiwatch import WatchThread, status_error
from datastore.base import (
    AlreadyExists, Conflict, Datastore, DatastoreError, Listing, NotFound, Unavailable, WatchEvent,
)

log = logging.getLogger(__name__)

GROUP_VERSION = "crd.projectcalico.org/v1"
ANNOTATION = "projectcalico.org/"
POD_IP, POD_IPS, CONTAINER_ID = ("cni.projectcalico.org/podIP", "cni.projectcalico.org/podIPs",
                                 "cni.projectcalico.org/containerID")
# Node.spec fields <-> Kubernetes Node annotations (Calico's names).
_NODE_BGP = {"ipv4Address": "IPv4Address", "ipv6Address": "IPv6Address", "asNumber": "ASNumber",
             "routeReflectorClusterID": "RouteReflectorClusterID",
             "ipv4IPIPTunnelAddr": "IPv4IPIPTunnelAddr"}
_NODE_SPEC = {"ipv4VXLANTunnelAddr": "IPv4VXLANTunnelAddr", "vxlanTunnelMACAddr": "VXLANTunnelMACAddr"}
_PAGE = 500
_POLL = 0.1  # how often a watch looks at its stop flag, seconds


def connect(kubeconfig: str | None = None, *, node_name: str | None = None) -> KubernetesDatastore:
    """From ``kubeconfig`` (or $KUBECONFIG / ~/.kube/config), else the in-cluster service account."""
    try:
        if kubeconfig or not _in_cluster():
            api = k8s_config.new_client_from_config(config_file=kubeconfig)
        else:
            cfg = k8s.Configuration()
            k8s_config.load_incluster_config(client_configuration=cfg)
            api = k8s.ApiClient(cfg)
    except (k8s_config.ConfigException, OSError, ValueError) as exc:
        raise ValueError(f"kubeconfig: cannot load a Kubernetes client configuration ({exc}); "
                         "set KUBECONFIG or --kubeconfig, or use --datastore-type etcdv3 with "
                         "ETCD_ENDPOINTS") from None
    return KubernetesDatastore(api, node_name=node_name)


def _in_cluster() -> bool:
    import os

    return bool(os.environ.get("KUBERNETES_SERVICE_HOST"))


@dataclass(frozen=True)
class _Place:
    """Where one of our kinds lives: its collection path, scope and Kubernetes kind."""

    kind: str
    prefix: str  # "/apis/crd.projectcalico.org/v1" or "/api/v1"
    plural: str
    namespaced: bool

    def collection(self, namespace: str | None) -> str:
        if self.namespaced and namespace:
            return f"{self.prefix}/namespaces/{namespace}/{self.plural}"
        return f"{self.prefix}/{self.plural}"

    def item(self, name: str, namespace: str | None) -> str:
        if self.namespaced and not namespace:
            raise ValueError(f"{self.kind} is namespaced: a namespace is required")
        return f"{self.collection(namespace)}/{name}"


def place_of(kind: str) -> _Place:
    cls = kind_class(kind)
    if cls.KIND == "Node":
        return _Place("Node", "/api/v1", "nodes", False)
    if cls.KIND == "WorkloadEndpoint":
        return _Place("WorkloadEndpoint", "/api/v1", "pods", True)
    return _Place(cls.KIND, f"/apis/{GROUP_VERSION}", cls.PLURAL, cls.NAMESPACED)


class KubernetesDatastore(Datastore):
    """``node_name`` restricts WorkloadEndpoints to that node's pods (the agent's view)."""

    def __init__(self, api: k8s.ApiClient, *, node_name: str | None = None,
                 timeout: float = 10.0) -> None:
        self._api, self._node, self._timeout = api, node_name, timeout

    # -- reads --
    def get(self, kind: str, name: str, namespace: str | None = None) -> Resource:
        place = place_of(kind)
        key = name
        if place.kind == "WorkloadEndpoint":
            key = _pod_of(name)
            if key is None:
                raise NotFound(f"WorkloadEndpoint {name} not found (not a <node>-k8s-<pod>-<if> name)")
        resource = from_k8s(place.kind, self._request("GET", place.item(key, namespace)))
        if resource is None or resource.name != name:  # no endpoint, or the pod is on another node
            raise NotFound(f"{place.kind} {name} not found")
        return resource

    def list(self, kind: str, namespace: str | None = None) -> Listing:
        items, revision = self._list(place_of(kind), namespace)
        return Listing(items, revision)

    def snapshot(self, kinds: Iterable[str]) -> Listing:
        places = sorted({place_of(k).kind: place_of(k) for k in kinds}.values(), key=lambda p: p.kind)
        if not places:
            return Listing([], self._current_revision())
        items, revision = self._list(places[0], None)
        for place in places[1:]:
            more, _ = self._list(place, None, revision)
            items += more
        return Listing(items, revision)

    def _current_revision(self) -> int:
        listing = self._request("GET", "/api/v1/namespaces", {"limit": "1"})
        return int(listing["metadata"]["resourceVersion"])

    def _list(self, place: _Place, namespace: str | None,
              at: int | None = None) -> tuple[list[Resource], int]:
        query = self._selector(place) | {"limit": str(_PAGE)}
        if at is not None:
            query |= {"resourceVersion": str(at), "resourceVersionMatch": "Exact"}
        items: list[Resource] = []
        while True:
            page = self._request("GET", place.collection(namespace), query)
            items += [r for r in (from_k8s(place.kind, o) for o in page.get("items") or []) if r]
            token = page["metadata"].get("continue")
            if not token:
                break
            query = {k: v for k, v in query.items() if not k.startswith("resourceVersion")}
            query["continue"] = token
        revision = at if at is not None else int(page["metadata"]["resourceVersion"])
        return sorted(items, key=lambda r: (r.metadata.namespace or "", r.name)), revision

    def _selector(self, place: _Place) -> dict[str, str]:
        if place.kind == "WorkloadEndpoint" and self._node:
            return {"fieldSelector": f"spec.nodeName={self._node}"}
        return {}

    # -- writes --
    def create(self, resource: Resource) -> Resource:
        place = place_of(resource.KIND)
        if place.kind == "WorkloadEndpoint":
            return self._annotate_pod(resource, create=True)
        fresh = resource.with_revision(None)
        body = new_node_k8s(fresh) if place.kind == "Node" else to_k8s(fresh)
        obj = self._request("POST", place.collection(resource.metadata.namespace), body=body)
        return _loaded(place.kind, obj)

    def update(self, resource: Resource) -> Resource:
        place = place_of(resource.KIND)
        name, ns = resource.name, resource.metadata.namespace
        if not _usable(resource.metadata.resource_version):
            self.get(place.kind, name, ns)  # NotFound if it is not there
            raise Conflict(f"{place.kind} {name}: no usable resourceVersion; refusing to overwrite")
        if place.kind == "WorkloadEndpoint":
            return self._annotate_pod(resource, create=False)
        if place.kind == "Node":
            current = self._request("GET", place.item(name, ns))
            body = node_to_k8s(resource, current)
        else:
            body = to_k8s(resource)
        return _loaded(place.kind, self._request("PUT", place.item(name, ns), body=body))

    def delete(self, kind: str, name: str, namespace: str | None = None, *,
               revision: str | None = None) -> Resource:
        place = place_of(kind)
        if place.kind == "WorkloadEndpoint":
            return self._unannotate_pod(name, namespace, revision)
        for _ in range(5):
            # Read first: we return the last stored value, and delete exactly that one (so an
            # unconditional delete that races a writer reads again instead of deleting blind).
            last = self.get(place.kind, name, namespace)
            if revision is not None and revision != last.metadata.resource_version:
                raise Conflict(f"{place.kind} {name}: revision {revision} is stale "
                               f"(stored {last.metadata.resource_version})")
            precondition = {"preconditions": {"resourceVersion": last.metadata.resource_version}}
            try:
                self._request("DELETE", place.item(name, namespace), body=precondition)
                return last
            except Conflict:
                if revision is not None:
                    raise
        raise Conflict(f"{place.kind} {name}: kept changing while being deleted")

    # -- WorkloadEndpoints are Pod annotations --
    def _annotate_pod(self, wep: Resource, *, create: bool) -> Resource:
        pod_name, ns = wep.spec.pod, wep.metadata.namespace
        pod = self._request("GET", f"/api/v1/namespaces/{ns}/pods/{pod_name}")
        existing = from_k8s("WorkloadEndpoint", pod)
        if create and existing is not None:
            raise AlreadyExists(f"WorkloadEndpoint {wep.name} already exists")
        if not create and existing is None:
            raise NotFound(f"WorkloadEndpoint {wep.name} not found")
        revision = pod["metadata"]["resourceVersion"] if create else wep.metadata.resource_version
        ips = list(wep.spec.ip_networks)
        patch = {"metadata": {"resourceVersion": revision, "annotations": {
            POD_IP: ips[0] if ips else None, POD_IPS: ",".join(ips) or None,
            CONTAINER_ID: wep.spec.container_id or None}}}
        obj = self._request("PATCH", f"/api/v1/namespaces/{ns}/pods/{pod_name}", body=patch,
                            content_type="application/merge-patch+json")
        return _loaded("WorkloadEndpoint", obj)

    def _unannotate_pod(self, name: str, namespace: str | None, revision: str | None) -> Resource:
        last = self.get("WorkloadEndpoint", name, namespace)
        if revision is not None and revision != last.metadata.resource_version:
            raise Conflict(f"WorkloadEndpoint {name}: revision {revision} is stale")
        patch = {"metadata": {"resourceVersion": last.metadata.resource_version, "annotations": {
            POD_IP: None, POD_IPS: None, CONTAINER_ID: None}}}
        self._request("PATCH", f"/api/v1/namespaces/{namespace}/pods/{last.spec.pod}", body=patch,
                      content_type="application/merge-patch+json")
        return last

    # -- watch --
    def watch(self, kinds: Iterable[str], revision: int,
              stop: threading.Event) -> Iterator[WatchEvent]:
        places = {place_of(k).kind: place_of(k) for k in kinds}
        if not places:
            stop.wait()
            return
        events: queue.Queue = queue.Queue()
        streams = [_KindWatch(self, place, revision, events, stop) for place in places.values()]
        try:
            yield from _merged(events, stop)
        finally:
            for stream in streams:
                stream.close()

    # -- HTTP --
    def _request(self, method: str, path: str, query: dict[str, str] | None = None, *,
                 body: Any = None, content_type: str = "application/json",
                 stream: bool = False):
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type
        request = self._api.param_serialize(method=method, resource_path=path,
                                            query_params=list((query or {}).items()),
                                            header_params=headers, body=body,
                                            auth_settings=["BearerToken"])
        timeout = (self._timeout, None) if stream else self._timeout
        try:
            resp = self._api.call_api(*request, _request_timeout=timeout)
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise Unavailable(f"{method} {path}: {type(exc).__name__}: {exc}") from None
        if not 200 <= resp.status <= 299:
            resp.read()
            raise status_error(method, path, resp.status, resp.data)
        if stream:
            return resp.response
        resp.read()
        return json.loads(resp.data)

    def close(self) -> None:
        self._api.close()


class _KindWatch(WatchThread):
    """One kind's watch requests in a thread, reopened from the last revision seen; events, and
    the exception that ends it, go to the shared queue."""

    def __init__(self, ds: KubernetesDatastore, place: _Place, revision: int,
                 out: queue.Queue, stop: threading.Event) -> None:
        self._ds, self._place, self._revision, self._out, self._stop = ds, place, revision, out, stop
        super().__init__(f"watch-{place.kind}")

    def _run(self) -> None:
        try:
            while not (self._closed.is_set() or self._stop.is_set()):
                self._one_request()
        except Exception as exc:  # noqa: BLE001 - handed to the consumer, which raises it
            if not self._closed.is_set():
                self._out.put(exc if isinstance(exc, DatastoreError)
                              else Unavailable(f"watch {self._place.kind}: {exc!r}"))

    def _one_request(self) -> None:
        try:
            for event in self._events(self._ds, self._place.collection(None),
                                      self._ds._selector(self._place), self._revision):
                self._handle(event)
        except (urllib3.exceptions.HTTPError, OSError, ValueError) as exc:
            if not self._closed.is_set():
                raise Unavailable(f"watch {self._place.kind}: {type(exc).__name__}: {exc}") from None

    def _handle(self, event: dict) -> None:
        kind, obj = event.get("type"), event.get("object") or {}
        revision = int(obj.get("metadata", {}).get("resourceVersion") or self._revision)
        self._revision = max(self._revision, revision)
        if kind == "BOOKMARK":
            return
        meta = obj.get("metadata", {})
        resource = None if kind == "DELETED" else from_k8s(self._place.kind, obj)
        name = _name_of(self._place.kind, obj)
        if kind != "DELETED" and resource is None:
            kind = "DELETED"  # e.g. a pod without our annotations: not (or no longer) an endpoint
        self._out.put(WatchEvent(kind, self._place.kind, meta.get("namespace"), name, resource,
                                 revision))


def _merged(events: queue.Queue, stop: threading.Event) -> Iterator[WatchEvent]:
    """The per-kind streams as one. Each kind's events stay in order; across kinds the order is
    arrival, as in Kubernetes itself (which orders only within one resource type) -- the syncer's
    consumers are level-triggered and need no more. Reordering by revision would cost a wait on
    every event."""
    while not stop.is_set():
        try:
            item = events.get(timeout=_POLL)
        except queue.Empty:
            continue
        if isinstance(item, BaseException):
            raise item
        yield item


# -- conversions (pure) --

def to_k8s(resource: Resource) -> dict:
    """A Calico v3 resource as its crd.projectcalico.org/v1 custom resource."""
    wire = resource.to_dict()
    wire["apiVersion"] = GROUP_VERSION
    return wire


def from_k8s(kind: str, obj: dict) -> Resource | None:
    """The Calico v3 resource a Kubernetes object stands for (None: a pod that is no endpoint)."""
    if kind == "Node":
        return node_from_k8s(obj)
    if kind == "WorkloadEndpoint":
        return wep_from_k8s(obj)
    return load({"apiVersion": API_VERSION, "kind": kind, "metadata": _meta(obj),
                 "spec": obj.get("spec") or {}})


def _meta(obj: dict, drop_annotations: tuple[str, ...] = ()) -> dict:
    meta = obj.get("metadata") or {}
    out = {k: meta[k] for k in ("name", "namespace", "resourceVersion", "uid", "creationTimestamp",
                                "labels") if meta.get(k)}
    annotations = {k: v for k, v in (meta.get("annotations") or {}).items()
                   if not k.startswith(drop_annotations)}
    if annotations:
        out["annotations"] = annotations
    return out


def node_from_k8s(obj: dict) -> Resource:
    annotations = (obj.get("metadata") or {}).get("annotations") or {}
    bgp = {field: annotations[ANNOTATION + ann] for field, ann in _NODE_BGP.items()
           if ANNOTATION + ann in annotations}
    spec: dict[str, Any] = {field: annotations[ANNOTATION + ann] for field, ann in _NODE_SPEC.items()
                            if ANNOTATION + ann in annotations}
    if bgp:
        spec["bgp"] = bgp
    addresses = ((obj.get("status") or {}).get("addresses")) or []
    if addresses:
        spec["addresses"] = [{"address": a["address"], "type": a.get("type", "InternalIP")}
                             for a in addresses if a.get("address")]
    name = obj["metadata"]["name"]
    spec["orchRefs"] = [{"nodeName": name, "orchestrator": "k8s"}]
    return load({"apiVersion": API_VERSION, "kind": "Node",
                 "metadata": _meta(obj, drop_annotations=(ANNOTATION,)), "spec": spec})


def node_to_k8s(node: Resource, current: dict) -> dict:
    """``current`` (the Kubernetes Node as stored) with our annotations and labels set from
    ``node``, and ``node``'s resourceVersion: a compare-and-swap replace of the whole object."""
    wire = node.to_dict()
    spec = wire.get("spec") or {}
    ours = {ANNOTATION + ann: str(spec["bgp"][field]) for field, ann in _NODE_BGP.items()
            if field in (spec.get("bgp") or {})}
    ours |= {ANNOTATION + ann: str(spec[field]) for field, ann in _NODE_SPEC.items() if field in spec}
    body = json.loads(json.dumps(current))
    meta = body.setdefault("metadata", {})
    kept = {k: v for k, v in (meta.get("annotations") or {}).items() if not k.startswith(ANNOTATION)}
    meta["annotations"] = kept | (wire["metadata"].get("annotations") or {}) | ours
    meta["labels"] = wire["metadata"].get("labels") or {}
    meta["resourceVersion"] = node.metadata.resource_version
    return body


def new_node_k8s(node: Resource) -> dict:
    return node_to_k8s(node.with_revision(None), {"apiVersion": "v1", "kind": "Node",
                                                   "metadata": {"name": node.name}})


def wep_from_k8s(pod: dict) -> Resource | None:
    meta, spec = pod.get("metadata") or {}, pod.get("spec") or {}
    annotations = meta.get("annotations") or {}
    ips = annotations.get(POD_IPS) or annotations.get(POD_IP)
    node = spec.get("nodeName")
    if not ips or not node:
        return None
    namespace, pod_name = meta["namespace"], meta["name"]
    nets = [ip if "/" in ip else f"{ip}/{128 if ':' in ip else 32}" for ip in ips.split(",") if ip]
    labels = (meta.get("labels") or {}) | {"projectcalico.org/namespace": namespace,
                                            "projectcalico.org/orchestrator": "k8s"}
    return load({"apiVersion": API_VERSION, "kind": "WorkloadEndpoint", "metadata": {
        "name": _wep_name(node, pod_name, "eth0"), "namespace": namespace, "labels": labels,
        "resourceVersion": meta.get("resourceVersion")},
        "spec": {"orchestrator": "k8s", "node": node, "pod": pod_name, "endpoint": "eth0",
                 "containerID": annotations.get(CONTAINER_ID, ""), "ipNetworks": nets,
                 "interfaceName": _host_ifname(namespace, pod_name),
                 "profiles": [f"kns.{namespace}"]}})


def _wep_name(node: str, pod: str, endpoint: str) -> str:
    # Calico's rule (also cni/names.py, which datastore may not import).
    return "-".join(part.replace("-", "--") for part in (node, "k8s", pod, endpoint))


def _host_ifname(namespace: str, pod: str) -> str:
    return "cali" + hashlib.sha1(f"{namespace}.{pod}".encode()).hexdigest()[:11]


def _pod_of(wep_name: str) -> str | None:
    """The pod of a ``<node>-k8s-<pod>-<endpoint>`` name (``-`` inside a part is doubled)."""
    parts = [p.replace("\0", "-") for p in wep_name.replace("--", "\0").split("-")]
    return parts[2] if len(parts) == 4 and parts[1] == "k8s" else None


def _name_of(kind: str, obj: dict) -> str:
    meta = obj.get("metadata") or {}
    if kind == "WorkloadEndpoint":
        return _wep_name((obj.get("spec") or {}).get("nodeName") or "", meta.get("name", ""), "eth0")
    return meta.get("name", "")


def _loaded(kind: str, obj: dict) -> Resource:
    resource = from_k8s(kind, obj)
    if resource is None:
        raise AssertionError(f"Bug: the API server returned a {kind} we cannot read back")
    return resource


def _usable(revision: str | None) -> bool:
    return bool(revision) and revision.isascii() and revision.isdecimal() and int(revision) > 0 \
        and revision == str(int(revision))
