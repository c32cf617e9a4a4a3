"""JSON merge patch (RFC 7386) and JSON patch (RFC 6902), as the API server applies them.

Purely computational; no I/O. Both return a new document and never change their inputs.

>>> merge_patch({"a": 1, "b": {"c": 2}}, {"b": {"c": None, "d": 3}})
{'a': 1, 'b': {'d': 3}}
>>> json_patch({"a": [1]}, [{"op": "add", "path": "/a/-", "value": 2}])
{'a': [1, 2]}
"""
from __future__ import annotations

import copy


class PatchError(ValueError):
    """The patch cannot be applied; the message is answered to the client."""


def merge_patch(target, patch):
    """RFC 7386: objects merge key by key, ``null`` deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def json_patch(document, operations):
    """RFC 6902: add, remove, replace, move, copy, test."""
    if not isinstance(operations, list):
        raise PatchError("json patch must be a list of operations")
    doc = copy.deepcopy(document)
    for op in operations:
        if not isinstance(op, dict) or "op" not in op or "path" not in op:
            raise PatchError(f"invalid json patch operation: {op!r}")
        doc = _apply_op(doc, op)
    return doc


def _apply_op(doc, op: dict):
    kind, path = op["op"], op["path"]
    if kind == "add":
        return _add(doc, path, copy.deepcopy(_value(op)))
    if kind == "remove":
        return _remove(doc, path)[0]
    if kind == "replace":
        doc, _ = _remove(doc, path)
        return _add(doc, path, copy.deepcopy(_value(op)))
    if kind in ("move", "copy"):
        value = _get(doc, _pointer(op.get("from", "")))
        if kind == "move":
            doc, _ = _remove(doc, op["from"])
        return _add(doc, path, copy.deepcopy(value))
    if kind == "test":
        if _get(doc, _pointer(path)) != _value(op):
            raise PatchError(f"test operation failed at {path}")
        return doc
    raise PatchError(f"unknown json patch operation {kind!r}")


def _value(op: dict):
    if "value" not in op:
        raise PatchError(f"json patch operation {op['op']} at {op['path']} needs a value")
    return op["value"]


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise PatchError(f"invalid JSON pointer {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _get(doc, parts: list[str]):
    for part in parts:
        doc = _child(doc, part)
    return doc


def _child(node, part: str):
    try:
        if isinstance(node, list):
            return node[_index(part, len(node) - 1)]
        return node[part]
    except (KeyError, TypeError) as exc:
        raise PatchError(f"path element {part!r} not found") from exc


def _index(part: str, limit: int) -> int:
    if not part.isdecimal() or int(part) > limit:
        raise PatchError(f"array index {part!r} out of range")
    return int(part)


def _add(doc, path: str, value):
    parts = _pointer(path)
    if not parts:
        return value
    parent = _get(doc, parts[:-1])
    last = parts[-1]
    if isinstance(parent, list):
        parent.insert(len(parent) if last == "-" else _index(last, len(parent)), value)
    elif isinstance(parent, dict):
        parent[last] = value
    else:
        raise PatchError(f"cannot add at {path}: parent is not a container")
    return doc


def _remove(doc, path: str):
    parts = _pointer(path)
    if not parts:
        raise PatchError("cannot remove the whole document")
    parent = _get(doc, parts[:-1])
    last = parts[-1]
    if isinstance(parent, list):
        return doc, parent.pop(_index(last, len(parent) - 1))
    if isinstance(parent, dict) and last in parent:
        return doc, parent.pop(last)
    raise PatchError(f"cannot remove {path}: not found")
