"""Objects in etcd the way kube-apiserver keeps them: one JSON value per key, CAS on mod_revision.

Does I/O (etcd, through ``lab.apiserver.etcd``). ``metadata.resourceVersion`` is never stored: on
every read it is the key's ``mod_revision``, and a list's is the revision the read was made at, so a
client's resourceVersion is etcd's revision and a watch from a compacted one gets a real 410.
"""
from __future__ import annotations

import base64
import binascii
import copy
import json
import re
import uuid
from collections.abc import Callable
from datetime import datetime, timezone

from lab.apiserver import errors, meta as object_meta
from lab.apiserver.etcd import KV, Compacted, DryRunEtcd, Etcd, EtcdError, prefix_end
from lab.apiserver.registry import CRD_GROUP, ResourceType

_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_TOO_OLD_CONTINUE = ("The provided continue parameter is too old to display a consistent list "
                     "result. You can start a new list without the continue parameter.")
_RETRIES = 20  # unconditional updates re-read and retry a lost compare-and-swap this many times


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def decode(rtype: ResourceType, version: str, kv: KV) -> dict:
    """A stored value as the client sees it: requested apiVersion, resourceVersion = mod_revision."""
    obj = json.loads(kv.value)
    obj["apiVersion"] = rtype.api_version(version)
    obj["kind"] = rtype.kind
    obj.setdefault("metadata", {})["resourceVersion"] = str(kv.mod_revision)
    return obj


def check_name(rtype: ResourceType, name: str) -> None:
    """Reject names kube-apiserver rejects (422); no "/" can ever reach an etcd key."""
    if not name or len(name) > 253 or not _DNS_SUBDOMAIN.fullmatch(name):
        raise errors.invalid(rtype.kind, rtype.group, name, "metadata.name",
                             f'Invalid value: "{name}": a lowercase RFC 1123 subdomain must consist '
                             "of lower case alphanumeric characters, '-' or '.', and must start "
                             "and end with an alphanumeric character")


def _etcd_failure(exc: EtcdError) -> errors.ApiError:
    if isinstance(exc, Compacted):
        return errors.expired(exc.requested, exc.compacted)
    return errors.unavailable(f"storage unavailable: {exc}")


