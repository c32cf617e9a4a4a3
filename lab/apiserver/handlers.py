"""HTTP handlers for resource paths: ``/api/v1/...`` and ``/apis/<group>/<version>/...``.

Does I/O (through ``Store`` and ``WatchStream``). Parses the path and query the way kube-apiserver
does, checks the body against the URL, and answers objects, Lists, watch streams or Status errors.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import yaml
from aiohttp import web

from lab.apiserver import errors, protobuf, strategic
from lab.apiserver.patch import PatchError, json_patch, merge_patch
from lab.apiserver.registry import CRD_GROUP, ResourceType
from lab.apiserver.schema import prune, validate
from lab.apiserver.selectors import SelectorError, parse_field_selector, parse_label_selector
from lab.apiserver.tables import wants_table, to_table
from lab.apiserver.watch import WatchRequest, WatchStream

# The server's printer-column lookup (``AppState.crd_columns``), for single-object Table answers.
COLUMNS = web.AppKey("columns", object)
_DEFAULT_WATCH_TIMEOUT = 1800.0  # kube-apiserver's --min-request-timeout


@dataclass(frozen=True)
class Target:
    """What a resource path names: a type, maybe a namespace, maybe one object."""
    rtype: ResourceType
    version: str
    namespace: str | None
    name: str | None
    subresource: str | None


def parse_path(registry, parts: list[str]) -> Target | None:
    """``parts`` after ``/api`` or ``/apis``: [group,] version, [namespaces, ns,] plural[, name[, sub]]."""
    if parts and parts[0] == "v1":
        group, rest = "", parts
    elif len(parts) >= 2:
        group, rest = parts[0], parts[1:]
    else:
        return None
    version, rest = rest[0], rest[1:]
    namespace = None
    if len(rest) >= 3 and rest[0] == "namespaces":
        namespace, rest = rest[1], rest[2:]
    if not rest or len(rest) > 3:
        return None
    rtype = registry.lookup(group, version, rest[0])
    if rtype is None or (namespace is not None and not rtype.namespaced):
        return None
    name = rest[1] if len(rest) > 1 else None
    if name is not None and rtype.namespaced and namespace is None:
        return None
    sub = rest[2] if len(rest) > 2 else None
    if sub is not None and (sub != "status" or not rtype.status_subresource):
        return None
    return Target(rtype, version, namespace, name, sub)


class ResourceHandlers:
    """The verbs on a resource path; ``app_state`` is the server's ``AppState``."""

    def __init__(self, app_state) -> None:
        self.state = app_state

    async def handle(self, request: web.Request, target: Target) -> web.StreamResponse:
        method = request.method
        if target.name is None:
            if method == "GET":
                if _flag(request.query.get("watch")):
                    return await self.watch(request, target)
                return await self.list(request, target)
            if method == "POST":
                return await self.create(request, target)
            if method == "DELETE":
                return await self.delete_collection(request, target)
        else:
            if method == "GET":
                obj = await self.state.store.get(target.rtype, target.version, target.name,
                                                 target.namespace)
                return _object_response(request, target, obj)
            if method == "PUT":
                return await self.replace(request, target)
            if method == "PATCH":
                return await self.patch(request, target)
            if method == "DELETE":
                return await self.delete(request, target)
        raise errors.method_not_allowed(method)

    def _store(self, request: web.Request):
        return self.state.store.dry_run() if _dry_run(request) else self.state.store

    def _admit(self, request: web.Request, target: Target, obj: dict) -> list[str]:
        """Prune and validate a custom resource against its CRD schema; return the warnings."""
        schema = self.state.schema_for(target.rtype, target.version)
        if schema is None:
            return []
        unknown = prune(obj, schema)
        directive = request.query.get("fieldValidation", "Warn")
        if unknown and directive == "Strict":
            raise errors.unknown_fields(target.rtype.kind, target.version, unknown)
        problems = validate(obj, schema)
        if problems:
            name = obj.get("metadata", {}).get("name", "")
            raise errors.invalid_fields(target.rtype.kind, target.rtype.group, name, problems)
        return [f'unknown field "{f}"' for f in unknown] if directive == "Warn" else []

    def _matcher(self, request: web.Request, target: Target):
        try:
            labels = parse_label_selector(request.query.get("labelSelector"))
            fields = parse_field_selector(request.query.get("fieldSelector"),
                                          target.rtype.allowed_fields())
        except SelectorError as exc:
            raise errors.bad_request(str(exc)) from exc
        return lambda obj: labels(obj.get("metadata", {}).get("labels")) and fields(obj)

    async def list(self, request: web.Request, target: Target) -> web.Response:
        query = request.query
        limit = _int_param(query, "limit")
        token = query.get("continue") or None
        rv = query.get("resourceVersion", "")
        if token and rv not in ("", "0"):
            raise errors.bad_request("specifying resource version is not allowed when using continue")
        revision = 0
        if rv not in ("", "0") and query.get("resourceVersionMatch") == "Exact":
            revision = _revision(rv)
        listing = await self.state.store.list(target.rtype, target.version, target.namespace,
                                              match=self._matcher(request, target), limit=limit,
                                              token=token, revision=revision)
        if wants_table(request):
            return _json(to_table(target.rtype, listing["items"], listing["metadata"],
                                  self.state.crd_columns(target.rtype), _include_object(request)))
        return _json(listing)

    async def watch(self, request: web.Request, target: Target) -> web.StreamResponse:
        query = request.query
        timeout = float(_int_param(query, "timeoutSeconds") or _DEFAULT_WATCH_TIMEOUT)
        if query.get("resourceVersion"):
            _revision(query["resourceVersion"])  # a malformed one is a 400, before streaming
        req = WatchRequest(target.rtype, target.version, target.namespace,
                           self._matcher(request, target), query.get("resourceVersion"),
                           _flag(query.get("allowWatchBookmarks")), timeout)
        stream = WatchStream(self.state.store, self.state.etcd, req, self.state.bookmark_interval)
        if wants_table(request):
            stream.wrap = lambda obj: to_table(target.rtype, [obj], {},
                                               self.state.crd_columns(target.rtype),
                                               _include_object(request))
        return await stream.serve(request)

    async def create(self, request: web.Request, target: Target) -> web.Response:
        body = await _body(request)
        _check_body(body, target, name_from_url=None)
        warnings = self._admit(request, target, body)
        obj = await self._store(request).create(target.rtype, target.version, target.namespace, body)
        return _object_response(request, target, obj, 201, warnings)

    async def replace(self, request: web.Request, target: Target) -> web.Response:
        body = await _body(request)
        _check_body(body, target, name_from_url=target.name)
        warnings = self._admit(request, target, body)
        obj = await self._store(request).update(target.rtype, target.version, target.namespace,
                                            target.name, lambda current: body, target.subresource)
        return _object_response(request, target, obj, 200, warnings)

    async def patch(self, request: web.Request, target: Target) -> web.Response:
        content_type = request.content_type
        raw = await request.read()
        if content_type == "application/apply-patch+yaml":
            return await self._apply(request, target, raw)
        patch = _parse_json(raw)
        apply = _patcher(content_type, target.rtype, patch)
        warnings: list[str] = []

        def change(current: dict) -> dict:
            try:
                new = apply(current)
            except PatchError as exc:
                raise errors.ApiError(422, "Invalid", str(exc)) from exc
            if not isinstance(new, dict):
                raise errors.bad_request("the patch does not produce an object")
            _check_body(new, target, name_from_url=target.name)
            warnings[:] = self._admit(request, target, new)
            return new

        obj = await self._store(request).update(target.rtype, target.version, target.namespace,
                                            target.name, change, target.subresource)
        return _object_response(request, target, obj, 200, warnings)

    async def _apply(self, request: web.Request, target: Target, raw: bytes) -> web.Response:
        """Server-side apply, approximated: create if absent, else merge the applied config."""
        try:
            applied = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise errors.bad_request(f"error decoding YAML: {exc}") from exc
        if not isinstance(applied, dict):
            raise errors.bad_request("the applied configuration is not an object")
        _check_body(applied, target, name_from_url=target.name)
        warnings: list[str] = []

        def change(current: dict) -> dict:
            new = merge_patch(current, applied)
            warnings[:] = self._admit(request, target, new)
            return new

        try:
            obj = await self._store(request).update(target.rtype, target.version, target.namespace,
                                                target.name, change)
        except errors.ApiError as exc:
            if exc.code != 404:
                raise
            warnings = self._admit(request, target, applied)
            applied["metadata"].pop("resourceVersion", None)
            obj = await self._store(request).create(target.rtype, target.version, target.namespace,
                                                applied)
            return _object_response(request, target, obj, 201, warnings)
        return _object_response(request, target, obj, 200, warnings)

    async def delete(self, request: web.Request, target: Target) -> web.Response:
        options = _parse_json(await request.read()) if request.can_read_body else {}
        options = options if isinstance(options, dict) else {}
        precondition = (options.get("preconditions") or {}).get("resourceVersion")
        # kubectl sends dryRun for deletes in the DeleteOptions body, not the query.
        dry_run = _dry_run(request) or "All" in (options.get("dryRun") or ())
        store = self.state.store.dry_run() if dry_run else self.state.store
        obj = await store.delete(target.rtype, target.version, target.namespace, target.name,
                                 precondition)
        if dry_run or obj["metadata"].get("deletionTimestamp"):  # marked, not gone (finalizers)
            return _object_response(request, target, obj)
        if target.rtype.group == CRD_GROUP:
            await self.state.drop_crd_objects(obj)
        elif target.rtype.group == "" and target.rtype.plural == "namespaces":
            await self.state.drop_namespace_objects(target.name)
        return _object_response(request, target, obj)

    async def delete_collection(self, request: web.Request, target: Target) -> web.Response:
        listing = await self.state.store.list(target.rtype, target.version, target.namespace,
                                              match=self._matcher(request, target))
        for obj in listing["items"]:
            meta = obj["metadata"]
            try:
                await self._store(request).delete(target.rtype, target.version,
                                              meta.get("namespace"), meta["name"])
            except errors.ApiError as exc:
                if exc.code != 404:  # deleted meanwhile by someone else: fine
                    raise
        return _json(listing)


