"""A minimal OpenAPI v3 document set: just enough for ``kubectl apply`` to validate server-side.

Purely computational; no I/O. kubectl (1.27+, checked with 1.32) validates by default: it first asks
whether the server supports the ``fieldValidation`` query parameter for the object's kind, by reading
``/openapi/v3`` (a map of group-versions to documents) and, in the group-version's document, the PATCH
operation tagged ``x-kubernetes-group-version-kind`` with that kind. If the parameter is listed, kubectl
leaves validation to the server and sends ``fieldValidation=Strict``; if the documents are missing
(404), ``kubectl apply`` refuses to run without ``--validate=false``. We list the parameter for every
kind we serve; the stand-in then ignores it (no schema validation: see the package docstring).
There are no schemas here, so kubectl computes strategic merge patches from its compiled-in types.

List documents (``kind: IPPoolList``, ``v1 List``) have no PATCH operation, so kubectl falls back to
the OpenAPI v2 document (protobuf); we serve an empty one (``V2_PROTOBUF``, no bytes), from which
kubectl concludes "no server-side validation for this kind, and no schema to check it against" and
goes on, as it does with a real server's v2 document for a kind it does not describe.
"""
from __future__ import annotations

import hashlib
import json

from lab.apiserver.registry import Registry, ResourceType


V2_PROTOBUF = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf"


def _gv_path(group: str, version: str) -> str:
    return f"api/{version}" if not group else f"apis/{group}/{version}"


def _patch(group: str, version: str, kind: str) -> dict:
    param = {"name": "fieldValidation", "in": "query", "schema": {"type": "string"},
             "description": "Strict, Warn or Ignore"}
    gvk = {"group": group, "version": version, "kind": kind}
    return {"patch": {"operationId": f"patch{kind}", "x-kubernetes-group-version-kind": gvk,
                      "x-kubernetes-action": "patch", "parameters": [param],
                      "responses": {"200": {"description": "OK"}}}}


def _document(types: list[ResourceType], group: str, version: str) -> dict:
    paths = {}
    for rtype in types:
        scope = "namespaces/{namespace}/" if rtype.namespaced else ""
        path = f"/{_gv_path(group, version)}/{scope}{rtype.plural}/{{name}}"
        paths[path] = _patch(group, version, rtype.kind)
    return {"openapi": "3.0.0", "info": {"title": "Kubernetes", "version": "v1.32.0"},
            "paths": paths}


def _group_versions(registry: Registry) -> dict[str, list[ResourceType]]:
    by_path: dict[str, list[ResourceType]] = {}
    for rtype in registry.types():
        for version in rtype.versions:
            by_path.setdefault(_gv_path(rtype.group, version), []).append(rtype)
    return by_path


def document(registry: Registry, gv_path: str) -> dict | None:
    """The document for ``api/v1`` or ``apis/<group>/<version>``, or None."""
    types = _group_versions(registry).get(gv_path)
    if not types:
        return None
    parts = gv_path.split("/")
    group, version = ("", parts[1]) if parts[0] == "api" else (parts[1], parts[2])
    return _document(types, group, version)


def root(registry: Registry) -> dict:
    """``/openapi/v3``: each group-version with a hash of its document, as kube-apiserver serves."""
    paths = {}
    for gv_path in sorted(_group_versions(registry)):
        body = json.dumps(document(registry, gv_path), sort_keys=True).encode()
        digest = hashlib.sha512(body).hexdigest()[:64].upper()
        paths[gv_path] = {"serverRelativeURL": f"/openapi/v3/{gv_path}?hash={digest}"}
    return {"paths": paths}
