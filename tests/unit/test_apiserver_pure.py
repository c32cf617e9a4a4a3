"""Pure helpers of the API server stand-in: selectors, patches, CRD status, tables, discovery."""
from __future__ import annotations

from datetime import datetime, timezone

import pytest

from lab.apiserver import crds, discovery, openapi
from lab.apiserver.errors import ApiError
from lab.apiserver.patch import PatchError, json_patch, merge_patch
from lab.apiserver.registry import Registry
from lab.apiserver.selectors import SelectorError, parse_field_selector, parse_label_selector
from lab.apiserver.tables import age, to_table

LABELS = {"app": "web", "tier": "front", "env": ""}


@pytest.mark.parametrize(("selector", "expected"), [
    ("", True),
    ("app=web", True), ("app==web", True), ("app=db", False), ("app!=db", True),
    ("app!=web", False), ("missing!=x", True),
    ("tier in (front, back)", True), ("tier in (back)", False),
    ("tier notin (back)", True), ("tier notin (front,back)", False), ("missing notin (a)", True),
    ("app", True), ("missing", False), ("!missing", True), ("!app", False),
    ("app=web,tier=front", True), ("app=web,tier=back", False),
    ("env=", True), ("env=,app=web", True),
    (" app = web , tier in ( front ) ", True),
])
def test_label_selector(selector, expected):
    assert parse_label_selector(selector)(LABELS) is expected


def test_label_selector_matches_objects_without_labels():
    assert parse_label_selector("!app")(None) is True
    assert parse_label_selector("app")(None) is False


@pytest.mark.parametrize("selector", ["a in b", "a in (b", "=x", "a,", "a b", "a=b,,c", "a@b"])
def test_bad_label_selectors_raise(selector):
    with pytest.raises(SelectorError):
        parse_label_selector(selector)


def test_field_selector():
    pod = {"metadata": {"name": "p", "namespace": "ns"}, "spec": {"nodeName": "n1"}}
    allowed = frozenset({"metadata.name", "metadata.namespace", "spec.nodeName"})
    assert parse_field_selector("spec.nodeName=n1", allowed)(pod)
    assert parse_field_selector("spec.nodeName==n1,metadata.namespace=ns", allowed)(pod)
    assert not parse_field_selector("spec.nodeName!=n1", allowed)(pod)
    assert parse_field_selector("spec.nodeName=", allowed)({"metadata": {}})
    with pytest.raises(SelectorError, match="field label not supported"):
        parse_field_selector("spec.other=x", allowed)
    with pytest.raises(SelectorError):
        parse_field_selector("spec.nodeName", allowed)


def test_merge_patch_rfc7386_examples():
    # RFC 7386 appendix A, a few of its cases.
    assert merge_patch({"a": "b"}, {"a": "c"}) == {"a": "c"}
    assert merge_patch({"a": "b"}, {"b": "c"}) == {"a": "b", "b": "c"}
    assert merge_patch({"a": "b"}, {"a": None}) == {}
    assert merge_patch({"a": [{"b": "c"}]}, {"a": [1]}) == {"a": [1]}
    assert merge_patch({"e": None}, {"a": 1}) == {"e": None, "a": 1}
    assert merge_patch([1, 2], {"a": "b", "c": None}) == {"a": "b"}
    assert merge_patch({}, {"a": {"bb": {"ccc": None}}}) == {"a": {"bb": {}}}


def test_merge_patch_leaves_inputs_alone():
    target, patch = {"a": {"b": 1}}, {"a": {"c": 2}}
    merge_patch(target, patch)
    assert target == {"a": {"b": 1}} and patch == {"a": {"c": 2}}


def test_json_patch_operations():
    doc = {"a": [1, 2], "b": {"c": 1}}
    assert json_patch(doc, [{"op": "add", "path": "/a/1", "value": 9}])["a"] == [1, 9, 2]
    assert json_patch(doc, [{"op": "remove", "path": "/b/c"}])["b"] == {}
    assert json_patch(doc, [{"op": "replace", "path": "/b/c", "value": 5}])["b"] == {"c": 5}
    assert json_patch(doc, [{"op": "move", "from": "/b/c", "path": "/d"}]) == {"a": [1, 2], "b": {}, "d": 1}
    assert json_patch(doc, [{"op": "copy", "from": "/a", "path": "/e"}])["e"] == [1, 2]
    assert json_patch({"a~b": {"c/d": 1}}, [{"op": "test", "path": "/a~0b/c~1d", "value": 1}])
    assert doc == {"a": [1, 2], "b": {"c": 1}}


@pytest.mark.parametrize("ops", [
    [{"op": "test", "path": "/a", "value": 2}],
    [{"op": "remove", "path": "/missing"}],
    [{"op": "add", "path": "/a/7", "value": 1}],
    [{"op": "replace", "path": "/a"}],
    [{"op": "frobnicate", "path": "/a"}],
    {"op": "add"},
])
def test_json_patch_errors(ops):
    with pytest.raises(PatchError):
        json_patch({"a": [1]}, ops)


