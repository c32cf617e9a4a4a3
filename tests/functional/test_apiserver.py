"""The API server stand-in against the official ``kubernetes`` Python client, on a real etcd.

Real processes: Debian's etcd, ``python -m lab.apiserver``; real HTTP; the official client (which
nobody here wrote) decides whether our answers are Kubernetes answers.
"""
from __future__ import annotations

import json
import secrets
import threading
import urllib.request

import pytest
from kubernetes import client, watch
from kubernetes.client.rest import ApiException

from tests.apiserver_fixture import (  # noqa: F401  (apiserver, k8s_client, custom: fixtures)
    GROUP, PLURAL, VERSION, apiserver, custom, ippool, k8s_client, unique,
)
from tests.helpers import wait_for

def test_crd_is_established_and_served(k8s_client, custom):
    crd = client.ApiextensionsV1Api(k8s_client).read_custom_resource_definition(f"{PLURAL}.{GROUP}")
    conditions = {c.type: c.status for c in crd.status.conditions}
    assert conditions == {"Established": "True", "NamesAccepted": "True"}
    assert crd.status.accepted_names.kind == "IPPool"
    resources = client.CustomObjectsApi(k8s_client).get_api_resources(GROUP, VERSION)
    assert [r.name for r in resources.resources if "/" not in r.name] == [PLURAL]


def test_custom_resource_create_get_replace_patch_delete(custom):
    name = unique("pool")
    created = custom.create_cluster_custom_object(GROUP, VERSION, PLURAL, ippool(name))
    meta = created["metadata"]
    assert meta["generation"] == 1 and meta["uid"] and meta["creationTimestamp"]
    with pytest.raises(ApiException) as exists:
        custom.create_cluster_custom_object(GROUP, VERSION, PLURAL, ippool(name))
    assert exists.value.status == 409
    assert json.loads(exists.value.body)["reason"] == "AlreadyExists"

    got = custom.get_cluster_custom_object(GROUP, VERSION, PLURAL, name)
    assert got["metadata"]["resourceVersion"] == meta["resourceVersion"]
    got["spec"]["cidr"] = "10.245.0.0/16"
    replaced = custom.replace_cluster_custom_object(GROUP, VERSION, PLURAL, name, got)
    assert replaced["metadata"]["generation"] == 2
    assert int(replaced["metadata"]["resourceVersion"]) > int(meta["resourceVersion"])
    assert replaced["metadata"]["uid"] == meta["uid"]

    with pytest.raises(ApiException) as stale:  # got still carries the old resourceVersion
        custom.replace_cluster_custom_object(GROUP, VERSION, PLURAL, name, got)
    assert stale.value.status == 409
    assert json.loads(stale.value.body)["reason"] == "Conflict"

    patched = custom.patch_cluster_custom_object(GROUP, VERSION, PLURAL, name,
                                                 {"metadata": {"labels": {"x": "y"}}})
    assert patched["metadata"]["labels"] == {"x": "y"}
    assert patched["metadata"]["generation"] == 2  # metadata only: generation unchanged
    assert patched["spec"]["cidr"] == "10.245.0.0/16"

    with pytest.raises(ApiException) as stale_patch:
        custom.patch_cluster_custom_object(GROUP, VERSION, PLURAL, name, {
            "metadata": {"resourceVersion": meta["resourceVersion"]}, "spec": {"x": 1}})
    assert stale_patch.value.status == 409

    custom.delete_cluster_custom_object(GROUP, VERSION, PLURAL, name)
    with pytest.raises(ApiException) as gone:
        custom.get_cluster_custom_object(GROUP, VERSION, PLURAL, name)
    assert gone.value.status == 404
    status = json.loads(gone.value.body)
    assert status["reason"] == "NotFound" and status["details"]["name"] == name


def test_delete_precondition_on_resource_version(custom):
    name = unique("pool")
    created = custom.create_cluster_custom_object(GROUP, VERSION, PLURAL, ippool(name))
    custom.patch_cluster_custom_object(GROUP, VERSION, PLURAL, name, {"spec": {"disabled": True}})
    stale = client.V1DeleteOptions(preconditions=client.V1Preconditions(
        resource_version=created["metadata"]["resourceVersion"]))
    with pytest.raises(ApiException) as conflict:
        custom.delete_cluster_custom_object(GROUP, VERSION, PLURAL, name, body=stale)
    assert conflict.value.status == 409
    custom.delete_cluster_custom_object(GROUP, VERSION, PLURAL, name)


def test_label_selectors_and_limit_continue(custom):
    run = secrets.token_hex(3)
    for i in range(5):
        custom.create_cluster_custom_object(GROUP, VERSION, PLURAL, ippool(
            f"sel-{run}-{i}", labels={"run": run, "parity": "even" if i % 2 == 0 else "odd"}))

    def names(selector: str) -> list[str]:
        listing = custom.list_cluster_custom_object(GROUP, VERSION, PLURAL, label_selector=selector)
        return sorted(o["metadata"]["name"][-1] for o in listing["items"])

    assert names(f"run={run},parity=even") == ["0", "2", "4"]
    assert names(f"run=={run},parity!=even") == ["1", "3"]
    assert names(f"run in ({run}),parity notin (odd)") == ["0", "2", "4"]
    assert names(f"run={run},parity") == ["0", "1", "2", "3", "4"]
    assert names(f"run={run},!parity") == []

    pages, token = [], None
    while True:
        page = custom.list_cluster_custom_object(GROUP, VERSION, PLURAL, limit=2, _continue=token,
                                                 label_selector=f"run={run}")
        pages.append([o["metadata"]["name"][-1] for o in page["items"]])
        token = page["metadata"].get("continue")
        if not token:
            break
    assert pages == [["0", "1"], ["2", "3"], ["4"]]


