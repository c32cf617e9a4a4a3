"""Strategic merge patch for the core types we serve (Pod, Node, Namespace, Secret).

Purely computational; no I/O. kubectl computes a strategic merge patch for built-in types: lists
with a merge key are patched element by element (a changed container carries only its changed
fields and its ``name``), with ``$patch``, ``$retainKeys``, ``$setElementOrder/<list>`` and
``$deleteFromPrimitiveList/<list>`` directives. Applied as a plain merge patch, such a patch would
replace the list with partial elements and lose fields. The merge keys below are those of the Go
types' ``patchMergeKey`` tags for the fields these four kinds have (k8s.io/api/core/v1, 1.32);
lists without a tag are replaced whole, as in the real server.

>>> pod = {"spec": {"containers": [{"name": "a", "image": "x", "args": ["1"]}, {"name": "b"}]}}
>>> strategic_merge(pod, {"spec": {"containers": [{"name": "a", "image": "y"}]}})
{'spec': {'containers': [{'name': 'a', 'image': 'y', 'args': ['1']}, {'name': 'b'}]}}
"""
from __future__ import annotations

import copy

from lab.apiserver.patch import PatchError

MERGE_KEYS = {
    "containers": "name", "initContainers": "name", "ephemeralContainers": "name",
    "volumes": "name", "imagePullSecrets": "name", "resourceClaims": "name",
    "schedulingGates": "name", "env": "name", "hostAliases": "ip", "podIPs": "ip",
    "hostIPs": "ip", "ports": "containerPort", "volumeMounts": "mountPath",
    "volumeDevices": "devicePath", "conditions": "type", "addresses": "type",
    "ownerReferences": "uid", "topologySpreadConstraints": "topologyKey",
}
PRIMITIVE_MERGE = {("metadata", "finalizers"), ("spec", "podCIDRs")}

_ORDER = "$setElementOrder/"
_DELETE_PRIMITIVES = "$deleteFromPrimitiveList/"


def strategic_merge(original, patch, parent: str = ""):
    """``original`` with ``patch`` applied; neither is modified."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if not isinstance(original, dict):
        original = {}
    directive = patch.get("$patch")
    if directive == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
    if directive == "delete":
        return None
    result = copy.deepcopy(original)
    if "$retainKeys" in patch:
        keep = set(patch["$retainKeys"]) | {k for k in patch if not k.startswith("$")}
        result = {k: v for k, v in result.items() if k in keep}
    for key, value in patch.items():
        if key.startswith(_DELETE_PRIMITIVES):
            field = key[len(_DELETE_PRIMITIVES):]
            result[field] = [v for v in result.get(field) or [] if v not in value]
        elif key.startswith("$"):
            continue
        elif value is None:
            result.pop(key, None)
        else:
            merged = _merge_field(result.get(key), value, parent, key)
            if merged is None:
                result.pop(key, None)
            else:
                result[key] = merged
    for key, order in patch.items():
        if key.startswith(_ORDER) and isinstance(result.get(key[len(_ORDER):]), list):
            field = key[len(_ORDER):]
            result[field] = _ordered(result[field], order, MERGE_KEYS.get(field))
    return result


def _merge_field(current, value, parent: str, key: str):
    if isinstance(value, dict):
        return strategic_merge(current, value, key)
    if isinstance(value, list) and isinstance(current, list):
        if (parent, key) in PRIMITIVE_MERGE:
            return current + [v for v in value if v not in current]
        if key in MERGE_KEYS and all(isinstance(v, dict) for v in value):
            return _merge_list(current, value, MERGE_KEYS[key])
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return copy.deepcopy(value)


def _merge_list(current: list, patch: list, merge_key: str) -> list:
    result = copy.deepcopy(current)
    for element in patch:
        if merge_key not in element:
            raise PatchError(f"map: {element} does not contain declared merge key: {merge_key}")
        index = next((i for i, e in enumerate(result)
                      if isinstance(e, dict) and e.get(merge_key) == element[merge_key]), None)
        if element.get("$patch") == "delete":
            if index is not None:
                result.pop(index)
        elif index is None:
            result.append(_strip(element))
        else:
            result[index] = strategic_merge(result[index], element)
    return result


def _ordered(items: list, order: list, merge_key: str | None) -> list:
    """Items in ``$setElementOrder`` order; any not named keep their place after those that are."""
    def ident(item):
        return item.get(merge_key) if merge_key and isinstance(item, dict) else item
    wanted = [ident(o) for o in order]
    named = sorted((i for i in items if ident(i) in wanted), key=lambda i: wanted.index(ident(i)))
    return named + [i for i in items if ident(i) not in wanted]


def _strip(value):
    """A new element: directives dropped (they only mean something against an existing one)."""
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if not k.startswith("$")}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def apply_patch(original: dict, patch: dict) -> dict:
    """The entry point for handlers: strategic merge, refusing a non-object patch."""
    if not isinstance(patch, dict):
        raise PatchError("strategic merge patch must be a JSON object")
    return strategic_merge(original, patch)