def crd(**spec_changes) -> dict:
    spec = {"group": "crd.projectcalico.org", "scope": "Cluster",
            "names": {"plural": "ippools", "kind": "IPPool"},
            "versions": [{"name": "v1", "served": True, "storage": True}]}
    spec.update(spec_changes)
    return {"metadata": {"name": "ippools.crd.projectcalico.org"}, "spec": spec}


def test_crd_establish_sets_conditions_and_names():
    obj = crd()
    crds.establish(obj)
    assert {c["type"]: c["status"] for c in obj["status"]["conditions"]} == {
        "NamesAccepted": "True", "Established": "True"}
    assert obj["status"]["acceptedNames"] == {"plural": "ippools", "kind": "IPPool",
                                              "singular": "ippool", "listKind": "IPPoolList"}
    assert obj["status"]["storedVersions"] == ["v1"]


@pytest.mark.parametrize("changes", [
    {"scope": "Global"}, {"group": "other.org"}, {"group": "nodot"}, {"versions": []},
    {"versions": [{"name": "v1", "storage": False}]},
    {"names": {"plural": "ippools"}},
])
def test_crd_validation_refuses(changes):
    with pytest.raises(ApiError) as refused:
        crds.establish(crd(**changes))
    assert refused.value.code == 422


def test_registry_serves_crd_types_and_discovery_lists_them():
    registry = Registry()
    obj = crd()
    crds.establish(obj)
    registry.set_crds([obj])
    rtype = registry.lookup("crd.projectcalico.org", "v1", "ippools")
    assert rtype is not None and not rtype.namespaced
    assert rtype.key("p1", None) == "/registry/crd.projectcalico.org/ippools/p1"
    assert registry.lookup("", "v1", "pods").key("p", "ns") == "/registry/pods/ns/p"
    assert registry.lookup("crd.projectcalico.org", "v2", "ippools") is None
    groups = [g["name"] for g in discovery.api_group_list(registry)["groups"]]
    assert groups == ["apiextensions.k8s.io", "crd.projectcalico.org"]
    resources = discovery.api_resource_list(registry, "", "v1")["resources"]
    pods = next(r for r in resources if r["name"] == "pods")
    assert pods["namespaced"] and pods["shortNames"] == ["po"] and "watch" in pods["verbs"]


def test_openapi_lists_field_validation_for_every_kind():
    registry = Registry()
    root = openapi.root(registry)
    assert set(root["paths"]) == {"api/v1", "apis/apiextensions.k8s.io/v1"}
    doc = openapi.document(registry, "api/v1")
    kinds = {op["patch"]["x-kubernetes-group-version-kind"]["kind"] for op in doc["paths"].values()}
    assert kinds == {"Namespace", "Node", "Pod", "Secret"}
    params = [p["name"] for op in doc["paths"].values() for p in op["patch"]["parameters"]]
    assert set(params) == {"fieldValidation"}


def test_age_and_table():
    now = datetime(2026, 1, 2, 0, 0, 0, tzinfo=timezone.utc)
    assert age("2026-01-01T23:59:30Z", now) == "30s"
    assert age("2026-01-01T23:50:00Z", now) == "10m"
    assert age("2026-01-01T20:00:00Z", now) == "4h"
    assert age("2025-12-20T00:00:00Z", now) == "13d"
    registry = Registry()
    node = {"metadata": {"name": "n1", "creationTimestamp": None},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]}}
    table = to_table(registry.lookup("", "v1", "nodes"), [node], {"resourceVersion": "5"}, None)
    default = [c["name"] for c in table["columnDefinitions"] if c["priority"] == 0]
    assert default == ["Name", "Status", "Roles", "Age", "Version"]
    wide = [c["name"] for c in table["columnDefinitions"] if c["priority"] == 1]
    assert wide[:2] == ["Internal-IP", "External-IP"]
    assert table["rows"][0]["cells"][:2] == ["n1", "Ready"]
    assert table["rows"][0]["object"]["kind"] == "PartialObjectMetadata"


def test_object_meta_validation():
    import doctest

    import lab.apiserver.meta as meta_module
    from lab.apiserver.meta import problems

    assert doctest.testmod(meta_module).failed == 0
    good = {"name": "n", "labels": {"projectcalico.org/ns": "default", "app": "", "a.b-c_d": "x.y"},
            "annotations": {"cni.projectcalico.org/podIP": "10.0.0.1/32", "x": "{\"a\": 1}"}}
    assert problems(good, namespace_name=False) == []
    assert problems({"name": "has.dot"}, namespace_name=True)[0].startswith("metadata.name")
    assert problems({"labels": {"k": "v" * 64}}, namespace_name=False)
    assert problems({"labels": {"k": "bad value"}}, namespace_name=False)
    assert problems({"labels": {"Bad_Prefix/k": "v"}}, namespace_name=False)
    assert problems({"labels": {"k": 1}}, namespace_name=False)
    assert problems({"annotations": {"k": "v" * (256 * 1024)}}, namespace_name=False)