def test_continue_token_from_before_a_compaction_is_410(apiserver, custom):
    run = secrets.token_hex(3)
    for i in range(3):
        custom.create_cluster_custom_object(GROUP, VERSION, PLURAL, ippool(
            f"cont-{run}-{i}", labels={"cont": run}))
    page = custom.list_cluster_custom_object(GROUP, VERSION, PLURAL, limit=1,
                                             label_selector=f"cont={run}")
    token = page["metadata"]["continue"]
    later = custom.patch_cluster_custom_object(GROUP, VERSION, PLURAL, f"cont-{run}-0",
                                               {"spec": {"x": 1}})
    _compact(apiserver.etcd, int(later["metadata"]["resourceVersion"]))
    with pytest.raises(ApiException) as expired:
        custom.list_cluster_custom_object(GROUP, VERSION, PLURAL, limit=1, _continue=token,
                                          label_selector=f"cont={run}")
    assert expired.value.status == 410
    assert json.loads(expired.value.body)["reason"] == "Expired"


def test_bad_label_selector_is_400(custom):
    with pytest.raises(ApiException) as bad:
        custom.list_cluster_custom_object(GROUP, VERSION, PLURAL, label_selector="a in b")
    assert bad.value.status == 400


def _watch_events(custom, rv: str, count: int, **kwargs) -> list[tuple[str, str, str]]:
    """The first ``count`` non-bookmark events from a watch at ``rv``: (type, name, rv)."""
    seen = []
    w = watch.Watch()
    for event in w.stream(custom.list_cluster_custom_object, GROUP, VERSION, PLURAL,
                          resource_version=rv, timeout_seconds=10, **kwargs):
        obj = event["object"]
        seen.append((event["type"], obj["metadata"].get("name"), obj["metadata"]["resourceVersion"]))
        if len([e for e in seen if e[0] != "BOOKMARK"]) == count:
            w.stop()
    return seen


def test_list_then_watch_sees_changes_in_order(custom):
    name = unique("w")
    listing = custom.list_cluster_custom_object(GROUP, VERSION, PLURAL)
    rv = listing["metadata"]["resourceVersion"]
    created = custom.create_cluster_custom_object(GROUP, VERSION, PLURAL, ippool(name))
    modified = custom.patch_cluster_custom_object(GROUP, VERSION, PLURAL, name, {"spec": {"x": 1}})
    deleted = custom.delete_cluster_custom_object(GROUP, VERSION, PLURAL, name)
    events = [e for e in _watch_events(custom, rv, 3, label_selector="") if e[0] != "BOOKMARK"]
    assert [(t, n) for t, n, _ in events] == [("ADDED", name), ("MODIFIED", name), ("DELETED", name)]
    assert events[0][2] == created["metadata"]["resourceVersion"]
    assert events[1][2] == modified["metadata"]["resourceVersion"]
    assert int(events[2][2]) > int(modified["metadata"]["resourceVersion"])
    assert deleted["metadata"]["name"] == name


def test_watch_with_selector_sees_object_leave_as_deleted(custom):
    run = secrets.token_hex(3)
    rv = custom.list_cluster_custom_object(GROUP, VERSION, PLURAL)["metadata"]["resourceVersion"]
    name = f"leave-{run}"
    custom.create_cluster_custom_object(GROUP, VERSION, PLURAL, ippool(name, labels={"run": run}))
    custom.patch_cluster_custom_object(GROUP, VERSION, PLURAL, name,
                                       {"metadata": {"labels": {"run": None}}})
    events = _watch_events(custom, rv, 2, label_selector=f"run={run}")
    assert [(t, n) for t, n, _ in events if t != "BOOKMARK"] == [("ADDED", name), ("DELETED", name)]


def test_watch_bookmarks_arrive(custom):
    rv = custom.list_cluster_custom_object(GROUP, VERSION, PLURAL)["metadata"]["resourceVersion"]
    w = watch.Watch()
    bookmarks = []
    for event in w.stream(custom.list_cluster_custom_object, GROUP, VERSION, PLURAL,
                          resource_version=rv, allow_watch_bookmarks=True, timeout_seconds=5):
        if event["type"] == "BOOKMARK":
            bookmarks.append(event["object"])
            w.stop()
    assert bookmarks, "no BOOKMARK within the watch's 5 s"
    assert set(bookmarks[0]) == {"kind", "apiVersion", "metadata"}
    assert int(bookmarks[0]["metadata"]["resourceVersion"]) >= int(rv)
    assert bookmarks[0]["kind"] == "IPPool"


