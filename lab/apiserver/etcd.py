"""An asyncio client for etcd's v3 JSON gateway (``/v3/kv/*``, ``/v3/watch``), over aiohttp.

Does I/O (HTTP to etcd). Why the gateway and not pyetcd: the API server is an asyncio program with
one long-lived watch per client watch; the gateway gives us non-blocking calls, a watch that ends
when we close its HTTP response (pyetcd's watch iterator cannot be stopped, and one failed call
closes pyetcd's shared watch stream for every watcher), and compaction reported explicitly on the
watch (``canceled`` + ``compact_revision``).

Gateway facts (checked against Debian's etcd 3.4): keys and values are base64; int64 fields are JSON
strings; fields at their default value are left out (``succeeded`` false, ``type`` PUT, a revision 0);
watch responses are newline-delimited JSON objects ``{"result": WatchResponse}``; a range read at a
compacted revision answers ``{"code": 11, "error": "... compacted"}``.
"""
from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp


class EtcdError(Exception):
    """etcd refused or failed a request (not a failed compare: that is a normal answer)."""


class Compacted(EtcdError):
    """The revision asked for is older than etcd's compaction point."""

    def __init__(self, requested: int, compacted: int) -> None:
        super().__init__(f"revision {requested} is compacted (oldest kept {compacted})")
        self.requested = requested
        self.compacted = compacted


@dataclass(frozen=True)
class KV:
    key: str
    value: bytes
    mod_revision: int
    create_revision: int


@dataclass(frozen=True)
class Event:
    """One etcd watch event; ``prev`` is the value before a DELETE (asked with prev_kv)."""
    type: str  # "PUT" | "DELETE"
    kv: KV
    prev: KV | None


def _b64(text: str | bytes) -> str:
    data = text.encode() if isinstance(text, str) else text
    return base64.b64encode(data).decode()


def prefix_end(prefix: str) -> str:
    """The range_end that selects every key starting with ``prefix`` (ASCII prefixes only)."""
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


def _kv(raw: dict) -> KV:
    return KV(
        key=base64.b64decode(raw["key"]).decode(),
        value=base64.b64decode(raw.get("value", "")),
        mod_revision=int(raw.get("mod_revision", 0)),
        create_revision=int(raw.get("create_revision", 0)),
    )


