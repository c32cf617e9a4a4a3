"""Strategic merge patch for core types in the API server stand-in (pure), with the patches
kubectl 1.32 sends for client-side apply."""
from __future__ import annotations

import doctest

import pytest

import lab.apiserver.strategic as strategic_module
from lab.apiserver.patch import PatchError
from lab.apiserver.strategic import apply_patch, strategic_merge

POD = {"metadata": {"name": "p", "finalizers": ["a"], "labels": {"x": "1"}},
       "spec": {"containers": [
           {"name": "c1", "image": "busybox", "command": ["sleep", "1d"],
            "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
            "ports": [{"containerPort": 80, "protocol": "TCP"}]},
           {"name": "c2", "image": "nginx"}],
           "tolerations": [{"key": "t1"}]}}


def test_doctests():
    assert doctest.testmod(strategic_module).failed == 0


def test_a_changed_container_keeps_its_other_fields_and_siblings():
    patch = {"spec": {"$setElementOrder/containers": [{"name": "c1"}, {"name": "c2"}],
                      "containers": [{"image": "alpine", "name": "c1"}]}}
    result = strategic_merge(POD, patch)
    c1, c2 = result["spec"]["containers"]
    assert c1 == dict(POD["spec"]["containers"][0], image="alpine")
    assert c2 == {"name": "c2", "image": "nginx"}
    assert "$setElementOrder/containers" not in result["spec"]
    assert POD["spec"]["containers"][0]["image"] == "busybox"  # input untouched


def test_nested_merge_keys_and_delete_directive():
    patch = {"spec": {"containers": [{"name": "c1", "env": [
        {"name": "B", "$patch": "delete"}, {"name": "C", "value": "3"}]}]}}
    env = strategic_merge(POD, patch)["spec"]["containers"][0]["env"]
    assert env == [{"name": "A", "value": "1"}, {"name": "C", "value": "3"}]


def test_lists_without_merge_key_are_replaced_and_primitives_merged():
    patch = {"metadata": {"finalizers": ["b"]}, "spec": {"tolerations": [{"key": "t2"}]}}
    result = strategic_merge(POD, patch)
    assert result["metadata"]["finalizers"] == ["a", "b"]
    assert result["spec"]["tolerations"] == [{"key": "t2"}]
    removed = strategic_merge(POD, {"metadata": {"$deleteFromPrimitiveList/finalizers": ["a"]}})
    assert removed["metadata"]["finalizers"] == []


def test_null_deletes_and_replace_directive():
    assert "labels" not in strategic_merge(POD, {"metadata": {"labels": None}})["metadata"]
    replaced = strategic_merge(POD, {"metadata": {"$patch": "replace", "name": "p"}})
    assert replaced["metadata"] == {"name": "p"}
    retained = strategic_merge(POD, {"spec": {"$retainKeys": ["containers"]}})
    assert set(retained["spec"]) == {"containers"}


def test_set_element_order_reorders():
    patch = {"spec": {"$setElementOrder/containers": [{"name": "c2"}, {"name": "c1"}]}}
    assert [c["name"] for c in strategic_merge(POD, patch)["spec"]["containers"]] == ["c2", "c1"]


def test_node_addresses_merge_by_type():
    node = {"status": {"addresses": [{"type": "InternalIP", "address": "10.0.0.1"},
                                     {"type": "Hostname", "address": "n1"}]}}
    patch = {"status": {"addresses": [{"type": "InternalIP", "address": "10.0.0.2"}]}}
    assert strategic_merge(node, patch)["status"]["addresses"] == [
        {"type": "InternalIP", "address": "10.0.0.2"}, {"type": "Hostname", "address": "n1"}]


def test_element_without_its_merge_key_is_refused():
    with pytest.raises(PatchError, match="merge key"):
        strategic_merge(POD, {"spec": {"containers": [{"image": "x"}]}})
    with pytest.raises(PatchError):
        apply_patch(POD, [{"op": "add"}])
