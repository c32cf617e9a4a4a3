"""The API server stand-in's answers on the wire: Status bodies and codes for bad requests, races,
namespaced resources and core pods, checked with raw HTTP and the official client.
"""
from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request

import pytest
from kubernetes import client, watch
from kubernetes.client.rest import ApiException

from tests.apiserver_fixture import (  # noqa: F401  (the lower-case names are fixtures)
    GROUP, PLURAL, VERSION, apiserver, custom, fresh_apiserver, ippool, k8s_client, unique,
)

POOLS = f"/apis/{GROUP}/{VERSION}/{PLURAL}"


def http(url: str, method: str = "GET", body: bytes | None = None,
         content_type: str = "application/json") -> tuple[int, dict]:
    request = urllib.request.Request(url, data=body, method=method,
                                     headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read())


def assert_status(answer: tuple[int, dict], code: int, reason: str) -> dict:
    status_code, body = answer
    assert (status_code, body.get("kind"), body.get("apiVersion"), body.get("status"),
            body.get("reason"), body.get("code")) == (code, "Status", "v1", "Failure", reason, code), body
    assert body["metadata"] == {} and body["message"]
    return body


def test_a_fresh_server_has_the_seeded_namespaces_and_nothing_else(fresh_apiserver):
    code, namespaces = http(f"{fresh_apiserver.url}/api/v1/namespaces")
    assert code == 200 and namespaces["kind"] == "NamespaceList"
    assert [n["metadata"]["name"] for n in namespaces["items"]] == [
        "default", "kube-node-lease", "kube-public", "kube-system"]
    assert all(n["status"] == {"phase": "Active"} for n in namespaces["items"])
    assert http(f"{fresh_apiserver.url}/api/v1/nodes")[1]["items"] == []
    assert [g["name"] for g in http(f"{fresh_apiserver.url}/apis")[1]["groups"]] == [
        "apiextensions.k8s.io"]


def test_malformed_json_is_400(apiserver, custom):
    assert_status(http(apiserver.url + POOLS, "POST", b"{not json"), 400, "BadRequest")


def test_body_disagreeing_with_url_is_400(apiserver, custom):
    name = unique("url")
    custom.create_cluster_custom_object(GROUP, VERSION, PLURAL, ippool(name))
    other = json.dumps(ippool("someone-else")).encode()
    body = assert_status(http(f"{apiserver.url}{POOLS}/{name}", "PUT", other), 400, "BadRequest")
    assert "does not match the name on the URL" in body["message"]
    wrong_kind = dict(ippool(name), kind="BGPPeer")
    assert_status(http(f"{apiserver.url}{POOLS}/{name}", "PUT", json.dumps(wrong_kind).encode()),
                  400, "BadRequest")
    wrong_version = dict(ippool(unique("v")), apiVersion=f"{GROUP}/v2")
    assert_status(http(apiserver.url + POOLS, "POST", json.dumps(wrong_version).encode()),
                  400, "BadRequest")
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "kube-system"},
           "spec": {"containers": [{"name": "c", "image": "x"}]}}
    body = assert_status(http(f"{apiserver.url}/api/v1/namespaces/default/pods", "POST",
                              json.dumps(pod).encode()), 400, "BadRequest")
    assert "namespace" in body["message"]


def test_invalid_name_is_422_and_missing_is_404(apiserver, custom):
    body = assert_status(http(apiserver.url + POOLS, "POST",
                              json.dumps(ippool("Not_A_Name")).encode()), 422, "Invalid")
    assert body["details"]["causes"][0]["field"] == "metadata.name"
    body = assert_status(http(f"{apiserver.url}{POOLS}/absent"), 404, "NotFound")
    assert body["details"] == {"name": "absent", "group": GROUP, "kind": PLURAL}
    assert_status(http(f"{apiserver.url}/apis/{GROUP}/{VERSION}/nosuchthings"), 404, "NotFound")


def test_strategic_merge_patch_on_custom_resource_is_415(apiserver, custom):
    name = unique("smp")
    custom.create_cluster_custom_object(GROUP, VERSION, PLURAL, ippool(name))
    assert_status(http(f"{apiserver.url}{POOLS}/{name}", "PATCH", b'{"spec":{"x":1}}',
                       "application/strategic-merge-patch+json"), 415, "UnsupportedMediaType")
    code, patched = http(f"{apiserver.url}{POOLS}/{name}", "PATCH",
                         b'[{"op":"replace","path":"/spec/cidr","value":"10.1.0.0/16"}]',
                         "application/json-patch+json")
    assert code == 200 and patched["spec"]["cidr"] == "10.1.0.0/16"