class Etcd:
    """``Etcd("http://127.0.0.1:2379")``; call ``close()`` when done. One endpoint (a lab etcd)."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint.split(",")[0].rstrip("/")
        self._client: aiohttp.ClientSession | None = None  # made inside the running loop

    @property
    def _session(self) -> aiohttp.ClientSession:
        if self._client is None:
            self._client = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=None, connect=5),
                connector=aiohttp.TCPConnector(limit=0))  # one connection per open watch
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()

    async def _call(self, path: str, body: dict, timeout: float = 10.0) -> dict:
        try:
            async with self._session.post(f"{self.endpoint}{path}", json=body,
                                          timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
                answer = await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise EtcdError(f"etcd {path}: {type(exc).__name__}: {exc}") from exc
        if "error" in answer or "code" in answer:
            message = answer.get("message") or answer.get("error", "")
            if "compacted" in message:
                raise Compacted(int(body.get("revision", 0)), -1)
            raise EtcdError(f"etcd {path}: {message}")
        return answer

    async def revision(self) -> int:
        """The store's current revision."""
        answer = await self._call("/v3/kv/range", {"key": _b64("\0"), "count_only": True})
        return int(answer["header"]["revision"])

    async def get(self, key: str) -> KV | None:
        answer = await self._call("/v3/kv/range", {"key": _b64(key)})
        kvs = answer.get("kvs", [])
        return _kv(kvs[0]) if kvs else None

    async def range(self, start: str, end: str, *, revision: int = 0,
                    limit: int = 0) -> tuple[list[KV], int, bool]:
        """Keys in [start, end) at ``revision`` (0 = now): (kvs, read revision, more left)."""
        body = {"key": _b64(start), "range_end": _b64(end), "limit": str(limit)}
        if revision:
            body["revision"] = str(revision)
        answer = await self._call("/v3/kv/range", body)
        kvs = [_kv(raw) for raw in answer.get("kvs", [])]
        return kvs, int(answer["header"]["revision"]), bool(answer.get("more"))

    async def count(self, prefix: str, *, revision: int = 0) -> int:
        """How many keys under ``prefix`` at ``revision`` (0 = now)."""
        body = {"key": _b64(prefix), "range_end": _b64(prefix_end(prefix)), "count_only": True}
        if revision:
            body["revision"] = str(revision)
        answer = await self._call("/v3/kv/range", body)
        return int(answer.get("count", 0))

    async def newest_mod_revision(self, prefix: str, *, revision: int = 0) -> int:
        """The highest mod_revision of a key under ``prefix`` at ``revision`` (0 if none).

        (Not ``count_only`` with ``min_mod_revision``: etcd counts before applying that filter.)
        """
        body = {"key": _b64(prefix), "range_end": _b64(prefix_end(prefix)), "limit": "1",
                "sort_order": "DESCEND", "sort_target": "MOD", "keys_only": True}
        if revision:
            body["revision"] = str(revision)
        answer = await self._call("/v3/kv/range", body)
        kvs = answer.get("kvs", [])
        return int(kvs[0].get("mod_revision", 0)) if kvs else 0

    async def create(self, key: str, value: bytes) -> tuple[bool, int]:
        """Put ``key`` only if it does not exist: (created, revision of the write or of the read)."""
        compare = {"key": _b64(key), "target": "VERSION", "result": "EQUAL", "version": "0"}
        answer = await self._txn(compare, {"request_put": {"key": _b64(key), "value": _b64(value)}})
        return bool(answer.get("succeeded")), int(answer["header"]["revision"])

    async def put_if(self, key: str, value: bytes, mod_revision: int) -> tuple[bool, int, KV | None]:
        """Put if the key's mod_revision is ``mod_revision`` (> 0): (ok, revision, current kv)."""
        if mod_revision <= 0:
            raise AssertionError("Bug: mod_revision 0 would match a missing key")
        compare = {"key": _b64(key), "target": "MOD", "result": "EQUAL",
                   "mod_revision": str(mod_revision)}
        return await self._cas(compare, {"request_put": {"key": _b64(key), "value": _b64(value)}})

    async def delete_if(self, key: str, mod_revision: int) -> tuple[bool, int, KV | None]:
        """Delete if the key's mod_revision is ``mod_revision`` (> 0): (ok, revision, current kv)."""
        if mod_revision <= 0:
            raise AssertionError("Bug: mod_revision 0 would match a missing key")
        compare = {"key": _b64(key), "target": "MOD", "result": "EQUAL",
                   "mod_revision": str(mod_revision)}
        return await self._cas(compare, {"request_delete_range": {"key": _b64(key)}})

    async def _cas(self, compare: dict, op: dict) -> tuple[bool, int, KV | None]:
        answer = await self._txn(compare, op)
        ok = bool(answer.get("succeeded"))
        current = None
        if not ok:
            kvs = answer["responses"][0].get("response_range", {}).get("kvs", [])
            current = _kv(kvs[0]) if kvs else None
        return ok, int(answer["header"]["revision"]), current

    async def _txn(self, compare: dict, success: dict) -> dict:
        body = {"compare": [compare], "success": [success],
                "failure": [{"request_range": {"key": compare["key"]}}]}
        return await self._call("/v3/kv/txn", body)

    async def delete_prefix(self, prefix: str) -> None:
        """Delete every key under ``prefix`` (a deleted CRD takes its objects with it)."""
        await self._call("/v3/kv/deleterange", {"key": _b64(prefix),
                                                "range_end": _b64(prefix_end(prefix))})

    async def compact(self, revision: int) -> None:
        await self._call("/v3/kv/compaction", {"revision": str(revision), "physical": True})

    async def watch(self, prefix: str, start_revision: int) -> AsyncIterator[list[Event]]:
        """Batches of events under ``prefix`` from ``start_revision``; Compacted if too old.

        The etcd watch ends when the caller stops iterating (the HTTP response is closed).
        """
        body = {"create_request": {"key": _b64(prefix), "range_end": _b64(prefix_end(prefix)),
                                   "start_revision": str(start_revision), "prev_kv": True}}
        try:
            async with self._session.post(f"{self.endpoint}/v3/watch", json=body) as resp:
                async for line in resp.content:
                    if line.strip():
                        yield _watch_batch(json.loads(line), start_revision)
        except (aiohttp.ClientError, ValueError) as exc:
            raise EtcdError(f"etcd watch {prefix}: {type(exc).__name__}: {exc}") from exc
        raise EtcdError(f"etcd watch {prefix}: stream ended")


def _watch_batch(message: dict, start_revision: int) -> list[Event]:
    result = message.get("result")
    if result is None:
        raise EtcdError(f"etcd watch: {message.get('error', message)}")
    if result.get("compact_revision"):
        raise Compacted(start_revision, int(result["compact_revision"]))
    if result.get("canceled"):
        raise EtcdError(f"etcd watch canceled: {result.get('cancel_reason', '')}")
    events = []
    for raw in result.get("events", []):
        prev = raw.get("prev_kv")
        events.append(Event(raw.get("type", "PUT"), _kv(raw["kv"]), _kv(prev) if prev else None))
    return events


class DryRunEtcd:
    """Reads from ``etcd``; writes only say whether they would succeed (``dryRun=All``).

    A dry-run create answers revision 0 (the object gets no resourceVersion, as from the real
    server); a dry-run update keeps the key's current mod_revision.
    """

    def __init__(self, etcd: Etcd) -> None:
        self._etcd = etcd

    def __getattr__(self, name: str):
        return getattr(self._etcd, name)  # get, range, revision, count, watch...

    async def create(self, key: str, value: bytes) -> tuple[bool, int]:
        return await self._etcd.get(key) is None, 0

    async def put_if(self, key: str, value: bytes, mod_revision: int) -> tuple[bool, int, KV | None]:
        return await self._would(key, mod_revision)

    async def delete_if(self, key: str, mod_revision: int) -> tuple[bool, int, KV | None]:
        return await self._would(key, mod_revision)

    async def _would(self, key: str, mod_revision: int) -> tuple[bool, int, KV | None]:
        current = await self._etcd.get(key)
        if current is not None and current.mod_revision == mod_revision:
            return True, mod_revision, None
        return False, 0, current