class Store:
    """CRUD on typed objects; every method answers client-shaped dicts or raises ``ApiError``."""

    def __init__(self, etcd: Etcd, on_write: Callable[[ResourceType], object] | None = None) -> None:
        self.etcd = etcd
        self._on_write = on_write  # called (awaited) after a write, e.g. to reload CRDs

    def dry_run(self) -> Store:
        """The same store with writes checked but not made (``dryRun=All``: kubectl diff)."""
        return Store(DryRunEtcd(self.etcd))

    async def _written(self, rtype: ResourceType) -> None:
        if self._on_write is not None:
            await self._on_write(rtype)

    async def get(self, rtype: ResourceType, version: str, name: str, ns: str | None) -> dict:
        check_name(rtype, name)
        try:
            kv = await self.etcd.get(rtype.key(name, ns))
        except EtcdError as exc:
            raise _etcd_failure(exc) from exc
        if kv is None:
            raise errors.not_found(rtype.plural, rtype.group, name)
        return decode(rtype, version, kv)

    async def list(self, rtype: ResourceType, version: str, ns: str | None, *,
                   match: Callable[[dict], bool], limit: int = 0, token: str | None = None,
                   revision: int = 0) -> dict:
        """A List; with ``limit``, at most that many matches and a ``continue`` token for the rest."""
        prefix = rtype.prefix(ns)
        start, end = prefix, prefix_end(prefix)
        if token:
            revision, start = _parse_continue(token, prefix)
        items: list[dict] = []
        more = True
        try:
            while more and (not limit or len(items) < limit):
                batch = (limit - len(items)) if limit else 0
                kvs, read_rev, more = await self.etcd.range(start, end, revision=revision, limit=batch)
                revision = revision or read_rev
                for kv in kvs:
                    obj = decode(rtype, version, kv)
                    if match(obj):
                        items.append(obj)
                if kvs:
                    start = kvs[-1].key + "\0"
        except Compacted as exc:
            raise errors.ApiError(410, "Expired", _TOO_OLD_CONTINUE if token else
                                  "The resourceVersion for the provided list is too old.") from exc
        except EtcdError as exc:
            raise _etcd_failure(exc) from exc
        meta = {"resourceVersion": str(revision)}
        if more:
            meta["continue"] = _make_continue(revision, start, prefix)
        return {"kind": rtype.list_kind, "apiVersion": rtype.api_version(version),
                "metadata": meta, "items": items}

    async def create(self, rtype: ResourceType, version: str, ns: str | None, body: dict) -> dict:
        obj = copy.deepcopy(body)
        meta = obj.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
        name = meta.get("name", "")
        if not name:
            raise errors.invalid(rtype.kind, rtype.group, "", "metadata.name",
                                 "Required value: name or generateName is required")
        check_name(rtype, name)
        if meta.get("resourceVersion"):
            # kube-apiserver's etcd3 store refuses this with a plain error, hence a 500.
            raise errors.internal("resourceVersion should not be set on objects to be created")
        await self._check_namespace(rtype, ns)
        _check_meta(rtype, obj)
        _status_on_create(rtype, obj)
        meta.update(uid=str(uuid.uuid4()), creationTimestamp=now())
        if _has_generation(rtype):
            meta["generation"] = 1
        else:
            meta.pop("generation", None)
        if rtype.namespaced:
            meta["namespace"] = ns
        else:
            meta.pop("namespace", None)
        _prepare(rtype, obj)
        try:
            created, revision = await self.etcd.create(rtype.key(name, ns), _encode(obj))
        except EtcdError as exc:
            raise _etcd_failure(exc) from exc
        if not created:
            raise errors.already_exists(rtype.plural, rtype.group, name)
        await self._written(rtype)
        if revision:  # 0: a dry run, which stores nothing and so has no resourceVersion
            meta["resourceVersion"] = str(revision)
        obj["apiVersion"], obj["kind"] = rtype.api_version(version), rtype.kind
        return obj

    async def _check_namespace(self, rtype: ResourceType, ns: str | None) -> None:
        if not rtype.namespaced:
            return
        try:
            exists = await self.etcd.get(f"/registry/namespaces/{ns}")
        except EtcdError as exc:
            raise _etcd_failure(exc) from exc
        if exists is None:
            raise errors.not_found("namespaces", "", ns or "")

    async def update(self, rtype: ResourceType, version: str, ns: str | None, name: str,
                     change: Callable[[dict], dict], subresource: str | None = None) -> dict:
        """Read, ``change(current) -> new``, compare-and-swap; conditional when the new object
        carries a resourceVersion (409 if stale), otherwise retried on a lost race.
        With a status subresource, ``/status`` writes change only status and others all but it."""
        for _ in range(_RETRIES):
            current = await self.get(rtype, version, name, ns)
            new = change(copy.deepcopy(current))
            if rtype.status_subresource:
                new = _split_status(current, new, subresource == "status")
            wanted = new.get("metadata", {}).get("resourceVersion")
            stored = current["metadata"]["resourceVersion"]
            if wanted and wanted != stored:
                raise errors.conflict(rtype.plural, rtype.group, name)
            obj = _carry_over(rtype, current, new, ns)
            key = rtype.key(name, ns)
            try:
                if _finalized(obj):  # the last finalizer went: now the delete happens
                    ok, revision, now_kv = await self.etcd.delete_if(key, int(stored))
                else:
                    ok, revision, now_kv = await self.etcd.put_if(key, _encode(obj), int(stored))
            except EtcdError as exc:
                raise _etcd_failure(exc) from exc
            if ok:
                await self._written(rtype)
                obj["metadata"]["resourceVersion"] = str(revision)
                obj["apiVersion"], obj["kind"] = rtype.api_version(version), rtype.kind
                return obj
            if now_kv is None:
                raise errors.not_found(rtype.plural, rtype.group, name)
            if wanted:
                raise errors.conflict(rtype.plural, rtype.group, name)
        raise errors.conflict(rtype.plural, rtype.group, name)

    async def _mark_deleting(self, rtype: ResourceType, ns: str | None, name: str,
                             current: dict) -> dict | None:
        """An object with finalizers is only marked (deletionTimestamp) and stays until an update
        removes its last finalizer, as in kube-apiserver. None: the compare-and-swap lost."""
        meta = current["metadata"]
        if meta.get("deletionTimestamp"):
            return current
        obj = copy.deepcopy(current)
        obj["metadata"].update(deletionTimestamp=now(), deletionGracePeriodSeconds=0)
        try:
            ok, revision, _ = await self.etcd.put_if(rtype.key(name, ns), _encode(obj),
                                                     int(meta["resourceVersion"]))
        except EtcdError as exc:
            raise _etcd_failure(exc) from exc
        if not ok:
            return None
        await self._written(rtype)
        obj["metadata"]["resourceVersion"] = str(revision)
        return obj

    async def delete(self, rtype: ResourceType, version: str, ns: str | None, name: str,
                     precondition: str | None = None) -> dict:
        for _ in range(_RETRIES):
            current = await self.get(rtype, version, name, ns)
            stored = current["metadata"]["resourceVersion"]
            if precondition and precondition != stored:
                raise errors.precondition_failed(rtype.plural, rtype.group, name, precondition,
                                                 int(stored))
            if current["metadata"].get("finalizers"):
                marked = await self._mark_deleting(rtype, ns, name, current)
                if marked is not None:
                    return marked
                continue
            try:
                ok, _, now_kv = await self.etcd.delete_if(rtype.key(name, ns), int(stored))
            except EtcdError as exc:
                raise _etcd_failure(exc) from exc
            if ok:
                await self._written(rtype)
                return current
            if now_kv is None:
                raise errors.not_found(rtype.plural, rtype.group, name)
        raise errors.conflict(rtype.plural, rtype.group, name)


def _finalized(obj: dict) -> bool:
    meta = obj.get("metadata", {})
    return bool(meta.get("deletionTimestamp")) and not meta.get("finalizers")


