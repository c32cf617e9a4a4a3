"""The Kubernetes backend's pure parts: Calico v3 <-> Kubernetes objects (KDD layout), errors."""
from __future__ import annotations

import json

import pytest

from crds import load
from datastore.apiwatch import status_error
from datastore.base import (
    AlreadyExists, Compacted, Conflict, Forbidden, NotFound, Rejected, Unavailable,
)
from datastore.kubernetes import (
    POD_IP, POD_IPS, _usable, from_k8s, new_node_k8s, node_from_k8s, node_to_k8s, place_of,
    to_k8s, wep_from_k8s,
)

V3 = "projectcalico.org/v3"


def test_custom_resources_carry_the_v3_spec_unchanged():
    pool = load({"apiVersion": V3, "kind": "IPPool",
                 "metadata": {"name": "p", "labels": {"a": "b"}, "resourceVersion": "7"},
                 "spec": {"cidr": "10.244.0.0/16", "natOutgoing": True}})
    obj = to_k8s(pool)
    assert obj["apiVersion"] == "crd.projectcalico.org/v1" and obj["kind"] == "IPPool"
    assert obj["spec"] == pool.to_dict()["spec"]
    assert from_k8s("IPPool", obj) == pool


def test_places_follow_calicos_kdd_layout():
    assert place_of("ippools").collection(None) == "/apis/crd.projectcalico.org/v1/ippools"
    assert place_of("Node").item("n1", None) == "/api/v1/nodes/n1"
    assert place_of("WorkloadEndpoint").collection("ns") == "/api/v1/namespaces/ns/pods"
    with pytest.raises(ValueError):
        place_of("WorkloadEndpoint").item("w", None)


def k8s_node(**annotations: str) -> dict:
    return {"apiVersion": "v1", "kind": "Node", "metadata": {
        "name": "n1", "resourceVersion": "12", "labels": {"kubernetes.io/hostname": "n1"},
        "annotations": {"kubeadm.alpha/x": "y", **annotations}},
        "spec": {"podCIDR": "10.0.0.0/24"},
        "status": {"addresses": [{"type": "InternalIP", "address": "192.168.40.180"}]}}


def test_node_is_the_kubernetes_node_plus_our_annotations():
    node = node_from_k8s(k8s_node(**{"projectcalico.org/IPv4Address": "192.168.40.180/24",
                                     "projectcalico.org/ASNumber": "64513"}))
    assert node.spec.bgp.ipv4_address == "192.168.40.180/24" and node.spec.bgp.as_number == 64513
    assert node.metadata.annotations == {"kubeadm.alpha/x": "y"}  # ours are fields, not annotations
    assert node.metadata.resource_version == "12"
    assert [a.address for a in node.spec.addresses] == ["192.168.40.180"]


def test_updating_a_node_touches_only_our_annotations_and_labels():
    current = k8s_node(**{"projectcalico.org/ASNumber": "64513"})
    node = node_from_k8s(current)
    wire = node.to_dict()
    wire["spec"]["bgp"] = {"ipv4Address": "10.99.0.1/24"}
    body = node_to_k8s(load(wire), current)
    assert body["spec"] == current["spec"] and body["status"] == current["status"]
    assert body["metadata"]["annotations"] == {"kubeadm.alpha/x": "y",
                                               "projectcalico.org/IPv4Address": "10.99.0.1/24"}
    assert body["metadata"]["resourceVersion"] == "12"
    assert current["metadata"]["annotations"]["projectcalico.org/ASNumber"] == "64513"  # not mutated


def test_a_new_node_has_no_revision():
    node = load({"apiVersion": V3, "kind": "Node", "metadata": {"name": "n2"},
                 "spec": {"bgp": {"ipv4Address": "10.99.0.2/24"}}})
    body = new_node_k8s(node)
    assert body["metadata"]["name"] == "n2" and body["metadata"]["resourceVersion"] is None
    assert body["metadata"]["annotations"] == {"projectcalico.org/IPv4Address": "10.99.0.2/24"}


def pod(**annotations: str) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {
        "name": "pod-1", "namespace": "default", "resourceVersion": "30", "labels": {"app": "web"},
        "annotations": annotations}, "spec": {"nodeName": "node1"}}


def test_workload_endpoint_is_derived_from_the_pods_annotations():
    wep = wep_from_k8s(pod(**{POD_IP: "10.244.0.5/32", POD_IPS: "10.244.0.5/32",
                              "cni.projectcalico.org/containerID": "abc"}))
    assert wep.name == "node1-k8s-pod--1-eth0" and wep.metadata.namespace == "default"
    assert wep.spec.ip_networks == ["10.244.0.5/32"] and wep.spec.container_id == "abc"
    assert wep.spec.interface_name == "cali83dbd022cd5"  # sha1("default.pod-1"), as the CNI path
    assert wep.metadata.labels["app"] == "web" and wep.metadata.resource_version == "30"
    assert wep_from_k8s(pod()) is None, "a pod without our annotations is no endpoint yet"


@pytest.mark.parametrize("status,reason,error", [
    (404, "NotFound", NotFound), (409, "AlreadyExists", AlreadyExists), (409, "Conflict", Conflict),
    (410, "Expired", Compacted), (422, "Invalid", Rejected), (500, "InternalError", Unavailable),
    (503, "", Unavailable), (403, "Forbidden", Forbidden), (401, "Unauthorized", Forbidden),
])
def test_status_codes_become_our_errors(status, reason, error):
    body = json.dumps({"kind": "Status", "reason": reason, "message": "the server says"}).encode()
    err = status_error("GET", "/x", status, body)
    assert isinstance(err, error) and "the server says" in str(err)


@pytest.mark.parametrize("revision,ok", [("12", True), ("0", False), ("-1", False), ("", False),
                                         (None, False), ("012", False), ("abc", False)])
def test_only_a_positive_canonical_revision_is_usable(revision, ok):
    assert _usable(revision) is ok


@pytest.mark.parametrize("name,pod", [
    ("node1-k8s-pod--1-eth0", "pod-1"), ("node--1-k8s-web-eth0", "web"),
    ("n1-k8s-a--b--c-eth0", "a-b-c"), ("web", None), ("n1-pods-web-eth0", None),
])
def test_the_pod_of_an_endpoint_name(name, pod):
    from datastore.kubernetes import _pod_of

    assert _pod_of(name) == pod