def test_create_carrying_a_resource_version_is_refused(apiserver, custom):
    body = ippool(unique("rv"))
    body["metadata"]["resourceVersion"] = "12"
    status = assert_status(http(apiserver.url + POOLS, "POST", json.dumps(body).encode()),
                           500, "InternalError")
    assert "resourceVersion should not be set on objects to be created" in status["message"]


def test_malformed_watch_resource_version_is_400_before_streaming(apiserver, custom):
    assert_status(http(f"{apiserver.url}{POOLS}?watch=true&resourceVersion=abc"), 400, "BadRequest")


def test_method_not_allowed_is_405(apiserver, custom):
    assert_status(http(apiserver.url + POOLS, "PUT", b"{}"), 405, "MethodNotAllowed")


def test_concurrent_replaces_with_one_resource_version_let_exactly_one_win(custom):
    name = unique("race")
    current = custom.create_cluster_custom_object(GROUP, VERSION, PLURAL, ippool(name))
    results: list[int] = []

    def replace(i: int) -> None:
        body = json.loads(json.dumps(current))
        body["spec"]["writer"] = i
        try:
            custom.replace_cluster_custom_object(GROUP, VERSION, PLURAL, name, body)
            results.append(200)
        except ApiException as exc:
            results.append(exc.status)

    threads = [threading.Thread(target=replace, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(results) == [200] + [409] * 7


def test_namespaced_custom_resources(k8s_client):
    ext = client.ApiextensionsV1Api(k8s_client)
    crd = {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
           "metadata": {"name": "networkpolicies.crd.projectcalico.org"},
           "spec": {"group": GROUP, "scope": "Namespaced",
                    "names": {"plural": "networkpolicies", "kind": "NetworkPolicy"},
                    "versions": [{"name": "v1", "served": True, "storage": True,
                                  "schema": {"openAPIV3Schema": {"type": "object"}}}]}}
    ext.create_custom_resource_definition(crd)
    custom = client.CustomObjectsApi(k8s_client)
    for ns in ("default", "kube-system"):
        custom.create_namespaced_custom_object(GROUP, VERSION, ns, "networkpolicies", {
            "apiVersion": f"{GROUP}/{VERSION}", "kind": "NetworkPolicy",
            "metadata": {"name": "allow"}, "spec": {}})
    everywhere = custom.list_cluster_custom_object(GROUP, VERSION, "networkpolicies")
    assert sorted(o["metadata"]["namespace"] for o in everywhere["items"]) == ["default", "kube-system"]
    one = custom.list_namespaced_custom_object(GROUP, VERSION, "kube-system", "networkpolicies")
    assert [o["metadata"]["namespace"] for o in one["items"]] == ["kube-system"]
    by_field = custom.list_cluster_custom_object(GROUP, VERSION, "networkpolicies",
                                                 field_selector="metadata.namespace=default")
    assert [o["metadata"]["namespace"] for o in by_field["items"]] == ["default"]
    ext.delete_custom_resource_definition(crd["metadata"]["name"])
    with pytest.raises(ApiException) as gone:  # the CRD took its objects and its endpoint along
        custom.list_cluster_custom_object(GROUP, VERSION, "networkpolicies")
    assert gone.value.status == 404


def test_pods_watch_by_node_name(k8s_client):
    core = client.CoreV1Api(k8s_client)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name="pods-ns")))
    rv = core.list_pod_for_all_namespaces(field_selector="spec.nodeName=node-a").metadata.resource_version

    def pod(name: str, node: str) -> client.V1Pod:
        return client.V1Pod(metadata=client.V1ObjectMeta(name=name), spec=client.V1PodSpec(
            node_name=node, containers=[client.V1Container(name="c", image="busybox")]))

    core.create_namespaced_pod("pods-ns", pod("elsewhere", "node-b"))
    core.create_namespaced_pod("pods-ns", pod("mine", "node-a"))
    core.delete_namespaced_pod("mine", "pods-ns")
    w = watch.Watch()
    seen = []
    for event in w.stream(core.list_pod_for_all_namespaces, field_selector="spec.nodeName=node-a",
                          resource_version=rv, timeout_seconds=10):
        seen.append((event["type"], event["object"].metadata.name, event["object"].spec.node_name))
        if len(seen) == 2:
            w.stop()
    assert seen == [("ADDED", "mine", "node-a"), ("DELETED", "mine", "node-a")]
    listed = core.list_namespaced_pod("pods-ns", field_selector="spec.nodeName=node-b")
    assert [p.metadata.name for p in listed.items] == ["elsewhere"]


