"""Which resources the stand-in serves: built-in types and the ones stored CRDs define.

Purely computational; no I/O (the server feeds it the CRDs it reads from etcd).
Keys follow kube-apiserver's layout: ``/registry/<resource>/[<namespace>/]<name>`` for the core
group, ``/registry/<group>/<resource>/[<namespace>/]<name>`` for every other group.
"""
from __future__ import annotations

from dataclasses import dataclass, field

REGISTRY = "/registry/"
CRD_GROUP = "apiextensions.k8s.io"
ALL_VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")


@dataclass(frozen=True)
class ResourceType:
    group: str  # "" for the core group
    versions: tuple[str, ...]  # served versions, the preferred (storage) one first
    plural: str
    singular: str
    kind: str
    namespaced: bool
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    field_selectors: frozenset[str] = field(default=frozenset())
    status_subresource: bool = False  # /status exists; main writes keep the stored status

    @property
    def list_kind(self) -> str:
        return f"{self.kind}List"

    def api_version(self, version: str) -> str:
        return f"{self.group}/{version}" if self.group else version

    def prefix(self, namespace: str | None = None) -> str:
        """The etcd prefix of every object (or of one namespace's objects) of this type."""
        base = f"{REGISTRY}{self.plural}/" if not self.group else f"{REGISTRY}{self.group}/{self.plural}/"
        return f"{base}{namespace}/" if (self.namespaced and namespace) else base

    def key(self, name: str, namespace: str | None) -> str:
        return self.prefix(namespace) + name

    def allowed_fields(self) -> frozenset[str]:
        base = {"metadata.name"} | ({"metadata.namespace"} if self.namespaced else set())
        return frozenset(base) | self.field_selectors


BUILTIN = (
    ResourceType("", ("v1",), "namespaces", "namespace", "Namespace", False, ("ns",),
                 field_selectors=frozenset({"status.phase"}), status_subresource=True),
    ResourceType("", ("v1",), "nodes", "node", "Node", False, ("no",),
                 field_selectors=frozenset({"spec.unschedulable"}), status_subresource=True),
    ResourceType("", ("v1",), "pods", "pod", "Pod", True, ("po",), ("all",),
                 field_selectors=frozenset({"spec.nodeName", "status.phase", "spec.restartPolicy",
                                            "spec.schedulerName", "spec.serviceAccountName",
                                            "status.podIP", "status.nominatedNodeName"}),
                 status_subresource=True),
    ResourceType("", ("v1",), "secrets", "secret", "Secret", True,
                 field_selectors=frozenset({"type"})),
    ResourceType(CRD_GROUP, ("v1",), "customresourcedefinitions", "customresourcedefinition",
                 "CustomResourceDefinition", False, ("crd", "crds"), ("api-extensions",),
                 status_subresource=True),
)


def type_from_crd(crd: dict) -> ResourceType | None:
    """The resource a stored CRD defines, or None when it serves no version."""
    spec = crd.get("spec", {})
    names = spec.get("names", {})
    versions = [v for v in spec.get("versions", []) if v.get("served", True)]
    if not versions or not names.get("plural") or not names.get("kind"):
        return None
    versions.sort(key=lambda v: not v.get("storage", False))
    return ResourceType(
        group=spec.get("group", ""),
        versions=tuple(v["name"] for v in versions),
        plural=names["plural"],
        singular=names.get("singular") or names["kind"].lower(),
        kind=names["kind"],
        namespaced=spec.get("scope", "Namespaced") == "Namespaced",
        short_names=tuple(names.get("shortNames", ())),
        categories=tuple(names.get("categories", ())),
        status_subresource=any("status" in (v.get("subresources") or {}) for v in versions),
    )


class Registry:
    """The served types: built-ins plus those of the current CRDs (replaced wholesale)."""

    def __init__(self) -> None:
        self._builtin = {(t.group, t.plural): t for t in BUILTIN}
        self._custom: dict[tuple[str, str], ResourceType] = {}

    def set_crds(self, crds: list[dict]) -> None:
        custom = {}
        for crd in crds:
            rtype = type_from_crd(crd)
            if rtype is not None:
                custom[(rtype.group, rtype.plural)] = rtype
        self._custom = custom

    def lookup(self, group: str, version: str, plural: str) -> ResourceType | None:
        rtype = self._builtin.get((group, plural)) or self._custom.get((group, plural))
        if rtype is None or version not in rtype.versions:
            return None
        return rtype

    def types(self) -> list[ResourceType]:
        return list(self._builtin.values()) + list(self._custom.values())

    def groups(self) -> dict[str, list[str]]:
        """Non-core group -> served versions (preferred first), in a stable order."""
        groups: dict[str, list[str]] = {}
        for rtype in self.types():
            if not rtype.group:
                continue
            versions = groups.setdefault(rtype.group, [])
            for version in rtype.versions:
                if version not in versions:
                    versions.append(version)
        return groups

    def in_group_version(self, group: str, version: str) -> list[ResourceType]:
        return [t for t in self.types() if t.group == group and version in t.versions]
