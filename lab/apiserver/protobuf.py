"""Kubernetes protobuf request bodies for the two kinds kubectl creates that way: Secret, Namespace.

Purely computational; no I/O. kubectl's typed clients (``kubectl create secret generic``,
``kubectl create namespace``) send ``Content-Type: application/vnd.kubernetes.protobuf``: the magic
``k8s\\0`` then a ``runtime.Unknown`` {1: TypeMeta{1: apiVersion, 2: kind}, 2: raw object}. Field
numbers are those of k8s.io/api/core/v1 and apimachinery's ObjectMeta ``generated.proto``, checked
against the bytes kubectl 1.32 sends. Other kinds are refused (415) rather than guessed.
"""
from __future__ import annotations

import base64

MEDIA_TYPE = "application/vnd.kubernetes.protobuf"
_MAGIC = b"k8s\x00"


class ProtobufError(ValueError):
    """The body is not a Kubernetes protobuf message we can read."""


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data):
            raise ProtobufError("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def fields(data: bytes) -> list[tuple[int, int | bytes]]:
    """(field number, value) pairs: ints for varints, bytes for length-delimited fields."""
    out, pos = [], 0
    while pos < len(data):
        tag, pos = _varint(data, pos)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            value, pos = _varint(data, pos)
        elif wire == 2:
            size, pos = _varint(data, pos)
            if pos + size > len(data):
                raise ProtobufError("truncated field")
            value, pos = data[pos:pos + size], pos + size
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            value, pos = data[pos:pos + size], pos + size
        else:
            raise ProtobufError(f"unsupported wire type {wire}")
        out.append((number, value))
    return out


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _entry(value: bytes) -> tuple[str, bytes]:
    parts = dict(fields(value))
    return _text(parts.get(1, b"")), parts.get(2, b"")


def _set(obj: dict, key: str, value) -> None:
    if value not in ("", None, {}, []):  # proto3 zero values are "absent" in JSON
        obj[key] = value


def object_meta(data: bytes) -> dict:
    meta: dict = {"labels": {}, "annotations": {}, "finalizers": [], "ownerReferences": []}
    names = {1: "name", 2: "generateName", 3: "namespace", 5: "uid", 6: "resourceVersion"}
    for number, value in fields(data):
        if number in names:
            _set(meta, names[number], _text(value))
        elif number in (11, 12):
            key, text = _entry(value)
            meta["labels" if number == 11 else "annotations"][key] = text.decode()
        elif number == 13:
            meta["ownerReferences"].append(_owner(value))
        elif number == 14:
            meta["finalizers"].append(_text(value))
    return {k: v for k, v in meta.items() if v not in ({}, [])}


def _owner(data: bytes) -> dict:
    owner: dict = {}
    names = {1: "kind", 3: "name", 4: "uid", 5: "apiVersion"}
    for number, value in fields(data):
        if number in names:
            _set(owner, names[number], _text(value))
        elif number in (6, 7):
            owner["controller" if number == 6 else "blockOwnerDeletion"] = bool(value)
    return owner


def _secret(data: bytes) -> dict:
    obj: dict = {"data": {}, "stringData": {}}
    for number, value in fields(data):
        if number == 1:
            obj["metadata"] = object_meta(value)
        elif number == 2:
            key, raw = _entry(value)
            obj["data"][key] = base64.b64encode(raw).decode()
        elif number == 3:
            _set(obj, "type", _text(value))
        elif number == 4:
            key, text = _entry(value)
            obj["stringData"][key] = text.decode()
        elif number == 5:
            obj["immutable"] = bool(value)
    return {k: v for k, v in obj.items() if v != {}}


def _namespace(data: bytes) -> dict:
    obj: dict = {}
    for number, value in fields(data):
        if number == 1:
            obj["metadata"] = object_meta(value)
        elif number == 2:
            finalizers = [_text(v) for n, v in fields(value) if n == 1]
            obj["spec"] = {"finalizers": finalizers} if finalizers else {}
    return obj


_KINDS = {("v1", "Secret"): _secret, ("v1", "Namespace"): _namespace}


def decode(body: bytes) -> dict:
    """A protobuf request body as the JSON object it stands for; ProtobufError if we cannot."""
    if not body.startswith(_MAGIC):
        raise ProtobufError("missing the k8s protobuf magic prefix")
    unknown = dict(fields(body[len(_MAGIC):]))
    type_meta = dict(fields(unknown.get(1, b"")))
    api_version, kind = _text(type_meta.get(1, b"")), _text(type_meta.get(2, b""))
    reader = _KINDS.get((api_version, kind))
    if reader is None:
        raise ProtobufError(f"protobuf bodies of {api_version}/{kind} are not supported by the "
                            "stand-in; send JSON")
    return {"apiVersion": api_version, "kind": kind, **reader(unknown.get(2, b""))}