def test_crd_schema_prunes_validates_and_strict_refuses(k8s_client):
    ext = client.ApiextensionsV1Api(k8s_client)
    spec_schema = {"type": "object", "required": ["peerIP"], "properties": {
        "peerIP": {"type": "string"}, "asNumber": {"type": "integer", "minimum": 1}}}
    ext.create_custom_resource_definition({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": f"bgppeers.{GROUP}"},
        "spec": {"group": GROUP, "scope": "Cluster",
                 "names": {"plural": "bgppeers", "kind": "BGPPeer"},
                 "versions": [{"name": "v1", "served": True, "storage": True, "schema": {
                     "openAPIV3Schema": {"type": "object", "properties": {
                         "spec": spec_schema}}}}]}})
    custom = client.CustomObjectsApi(k8s_client)

    def peer(name: str, **spec) -> dict:
        return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "BGPPeer", "metadata": {"name": name},
                "spec": spec}

    created = custom.create_cluster_custom_object(GROUP, VERSION, "bgppeers",
                                                  peer("p1", peerIP="10.0.0.1", bogus=True))
    assert created["spec"] == {"peerIP": "10.0.0.1"}  # pruned, as kube-apiserver does
    with pytest.raises(ApiException) as invalid:
        custom.create_cluster_custom_object(GROUP, VERSION, "bgppeers",
                                            peer("p2", peerIP="10.0.0.2", asNumber=0))
    assert invalid.value.status == 422
    assert json.loads(invalid.value.body)["details"]["causes"][0]["field"] == "spec.asNumber"
    with pytest.raises(ApiException) as strict:
        custom.create_cluster_custom_object(GROUP, VERSION, "bgppeers",
                                            peer("p3", peerIP="10.0.0.3", bogus=1),
                                            field_validation="Strict")
    assert strict.value.status == 400
    assert 'strict decoding error: unknown field "spec.bogus"' in json.loads(strict.value.body)[
        "message"]
    with pytest.raises(ApiException) as missing:
        custom.patch_cluster_custom_object(GROUP, VERSION, "bgppeers", "p1",
                                           {"spec": {"peerIP": None}})
    assert missing.value.status == 422


def test_pod_status_is_written_only_through_the_status_subresource(k8s_client):
    """As with kube-apiserver: a kubelet stand-in must use /status, or podIP silently vanishes."""
    core = client.CoreV1Api(k8s_client)
    name = unique("status")
    pod = client.V1Pod(metadata=client.V1ObjectMeta(name=name), spec=client.V1PodSpec(
        node_name="node-a", containers=[client.V1Container(name="c", image="busybox")]),
        status=client.V1PodStatus(phase="Running", pod_ip="10.244.0.9"))
    created = core.create_namespaced_pod("default", pod)
    assert (created.status.phase, created.status.pod_ip) == ("Pending", None)
    created.status.pod_ip = "10.244.0.9"
    replaced = core.replace_namespaced_pod(name, "default", created)
    assert replaced.status.pod_ip is None
    patched = core.patch_namespaced_pod_status(name, "default", {"status": {
        "podIP": "10.244.0.9", "podIPs": [{"ip": "10.244.0.9"}], "phase": "Running"}})
    assert (patched.status.phase, patched.status.pod_ip) == ("Running", "10.244.0.9")
    labelled = core.patch_namespaced_pod(name, "default", {"metadata": {"labels": {"a": "b"}},
                                                           "status": {"podIP": None}})
    assert labelled.status.pod_ip == "10.244.0.9" and labelled.metadata.labels == {"a": "b"}
    core.delete_namespaced_pod(name, "default")


def test_custom_resource_status_subresource_only_when_declared(apiserver, k8s_client, custom):
    ext = client.ApiextensionsV1Api(k8s_client)
    ext.create_custom_resource_definition({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": f"widgets.{GROUP}"},
        "spec": {"group": GROUP, "scope": "Cluster", "names": {"plural": "widgets", "kind": "Widget"},
                 "versions": [{"name": "v1", "served": True, "storage": True,
                               "subresources": {"status": {}},
                               "schema": {"openAPIV3Schema": {
                                   "type": "object", "x-kubernetes-preserve-unknown-fields": True}}}]}})
    custom_api = client.CustomObjectsApi(k8s_client)
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Widget", "metadata": {"name": "w"},
            "spec": {"size": 1}, "status": {"ready": True}}
    created = custom_api.create_cluster_custom_object(GROUP, VERSION, "widgets", body)
    assert "status" not in created
    status = custom_api.patch_cluster_custom_object_status(GROUP, VERSION, "widgets", "w",
                                                           {"status": {"ready": True}, "spec": {"size": 9}})
    assert status["status"] == {"ready": True} and status["spec"] == {"size": 1}
    assert status["metadata"]["generation"] == 1
    with pytest.raises(ApiException) as no_status:  # IPPools declare no status subresource
        custom.patch_cluster_custom_object_status(GROUP, VERSION, PLURAL, "absent", {"status": {}})
    assert no_status.value.status == 404
    ext.delete_custom_resource_definition(f"widgets.{GROUP}")


