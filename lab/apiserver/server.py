"""The aiohttp application: routing, Status errors, CRD reloads, the namespaces that always exist.

Does I/O (HTTP, etcd). ``build_app(etcd_endpoint)`` returns an ``aiohttp.web.Application``;
``python -m lab.apiserver`` serves it.
"""
from __future__ import annotations

import asyncio
import json
import logging

from aiohttp import web

from lab.apiserver import discovery, errors, openapi
from lab.apiserver.etcd import Etcd, EtcdError
from lab.apiserver.handlers import COLUMNS, ResourceHandlers, parse_path
from lab.apiserver.registry import CRD_GROUP, Registry, ResourceType
from lab.apiserver.storage import Store

log = logging.getLogger(__name__)

SEEDED_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
_CRD_PREFIX = "/registry/apiextensions.k8s.io/customresourcedefinitions/"


class AppState:
    """What every handler shares: etcd, the store, the served types."""

    def __init__(self, etcd_endpoint: str, bookmark_interval: float) -> None:
        self.etcd = Etcd(etcd_endpoint)
        self.registry = Registry()
        self.store = Store(self.etcd, on_write=self._written)
        self.bookmark_interval = bookmark_interval
        self._columns: dict[tuple[str, str], list[dict]] = {}
        self._schemas: dict[tuple[str, str, str], dict] = {}

    async def _written(self, rtype: ResourceType) -> None:
        if rtype.group == CRD_GROUP:
            await self.reload_crds()

    async def reload_crds(self) -> None:
        kvs, _, _ = await self.etcd.range(_CRD_PREFIX, _CRD_PREFIX[:-1] + "0")
        crds = [json.loads(kv.value) for kv in kvs]
        self.registry.set_crds(crds)
        self._columns = {}
        self._schemas = {}
        for crd in crds:
            spec = crd.get("spec", {})
            for version in spec.get("versions", []):
                schema = (version.get("schema") or {}).get("openAPIV3Schema")
                if isinstance(schema, dict):
                    key = (spec.get("group"), spec.get("names", {}).get("plural"), version.get("name"))
                    self._schemas[key] = schema
                columns = version.get("additionalPrinterColumns")
                if columns and version.get("storage"):
                    self._columns[(spec.get("group"), spec.get("names", {}).get("plural"))] = columns

    def schema_for(self, rtype: ResourceType, version: str) -> dict | None:
        """The CRD's openAPIV3Schema for a custom resource version; None for built-ins."""
        return self._schemas.get((rtype.group, rtype.plural, version))

    def crd_columns(self, rtype: ResourceType) -> list[dict] | None:
        return self._columns.get((rtype.group, rtype.plural))

    async def drop_crd_objects(self, crd: dict) -> None:
        """A deleted CRD takes its custom resources with it, as in kube-apiserver."""
        spec = crd.get("spec", {})
        group, plural = spec.get("group"), spec.get("names", {}).get("plural")
        if group and plural:
            await self.etcd.delete_prefix(f"/registry/{group}/{plural}/")

    async def drop_namespace_objects(self, namespace: str) -> None:
        """A deleted namespace takes its objects along (kube-apiserver does it over time, while
        the namespace is Terminating; here it happens at once)."""
        for rtype in self.registry.types():
            if rtype.namespaced:
                await self.etcd.delete_prefix(rtype.prefix(namespace))

    async def seed(self) -> None:
        namespaces = self.registry.lookup("", "v1", "namespaces")
        for name in SEEDED_NAMESPACES:
            body = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
            try:
                await self.store.create(namespaces, "v1", None, body)
            except errors.ApiError as exc:
                if exc.code != 409:
                    raise


def _json(body: dict, status: int = 200) -> web.Response:
    return web.Response(body=json.dumps(body).encode(), status=status,
                        content_type="application/json")


@web.middleware
async def status_errors(request: web.Request, handler):
    """Every failure leaves as a Status body, like the real server's."""
    try:
        return await handler(request)
    except errors.ApiError as exc:
        return _json(exc.status(), exc.code)
    except EtcdError as exc:
        return _json(errors.unavailable(f"storage unavailable: {exc}").status(), 503)


class Router:
    def __init__(self, state: AppState) -> None:
        self.state = state
        self.resources = ResourceHandlers(state)

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        path = request.path.rstrip("/") or "/"
        if path in ("/healthz", "/readyz", "/livez"):
            return web.Response(text="ok")
        if path == "/version":
            return _json(discovery.VERSION)
        if path == "/api":
            return _json(discovery.api_versions(request.host))
        if path == "/apis":
            return _json(discovery.api_group_list(self.state.registry))
        if path == "/openapi/v2":
            # An empty protobuf Document: kubectl checks v1 List documents against OpenAPI v2
            # only, and a document without definitions makes it skip client-side validation.
            return web.Response(body=b"", content_type=openapi.V2_PROTOBUF)
        if path == "/openapi/v3":
            return _json(openapi.root(self.state.registry))
        if path.startswith("/openapi/v3/"):
            body = openapi.document(self.state.registry, path[len("/openapi/v3/"):])
            if body is None:
                raise errors.path_not_found(path)
            return _json(body)
        parts = [p for p in path.split("/") if p]
        if parts and parts[0] in ("api", "apis"):
            return await self._api(request, parts)
        raise errors.path_not_found(path)

    async def _api(self, request: web.Request, parts: list[str]) -> web.StreamResponse:
        rest = parts[1:]
        if parts[0] == "api" and (not rest or rest[0] != "v1"):
            raise errors.path_not_found(request.path)
        if parts[0] == "apis" and len(rest) == 1:
            return await self._group(request, rest[0])
        group, version = ("", "v1") if parts[0] == "api" else (rest[0], rest[1])
        if len(rest) == (1 if parts[0] == "api" else 2):
            return await self._resource_list(request, group, version)
        target = parse_path(self.state.registry, rest)
        if target is None:
            await self.state.reload_crds()  # a CRD another server instance just stored
            target = parse_path(self.state.registry, rest)
        if target is None:
            raise errors.path_not_found(request.path)
        return await self.resources.handle(request, target)

    async def _group(self, request: web.Request, group: str) -> web.Response:
        body = discovery.api_group(self.state.registry, group)
        if body is None:
            raise errors.path_not_found(request.path)
        return _json(body)

    async def _resource_list(self, request: web.Request, group: str, version: str) -> web.Response:
        body = discovery.api_resource_list(self.state.registry, group, version)
        if body is None:
            raise errors.path_not_found(request.path)
        return _json(body)


def build_app(etcd_endpoint: str, bookmark_interval: float = 5.0,
              etcd_wait: float = 30.0) -> web.Application:
    state = AppState(etcd_endpoint, bookmark_interval)
    app = web.Application(middlewares=[status_errors], client_max_size=3 * 1024 * 1024)
    router = Router(state)
    app[COLUMNS] = state.crd_columns
    app.router.add_route("*", "/{tail:.*}", router.dispatch)

    async def startup(_app: web.Application) -> None:
        # The lab starts etcd and the API server together: wait for etcd rather than exit.
        deadline = asyncio.get_running_loop().time() + etcd_wait
        while True:
            try:
                await state.reload_crds()
                break
            except EtcdError as exc:
                if asyncio.get_running_loop().time() > deadline:
                    raise
                log.warning("waiting for etcd: %s", exc, extra={"reason": str(exc)})
                await asyncio.sleep(0.5)
        await state.seed()

    async def cleanup(_app: web.Application) -> None:
        await state.etcd.close()

    app.on_startup.append(startup)
    app.on_cleanup.append(cleanup)
    return app
