"""ObjectMeta validation as kube-apiserver does it for every type: names, labels, annotations.

Purely computational; no I/O. Returns kube-style problems (``field: reason``) so that what a real
cluster would refuse with 422 is refused here too, instead of surfacing only on a real cluster.

>>> problems({"name": "ok", "labels": {"app": "web", "bad key": "x"}}, namespace_name=False)
['metadata.labels: Invalid value: "bad key": name part must consist of alphanumeric characters, \
\\'-\\', \\'_\\' or \\'.\\', and must start and end with an alphanumeric character']
"""
from __future__ import annotations

import re

_QUALIFIED_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_ANNOTATIONS_MAX = 256 * 1024  # bytes, keys and values together
_NAME_PART = ("name part must consist of alphanumeric characters, '-', '_' or '.', and must "
              "start and end with an alphanumeric character")


def _key_problem(key: str) -> str | None:
    """Why ``key`` is not a qualified name (``[prefix/]name``), or None."""
    prefix, _, name = key.rpartition("/")
    if "/" in key and (not prefix or len(prefix) > 253 or not _DNS_SUBDOMAIN.fullmatch(prefix)):
        return "prefix part must be a lowercase RFC 1123 subdomain"
    if not name or len(name) > 63:
        return "name part must be no more than 63 characters" if name else "name part must be non-empty"
    if not _QUALIFIED_NAME.fullmatch(name):
        return _NAME_PART
    return None


def _label_value_problem(value) -> str | None:
    if not isinstance(value, str):
        return "must be a string"
    if len(value) > 63:
        return "must be no more than 63 characters"
    if value and not _QUALIFIED_NAME.fullmatch(value):
        return ("a valid label must be an empty string or consist of alphanumeric characters, "
                "'-', '_' or '.', and must start and end with an alphanumeric character")
    return None


def problems(meta: dict, namespace_name: bool) -> list[str]:
    """What is wrong with ``meta`` (``namespace_name``: the object is a Namespace)."""
    found = []
    name = meta.get("name", "")
    if namespace_name and not (len(name) <= 63 and _DNS_LABEL.fullmatch(name)):
        found.append(f'metadata.name: Invalid value: "{name}": a lowercase RFC 1123 label must '
                     "consist of lower case alphanumeric characters or '-', and must start and "
                     "end with an alphanumeric character")
    labels = meta.get("labels") or {}
    if not isinstance(labels, dict):
        return found + ["metadata.labels: Invalid value: must be an object"]
    for key, value in labels.items():
        why = _key_problem(key)
        if why:
            found.append(f'metadata.labels: Invalid value: "{key}": {why}')
        why = _label_value_problem(value)
        if why:
            found.append(f'metadata.labels: Invalid value: "{value}": {why}')
    annotations = meta.get("annotations") or {}
    if not isinstance(annotations, dict):
        return found + ["metadata.annotations: Invalid value: must be an object"]
    for key, value in annotations.items():
        why = _key_problem(key) or (None if isinstance(value, str) else "value must be a string")
        if why:
            found.append(f'metadata.annotations: Invalid value: "{key}": {why}')
    size = sum(len(k.encode()) + len(str(v).encode()) for k, v in annotations.items())
    if size > _ANNOTATIONS_MAX:
        found.append(f"metadata.annotations: Too long: must have at most {_ANNOTATIONS_MAX} bytes")
    return found
