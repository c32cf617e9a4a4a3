"""CustomResourceDefinition checks and the status the real server's controllers set.

Purely computational; no I/O. kube-apiserver's naming controller sets ``NamesAccepted`` and
``acceptedNames`` and its establishing controller ``Established`` shortly after a CRD is written;
the stand-in sets them on the write itself, so the next request already sees the CRD served.
"""
from __future__ import annotations

from datetime import datetime, timezone

from lab.apiserver import errors


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")

_KIND = "CustomResourceDefinition"
_GROUP = "apiextensions.k8s.io"


def validate(crd: dict) -> None:
    """The checks clients depend on (422 Invalid otherwise): names, scope, exactly one storage."""
    spec = crd.get("spec")
    name = crd.get("metadata", {}).get("name", "")
    if not isinstance(spec, dict):
        raise errors.invalid(_KIND, _GROUP, name, "spec", "Required value")
    names = spec.get("names") or {}
    group, plural = spec.get("group", ""), names.get("plural", "")
    for field, value in (("spec.group", group), ("spec.names.plural", plural),
                         ("spec.names.kind", names.get("kind", ""))):
        if not value:
            raise errors.invalid(_KIND, _GROUP, name, field, "Required value")
    if "." not in group:
        raise errors.invalid(_KIND, _GROUP, name, "spec.group",
                             f'Invalid value: "{group}": should be a domain with at least one dot')
    if name != f"{plural}.{group}":
        raise errors.invalid(_KIND, _GROUP, name, "metadata.name",
                             f'Invalid value: "{name}": must be spec.names.plural+"."+spec.group')
    if spec.get("scope") not in ("Namespaced", "Cluster"):
        raise errors.invalid(_KIND, _GROUP, name, "spec.scope",
                             f'Unsupported value: "{spec.get("scope")}": supported values: '
                             '"Cluster", "Namespaced"')
    versions = spec.get("versions") or []
    if not versions or not all(isinstance(v, dict) and v.get("name") for v in versions):
        raise errors.invalid(_KIND, _GROUP, name, "spec.versions", "Invalid value: must have "
                             "exactly one version marked as storage version")
    if sum(1 for v in versions if v.get("storage")) != 1:
        raise errors.invalid(_KIND, _GROUP, name, "spec.versions", "Invalid value: must have "
                             "exactly one version marked as storage version")


def establish(crd: dict) -> None:
    """Validate, then set the status the naming and establishing controllers would."""
    validate(crd)
    spec = crd["spec"]
    names = dict(spec["names"])
    names.setdefault("singular", names["kind"].lower())
    names.setdefault("listKind", f"{names['kind']}List")
    spec["names"] = names
    storage = next(v["name"] for v in spec["versions"] if v.get("storage"))
    old = crd.get("status") or {}
    since = {c.get("type"): c.get("lastTransitionTime") for c in old.get("conditions") or ()}
    conditions = [
        {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts",
         "message": "no conflicts found"},
        {"type": "Established", "status": "True", "reason": "InitialNamesAccepted",
         "message": "the initial names have been accepted"},
    ]
    for condition in conditions:
        condition["lastTransitionTime"] = since.get(condition["type"]) or _now()
    stored = list(old.get("storedVersions") or [])
    if storage not in stored:
        stored.append(storage)
    crd["status"] = {"conditions": conditions, "acceptedNames": names, "storedVersions": stored}
