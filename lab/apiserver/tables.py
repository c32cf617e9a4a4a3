"""Server-side printing: ``meta.k8s.io/v1`` Table answers, which ``kubectl get`` asks for.

Purely computational; no I/O. Columns follow kube-apiserver's printers for the built-ins we serve,
and a CRD's ``additionalPrinterColumns`` (simple ``.a.b`` JSON paths only) for custom resources.
"""
from __future__ import annotations

from datetime import datetime, timezone

from lab.apiserver.registry import CRD_GROUP, ResourceType


def wants_table(request) -> bool:
    """kubectl asks ``Accept: application/json;as=Table;v=v1;g=meta.k8s.io, ...``."""
    accept = request.headers.get("Accept", "")
    first = accept.split(",")[0]
    return "as=Table" in first


def age(timestamp: str | None, now: datetime | None = None) -> str:
    """kubectl's short ages: 42s, 5m, 3h, 2d (``<unknown>`` without a timestamp)."""
    if not timestamp:
        return "<unknown>"
    then = datetime.strptime(timestamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
    seconds = max(0, int(((now or datetime.now(timezone.utc)) - then).total_seconds()))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    if seconds < 172800:
        return f"{seconds // 3600}h"
    return f"{seconds // 86400}d"


def _path(obj: dict, json_path: str):
    node = obj
    for part in json_path.strip().lstrip(".").split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def _builtin_columns(rtype: ResourceType) -> list[tuple[str, str, object]]:
    """(header, type, cell function) for the built-in types."""
    created = ("Age", "date", lambda o: age(o["metadata"].get("creationTimestamp")))
    if rtype.group == CRD_GROUP:
        return [("Created At", "date", lambda o: o["metadata"].get("creationTimestamp"))]
    if rtype.plural == "nodes":
        return [("Status", "string", _node_status), ("Roles", "string", lambda o: "<none>"),
                created, ("Version", "string",
                          lambda o: (_path(o, ".status.nodeInfo.kubeletVersion") or "")),
                ("Internal-IP", "string", lambda o: _address(o, "InternalIP"), 1),
                ("External-IP", "string", lambda o: _address(o, "ExternalIP"), 1),
                ("OS-Image", "string", lambda o: _info(o, "osImage"), 1),
                ("Kernel-Version", "string", lambda o: _info(o, "kernelVersion"), 1),
                ("Container-Runtime", "string", lambda o: _info(o, "containerRuntimeVersion"), 1)]
    if rtype.plural == "pods":
        return [("Ready", "string", _pod_ready), ("Status", "string",
                                                  lambda o: _path(o, ".status.phase") or "Pending"),
                ("Restarts", "string", lambda o: "0"), created,
                ("IP", "string", lambda o: _path(o, ".status.podIP") or "<none>", 1),
                ("Node", "string", lambda o: _path(o, ".spec.nodeName") or "<none>", 1),
                ("Nominated Node", "string", lambda o: "<none>", 1),
                ("Readiness Gates", "string", lambda o: "<none>", 1)]
    if rtype.plural == "namespaces":
        return [("Status", "string", lambda o: _path(o, ".status.phase") or "Active"), created]
    if rtype.plural == "secrets":
        return [("Type", "string", lambda o: o.get("type", "Opaque")),
                ("Data", "string", lambda o: str(len(o.get("data") or {}))), created]
    return [created]


def _address(obj: dict, kind: str) -> str:
    for address in _path(obj, ".status.addresses") or []:
        if address.get("type") == kind:
            return address.get("address", "<none>")
    return "<none>"


def _info(obj: dict, field: str) -> str:
    return (_path(obj, ".status.nodeInfo") or {}).get(field) or "<unknown>"


def _node_status(obj: dict) -> str:
    for condition in _path(obj, ".status.conditions") or []:
        if condition.get("type") == "Ready":
            return "Ready" if condition.get("status") == "True" else "NotReady"
    return "Unknown"


def _pod_ready(obj: dict) -> str:
    containers = _path(obj, ".spec.containers") or []
    ready = sum(1 for c in _path(obj, ".status.containerStatuses") or [] if c.get("ready"))
    return f"{ready}/{len(containers)}"


def columns_for(rtype: ResourceType, printer_columns: list[dict] | None):
    if printer_columns:
        return [(c["name"], c.get("type", "string"),
                 lambda o, p=c.get("jsonPath", ""): _cell(_path(o, p)), c.get("priority", 0))
                for c in printer_columns]
    return _builtin_columns(rtype)


def _cell(value):
    return "" if value is None else value


def to_table(rtype: ResourceType, items: list[dict], list_meta: dict,
             printer_columns: list[dict] | None, include_object: bool = False) -> dict:
    columns = [("Name", "string", lambda o: o["metadata"].get("name"))]
    columns += columns_for(rtype, printer_columns)
    return {
        "kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": dict(list_meta),
        "columnDefinitions": [
            {"name": column[0], "type": "string" if column[1] == "date" else column[1],
             "format": "name" if column[0] == "Name" else "", "description": "",
             "priority": column[3] if len(column) > 3 else 0}
            for column in columns],
        "rows": [{"cells": [column[2](obj) for column in columns],
                  "object": obj if include_object else _partial(obj)} for obj in items],
    }


def _partial(obj: dict) -> dict:
    return {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
            "metadata": obj.get("metadata", {})}