def _etcd_watchers(etcd_url: str) -> int:
    """etcd's own count of open watchers (its Prometheus metrics)."""
    with urllib.request.urlopen(f"{etcd_url}/metrics", timeout=5) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith("etcd_debugging_mvcc_watcher_total "):
                return int(float(line.split()[1]))
    raise AssertionError("etcd does not report etcd_debugging_mvcc_watcher_total")


def test_a_watch_whose_client_went_away_releases_its_etcd_watch(apiserver, custom):
    from tests.helpers import wait_for

    baseline = _etcd_watchers(apiserver.etcd)
    rv = custom.list_cluster_custom_object(GROUP, VERSION, PLURAL)["metadata"]["resourceVersion"]
    url = f"{apiserver.url}{POOLS}?watch=1&resourceVersion={rv}&timeoutSeconds=600"
    responses = [urllib.request.urlopen(url, timeout=10) for _ in range(3)]
    try:
        wait_for(lambda: _etcd_watchers(apiserver.etcd) >= baseline + 3, timeout=10,
                 what="three etcd watches behind three client watches")
    finally:
        for resp in responses:
            resp.close()
    wait_for(lambda: _etcd_watchers(apiserver.etcd) <= baseline, timeout=10,
             what="the abandoned watches to release their etcd watches")


def test_generate_name_and_metadata_validation(custom):
    created = custom.create_cluster_custom_object(GROUP, VERSION, PLURAL, {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "IPPool",
        "metadata": {"generateName": "gen-"}, "spec": {"cidr": "10.3.0.0/16"}})
    assert created["metadata"]["name"].startswith("gen-") and len(created["metadata"]["name"]) > 4
    with pytest.raises(ApiException) as bad_label:
        custom.create_cluster_custom_object(GROUP, VERSION, PLURAL,
                                            ippool(unique("lbl"), labels={"k": "not valid!"}))
    assert bad_label.value.status == 422
    body = json.loads(bad_label.value.body)
    assert body["reason"] == "Invalid" and body["details"]["causes"][0]["field"] == "metadata.labels"
    with pytest.raises(ApiException) as bad_patch:
        custom.patch_cluster_custom_object(GROUP, VERSION, PLURAL, created["metadata"]["name"],
                                           {"metadata": {"annotations": {"a b": "c"}}})
    assert bad_patch.value.status == 422


def test_finalizers_hold_a_deleted_object_until_removed(custom):
    name = unique("fin")
    body = ippool(name)
    body["metadata"]["finalizers"] = ["example.com/hold"]
    rv = custom.create_cluster_custom_object(GROUP, VERSION, PLURAL, body)["metadata"]["resourceVersion"]
    marked = custom.delete_cluster_custom_object(GROUP, VERSION, PLURAL, name)
    assert marked["metadata"]["deletionTimestamp"]
    still = custom.get_cluster_custom_object(GROUP, VERSION, PLURAL, name)
    assert still["metadata"]["deletionTimestamp"] == marked["metadata"]["deletionTimestamp"]
    with pytest.raises(ApiException) as no_new:
        custom.patch_cluster_custom_object(GROUP, VERSION, PLURAL, name, {"metadata": {
            "finalizers": ["example.com/hold", "example.com/more"]}})
    assert no_new.value.status == 422
    custom.patch_cluster_custom_object(GROUP, VERSION, PLURAL, name, {"metadata": {"finalizers": None}})
    with pytest.raises(ApiException) as gone:
        custom.get_cluster_custom_object(GROUP, VERSION, PLURAL, name)
    assert gone.value.status == 404
    w = watch.Watch()
    seen = []
    for event in w.stream(custom.list_cluster_custom_object, GROUP, VERSION, PLURAL,
                          resource_version=rv, field_selector=f"metadata.name={name}",
                          timeout_seconds=10):
        seen.append((event["type"], bool(event["object"]["metadata"].get("deletionTimestamp"))))
        if event["type"] == "DELETED":
            w.stop()
    assert seen == [("MODIFIED", True), ("DELETED", True)]