def _patcher(content_type: str, rtype: ResourceType, patch):
    if content_type == "application/merge-patch+json":
        return lambda current: merge_patch(current, patch)
    if content_type == "application/json-patch+json":
        return lambda current: json_patch(current, patch)
    if content_type == "application/strategic-merge-patch+json":
        if rtype.group not in ("", CRD_GROUP):
            # What kube-apiserver does: custom resources have no strategic merge patch.
            raise errors.unsupported_media_type()
        if rtype.group == "":
            return lambda current: strategic.apply_patch(current, patch)
        # CRDs: their lists have no merge keys, so a merge patch without the directives.
        return lambda current: merge_patch(current, _without_directives(patch))
    raise errors.unsupported_media_type()


def _without_directives(patch):
    if isinstance(patch, dict):
        return {k: _without_directives(v) for k, v in patch.items() if not k.startswith("$")}
    if isinstance(patch, list):
        return [_without_directives(v) for v in patch]
    return patch


def _check_body(body, target: Target, name_from_url: str | None) -> None:
    """The checks kube-apiserver makes before storing: 400 when body and URL disagree."""
    if not isinstance(body, dict):
        raise errors.bad_request("the body of the request is not a JSON object")
    rtype, expected = target.rtype, target.rtype.api_version(target.version)
    if rtype.group in ("", CRD_GROUP):
        # Built-in types decode with the URL's kind as the default; custom resources do not.
        body.setdefault("kind", rtype.kind)
        body.setdefault("apiVersion", expected)
    if body.get("kind") != rtype.kind:
        raise errors.bad_request(f'the kind in the data ({body.get("kind")}) does not match the '
                                 f'expected kind ({rtype.kind})')
    if body.get("apiVersion") != expected:
        raise errors.bad_request(f'the API version in the data ({body.get("apiVersion")}) does not '
                                 f'match the expected API version ({expected})')
    meta = body.get("metadata")
    if meta is None:
        body["metadata"] = meta = {}
    if not isinstance(meta, dict):
        raise errors.bad_request("metadata must be an object")
    if name_from_url is not None and meta.get("name", name_from_url) != name_from_url:
        raise errors.bad_request(f'the name of the object ({meta.get("name")}) does not match the '
                                 f'name on the URL ({name_from_url})')
    if name_from_url is not None:
        meta["name"] = name_from_url
    body_ns = meta.get("namespace")
    if rtype.namespaced and body_ns and body_ns != target.namespace:
        raise errors.bad_request("the namespace of the provided object does not match the "
                                 "namespace sent on the request")
    if rtype.namespaced and target.namespace is None:
        raise errors.method_not_allowed(f"{rtype.plural} must be written in a namespace")