def _split_status(current: dict, new: dict, status_only: bool) -> dict:
    """kube's status strategies: a /status write takes only status; a main write keeps status."""
    if status_only:
        result = copy.deepcopy(current)
        if "status" in new:
            result["status"] = new["status"]
        result["metadata"]["resourceVersion"] = new.get("metadata", {}).get("resourceVersion")
        return result
    result = copy.deepcopy(new)
    result.pop("status", None)
    if "status" in current:
        result["status"] = copy.deepcopy(current["status"])
    return result


def _status_on_create(rtype: ResourceType, obj: dict) -> None:
    """What kube-apiserver's PrepareForCreate does to status: pods start Pending, custom
    resources with a status subresource start without one (nodes keep theirs)."""
    if rtype.group == "" and rtype.plural == "pods":
        obj["status"] = {"phase": "Pending"}
    elif rtype.group not in ("", CRD_GROUP) and rtype.status_subresource:
        obj.pop("status", None)


def _carry_over(rtype: ResourceType, current: dict, new: dict, ns: str | None) -> dict:
    """What the server owns survives an update: uid, creation time; generation counts spec changes."""
    obj = copy.deepcopy(new)
    meta = obj.setdefault("metadata", {})
    old_meta = current["metadata"]
    for owned in ("uid", "creationTimestamp", "name"):
        meta[owned] = old_meta.get(owned)
    for owned in ("deletionTimestamp", "deletionGracePeriodSeconds"):
        meta.pop(owned, None)
        if owned in old_meta:
            meta[owned] = old_meta[owned]
    added = set(meta.get("finalizers") or ()) - set(old_meta.get("finalizers") or ())
    if meta.get("deletionTimestamp") and added:
        raise errors.invalid_fields(rtype.kind, rtype.group, meta["name"], [
            "metadata.finalizers: Forbidden: no new finalizers can be added if the object is "
            "being deleted"])
    if rtype.namespaced:
        meta["namespace"] = ns
    if not _has_generation(rtype):
        meta.pop("generation", None)
    else:
        generation = old_meta.get("generation", 1)
        if _content(current) != _content(obj):
            generation += 1
        meta["generation"] = generation
    _check_meta(rtype, obj)
    _prepare(rtype, obj)
    return obj


def _check_meta(rtype: ResourceType, obj: dict) -> None:
    meta = obj.get("metadata", {})
    namespace = rtype.group == "" and rtype.plural == "namespaces"
    found = object_meta.problems(meta, namespace_name=namespace)
    if found:
        raise errors.invalid_fields(rtype.kind, rtype.group, meta.get("name", ""), found)


def _has_generation(rtype: ResourceType) -> bool:
    """Custom resources and CRDs count generations; our core types (1.32) carry none."""
    return rtype.group != ""


def _content(obj: dict) -> dict:
    """Everything but metadata and status: a change here bumps metadata.generation."""
    return {k: v for k, v in obj.items() if k not in ("metadata", "status", "apiVersion", "kind")}


def _prepare(rtype: ResourceType, obj: dict) -> None:
    """Type-specific defaults the real server sets on every write."""
    if rtype.group == CRD_GROUP:
        from lab.apiserver.crds import establish
        establish(obj)
    elif rtype.group == "" and rtype.plural == "namespaces":
        obj.setdefault("spec", {}).setdefault("finalizers", ["kubernetes"])
        obj["status"] = {"phase": "Active"}
    elif rtype.group == "" and rtype.plural == "secrets":
        _secret_data(obj)


def _secret_data(obj: dict) -> None:
    """``stringData`` is write-only: merged into ``data`` as base64, as the real server does."""
    string_data = obj.pop("stringData", None) or {}
    data = obj.get("data") or {}
    name = obj.get("metadata", {}).get("name", "")
    for key, value in data.items():
        try:
            base64.b64decode(value, validate=True)
        except (binascii.Error, TypeError, ValueError):
            raise errors.invalid("Secret", "", name, f"data[{key}]",
                                 "Invalid value: illegal base64 data") from None
    for key, value in string_data.items():
        data[key] = base64.b64encode(str(value).encode()).decode()
    if data:
        obj["data"] = data
    obj.setdefault("type", "Opaque")


def _encode(obj: dict) -> bytes:
    stored = copy.deepcopy(obj)
    stored.get("metadata", {}).pop("resourceVersion", None)
    return json.dumps(stored, separators=(",", ":")).encode()


def _make_continue(revision: int, next_key: str, prefix: str) -> str:
    token = {"v": "meta.k8s.io/v1", "rv": revision, "start": next_key[len(prefix):]}
    return base64.urlsafe_b64encode(json.dumps(token).encode()).decode()


def _parse_continue(token: str, prefix: str) -> tuple[int, str]:
    try:
        data = json.loads(base64.urlsafe_b64decode(token.encode()))
        revision, start = int(data["rv"]), str(data["start"])
    except (ValueError, KeyError, TypeError, binascii.Error) as exc:
        raise errors.bad_request("continue key is not valid: illegal base64 data") from exc
    if revision <= 0:
        raise errors.bad_request("continue key is not valid")
    return revision, prefix + start