def test_bookmarks_advance_while_the_type_is_quiet_and_changes_still_arrive(k8s_client, custom):
    """As kube-apiserver's do: a quiet watch's bookmark moves past writes to other types."""
    core = client.CoreV1Api(k8s_client)
    rv = custom.list_cluster_custom_object(GROUP, VERSION, PLURAL)["metadata"]["resourceVersion"]
    other = core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(
        name=unique("elsewhere"))))
    other_rv = int(other.metadata.resource_version)
    seen: list[tuple[str, str]] = []
    w = watch.Watch()
    name = unique("after")
    for event in w.stream(custom.list_cluster_custom_object, GROUP, VERSION, PLURAL,
                          resource_version=rv, allow_watch_bookmarks=True, timeout_seconds=10):
        event_rv = event["object"]["metadata"]["resourceVersion"]
        seen.append((event["type"], event_rv))
        if event["type"] == "BOOKMARK" and int(event_rv) >= other_rv and len(seen) < 50:
            if not any(t == "ADDED" for t, _ in seen):
                custom.create_cluster_custom_object(GROUP, VERSION, PLURAL, ippool(name))
        if event["type"] == "ADDED":
            w.stop()
    added = [int(r) for t, r in seen if t == "ADDED"]
    bookmarks = [int(r) for t, r in seen if t == "BOOKMARK"]
    assert added, f"no ADDED after the bookmarks passed {other_rv}: {seen}"
    assert added and max(bookmarks) >= other_rv and added[0] > max(bookmarks)
    assert bookmarks == sorted(bookmarks)


def test_watch_from_compacted_revision_is_410(apiserver, custom):
    name = unique("c")
    old = custom.create_cluster_custom_object(GROUP, VERSION, PLURAL, ippool(name))
    new = custom.patch_cluster_custom_object(GROUP, VERSION, PLURAL, name, {"spec": {"x": 2}})
    _compact(apiserver.etcd, int(new["metadata"]["resourceVersion"]))
    w = watch.Watch()
    with pytest.raises(ApiException) as expired:
        for _ in w.stream(custom.list_cluster_custom_object, GROUP, VERSION, PLURAL,
                          resource_version=str(int(old["metadata"]["resourceVersion"]) - 1),
                          timeout_seconds=5):
            pass
    assert expired.value.status == 410
    assert "too old resource version" in str(expired.value.reason)


def test_raw_watch_error_event_is_a_410_status(apiserver, custom):
    """The exact wire shape kube-apiserver sends: HTTP 200, then one ERROR event with a Status."""
    name = unique("raw")
    old = custom.create_cluster_custom_object(GROUP, VERSION, PLURAL, ippool(name))
    new = custom.patch_cluster_custom_object(GROUP, VERSION, PLURAL, name, {"spec": {"x": 3}})
    _compact(apiserver.etcd, int(new["metadata"]["resourceVersion"]))
    too_old = int(old["metadata"]["resourceVersion"]) - 1  # its next event is compacted away
    url = (f"{apiserver.url}/apis/{GROUP}/{VERSION}/{PLURAL}?watch=true&timeoutSeconds=5"
           f"&resourceVersion={too_old}")
    with urllib.request.urlopen(url, timeout=10) as resp:
        assert resp.status == 200
        event = json.loads(resp.readline())
    assert event["type"] == "ERROR"
    status = event["object"]
    assert (status["kind"], status["status"], status["reason"], status["code"]) == (
        "Status", "Failure", "Expired", 410)
    assert status["message"].startswith(f"too old resource version: {too_old} (")


def test_watch_without_resource_version_starts_with_current_state(custom):
    name = unique("now")
    custom.create_cluster_custom_object(GROUP, VERSION, PLURAL, ippool(name))
    w = watch.Watch()
    added = set()
    for event in w.stream(custom.list_cluster_custom_object, GROUP, VERSION, PLURAL,
                          timeout_seconds=5):
        added.add(event["object"]["metadata"]["name"])
        if name in added:
            w.stop()
    assert name in added


def test_watch_stays_open_and_sees_a_later_change(custom):
    name = unique("later")
    rv = custom.list_cluster_custom_object(GROUP, VERSION, PLURAL)["metadata"]["resourceVersion"]
    seen: list[str] = []
    w = watch.Watch()

    def consume() -> None:
        for event in w.stream(custom.list_cluster_custom_object, GROUP, VERSION, PLURAL,
                              resource_version=rv, timeout_seconds=10):
            seen.append(event["object"]["metadata"]["name"])
            w.stop()

    thread = threading.Thread(target=consume, daemon=True)
    thread.start()
    try:
        custom.create_cluster_custom_object(GROUP, VERSION, PLURAL, ippool(name))
        wait_for(lambda: seen, timeout=10, what="the watch to see the new object")
        assert seen == [name]
    finally:
        w.stop()
        thread.join(15)


def _compact(etcd_url: str, revision: int) -> None:
    from datastore.etcdv3 import EtcdDatastore

    store = EtcdDatastore(etcd_url)
    try:
        store.compact(revision)
    finally:
        store.close()