async def _body(request: web.Request):
    raw = await request.read()
    if request.content_type == protobuf.MEDIA_TYPE:  # kubectl's typed clients (create secret)
        try:
            return protobuf.decode(raw)
        except protobuf.ProtobufError as exc:
            raise errors.ApiError(415, "UnsupportedMediaType", str(exc)) from exc
    return _parse_json(raw)


def _parse_json(raw: bytes):
    try:
        return json.loads(raw) if raw else None
    except ValueError as exc:
        raise errors.bad_request(f"couldn't get version/kind; json parse error: {exc}") from exc


def _json(body: dict, status: int = 200) -> web.Response:
    return web.Response(body=json.dumps(body, separators=(",", ":")).encode(), status=status,
                        content_type="application/json")


def _object_response(request: web.Request, target: Target, obj: dict, status: int = 200,
                     warnings: list[str] | None = None) -> web.Response:
    if wants_table(request):
        columns = request.app[COLUMNS](target.rtype)
        response = _json(to_table(target.rtype, [obj], {}, columns, _include_object(request)), status)
    else:
        response = _json(obj, status)
    for warning in warnings or ():
        response.headers.add("Warning", '299 - ' + json.dumps(warning))
    return response


def _include_object(request: web.Request) -> bool:
    return request.query.get("includeObject") == "Object"


def _flag(value: str | None) -> bool:
    return value in ("true", "1", "True")


def _dry_run(request: web.Request) -> bool:
    return request.query.get("dryRun") == "All"


def _int_param(query, name: str) -> int:
    value = query.get(name, "")
    if not value:
        return 0
    if not value.isdecimal():
        raise errors.bad_request(f'invalid {name} "{value}"')
    return int(value)


def _revision(rv: str) -> int:
    if not rv.isdecimal():
        raise errors.bad_request(f'invalid resource version "{rv}"')
    return int(rv)
