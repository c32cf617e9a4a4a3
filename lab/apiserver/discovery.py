"""Discovery documents: ``/version``, ``/api``, ``/apis``, ``/api/v1``, ``/apis/<group>[/<version>]``.

Purely computational; no I/O. Only the legacy (unaggregated) discovery format is served: clients
that ask for aggregated discovery (``as=APIGroupDiscoveryList``, kubectl >= 1.26) list it first in
``Accept`` but also accept ``application/json``, and fall back to the legacy walk when the answer's
Content-Type is plain ``application/json`` — which is what we send.
"""
from __future__ import annotations

import hashlib

from lab.apiserver.registry import ALL_VERBS, Registry, ResourceType

VERSION = {"major": "1", "minor": "32", "gitVersion": "v1.32.0+pycalico-standin",
           "gitCommit": "0000000000000000000000000000000000000000", "gitTreeState": "clean",
           "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.23.0", "compiler": "gc",
           "platform": "linux/amd64"}


def api_versions(server_address: str) -> dict:
    return {"kind": "APIVersions", "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0",
                                            "serverAddress": server_address}]}


def _group(name: str, versions: list[str]) -> dict:
    gvs = [{"groupVersion": f"{name}/{v}", "version": v} for v in versions]
    return {"name": name, "versions": gvs, "preferredVersion": gvs[0]}


def api_group_list(registry: Registry) -> dict:
    groups = [_group(name, versions) for name, versions in sorted(registry.groups().items())]
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}


def api_group(registry: Registry, name: str) -> dict | None:
    versions = registry.groups().get(name)
    if not versions:
        return None
    return {"kind": "APIGroup", "apiVersion": "v1", **_group(name, versions)}


def _resource(rtype: ResourceType, version: str) -> dict:
    digest = hashlib.sha256(f"{rtype.group}/{version}/{rtype.plural}".encode()).digest()
    entry = {"name": rtype.plural, "singularName": rtype.singular, "namespaced": rtype.namespaced,
             "kind": rtype.kind, "verbs": list(ALL_VERBS),
             "storageVersionHash": hashlib.sha1(digest).hexdigest()[:11]}
    if rtype.short_names:
        entry["shortNames"] = list(rtype.short_names)
    if rtype.categories:
        entry["categories"] = list(rtype.categories)
    return entry


def _status(rtype: ResourceType) -> dict:
    return {"name": f"{rtype.plural}/status", "singularName": "", "namespaced": rtype.namespaced,
            "kind": rtype.kind, "verbs": ["get", "patch", "update"]}


def api_resource_list(registry: Registry, group: str, version: str) -> dict | None:
    types = registry.in_group_version(group, version)
    if not types:
        return None
    resources = []
    for rtype in sorted(types, key=lambda t: t.plural):
        resources.append(_resource(rtype, version))
        if rtype.status_subresource:
            resources.append(_status(rtype))
    group_version = f"{group}/{version}" if group else version
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version,
            "resources": resources}
