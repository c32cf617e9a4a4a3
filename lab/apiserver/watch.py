"""Watch streams: newline-delimited JSON events over a chunked HTTP response, fed by an etcd watch.

Does I/O (the client's HTTP response, an etcd watch). Semantics copied from kube-apiserver:

- from ``resourceVersion`` N: every change after N (etcd watch from N+1); N compacted -> one ERROR
  event carrying a 410 ``Expired`` Status, then the stream ends (clients re-list);
- without a resourceVersion (or "0"): ADDED for every current object, then changes from that read;
- with selectors, an object that starts matching is ADDED and one that stops matching is DELETED;
- DELETED carries the last state with the deletion's revision as its resourceVersion;
- BOOKMARK (when allowed) every ``bookmark_interval`` seconds and when the timeout ends, carrying
  only kind, apiVersion and metadata.resourceVersion.

Bookmarks advance while the watched type is quiet, as kube-apiserver's do (it uses etcd progress
notifications, which the JSON gateway cannot request). A bookmark may say etcd's current revision R
only when nothing this client could see changed between the last revision it was sent (L) and R:
no live key under the prefix was modified after L, and the prefix holds as many keys at R as at L.
(A delete of a key that existed at L changes the count unless a create makes up for it, and that
create shows up as modified after L.) What that check cannot see is a key created and deleted
between L and R, which the client never knew; such late events (revision <= R) are dropped, so
events never go backwards behind a bookmark. If L is compacted the bookmark stays at L.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

from lab.apiserver import errors
from lab.apiserver.etcd import Compacted, Etcd, EtcdError, Event
from lab.apiserver.registry import ResourceType
from lab.apiserver.storage import Store, decode

log = logging.getLogger(__name__)

_LIVENESS_CHECK = 1.0  # seconds between checks that a quiet watch's client is still there


@dataclass(frozen=True)
class WatchRequest:
    rtype: ResourceType
    version: str
    namespace: str | None
    match: Callable[[dict], bool]
    resource_version: str | None
    bookmarks: bool
    timeout: float


def translate(req: WatchRequest, event: Event) -> dict | None:
    """One etcd event as the watch event this client sees, or None (not visible to it)."""
    rtype, version = req.rtype, req.version
    old = decode(rtype, version, event.prev) if event.prev else None
    was = old is not None and req.match(old)
    if event.type == "DELETE":
        if not was:
            return None
        old["metadata"]["resourceVersion"] = str(event.kv.mod_revision)
        return {"type": "DELETED", "object": old}
    new = decode(rtype, version, event.kv)
    now = req.match(new)
    if now:
        return {"type": "MODIFIED" if was else "ADDED", "object": new}
    if was:
        return {"type": "DELETED", "object": new}
    return None


def bookmark(req: WatchRequest, revision: int) -> dict:
    return {"type": "BOOKMARK", "object": {
        "kind": req.rtype.kind, "apiVersion": req.rtype.api_version(req.version),
        "metadata": {"resourceVersion": str(revision)}}}


class WatchStream:
    """One client's watch; ``await WatchStream(...).serve(http_request)``."""

    def __init__(self, store: Store, etcd: Etcd, req: WatchRequest,
                 bookmark_interval: float) -> None:
        self.store, self.etcd, self.req = store, etcd, req
        self.bookmark_interval = bookmark_interval
        self.revision = 0  # the newest revision this stream vouches for (what bookmarks say)
        self._floor = 0  # events at or below this were covered by a bookmark: drop them
        self._response: web.StreamResponse | None = None
        self.wrap: Callable[[dict], dict] | None = None  # e.g. objects as Tables for kubectl

    async def serve(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json",
                                               "Cache-Control": "no-cache, private"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        self._response = response
        self._request = request
        with contextlib.suppress(ConnectionResetError):
            await self._run()
            await response.write_eof()
        return response

    def _client_gone(self) -> bool:
        # aiohttp does not cancel a handler whose client went away: a quiet watch would keep its
        # etcd watch until the timeout (30 min by default) unless we look.
        transport = self._request.transport
        return transport is None or transport.is_closing()

    async def _send(self, event: dict) -> None:
        if self.wrap is not None and event["type"] in ("ADDED", "MODIFIED", "DELETED"):
            event = {"type": event["type"], "object": self.wrap(event["object"])}
        await self._response.write(json.dumps(event, separators=(",", ":")).encode() + b"\n")

    async def _run(self) -> None:
        deadline = time.monotonic() + self.req.timeout
        try:
            start = await self._initial_state()
        except errors.ApiError as exc:
            await self._send({"type": "ERROR", "object": exc.status()})
            return
        self.revision = start
        queue: asyncio.Queue = asyncio.Queue()
        pump = asyncio.create_task(self._pump(start, queue))
        try:
            await self._forward(queue, deadline)
        finally:
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pump

    async def _initial_state(self) -> int:
        """The revision to watch after; without a resourceVersion, ADDED for what exists now."""
        rv = self.req.resource_version
        if rv and rv != "0":
            if not rv.isdecimal():
                raise errors.bad_request(f'invalid resource version "{rv}"')
            return int(rv)
        listing = await self.store.list(self.req.rtype, self.req.version, self.req.namespace,
                                        match=self.req.match)
        for obj in listing["items"]:
            await self._send({"type": "ADDED", "object": obj})
        return int(listing["metadata"]["resourceVersion"])

    async def _pump(self, start: int, queue: asyncio.Queue) -> None:
        """etcd batches into ``queue``; the failure (or end) is queued last as an exception."""
        try:
            async for batch in self.etcd.watch(self.req.rtype.prefix(self.req.namespace), start + 1):
                await queue.put(batch)
        except (EtcdError, asyncio.TimeoutError) as exc:
            await queue.put(exc)

    async def _forward(self, queue: asyncio.Queue, deadline: float) -> None:
        next_bookmark = time.monotonic() + self.bookmark_interval
        while True:
            now = time.monotonic()
            if now >= deadline:
                if self.req.bookmarks:
                    await self._advance()
                    await self._send(bookmark(self.req, self.revision))
                return
            if self.req.bookmarks and now >= next_bookmark:
                await self._advance()
                await self._send(bookmark(self.req, self.revision))
                next_bookmark = time.monotonic() + self.bookmark_interval
            wake = min(deadline, now + _LIVENESS_CHECK,
                       next_bookmark if self.req.bookmarks else deadline)
            try:
                item = await asyncio.wait_for(queue.get(), max(0.0, wake - now))
            except asyncio.TimeoutError:
                if self._client_gone():
                    return
                continue
            if isinstance(item, Exception):
                await self._stream_failed(item)
                return
            for event in item:
                if event.kv.mod_revision <= self._floor:
                    continue  # created and deleted under a bookmark the client already has
                out = translate(self.req, event)
                self.revision = max(self.revision, event.kv.mod_revision)
                if out is not None:
                    await self._send(out)

    async def _advance(self) -> None:
        """Move ``revision`` to etcd's current one if nothing visible changed (docstring)."""
        prefix = self.req.rtype.prefix(self.req.namespace)
        try:
            current = await self.etcd.revision()
            if current <= self.revision:
                return
            if await self.etcd.newest_mod_revision(prefix, revision=current) > self.revision:
                return
            before = await self.etcd.count(prefix, revision=self.revision)
            if before != await self.etcd.count(prefix, revision=current):
                return
        except EtcdError:
            return  # compacted or unavailable: keep the revision we can vouch for
        self.revision = self._floor = current

    async def _stream_failed(self, exc: Exception) -> None:
        if isinstance(exc, Compacted):
            status = errors.expired(exc.requested - 1, exc.compacted).status()
            await self._send({"type": "ERROR", "object": status})
            return
        # Any other etcd failure ends the stream; clients re-watch from their last revision.
        log.warning("watch ended by etcd failure: %s", exc, extra={"reason": str(exc)})
