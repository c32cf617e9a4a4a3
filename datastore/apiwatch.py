"""One Kubernetes API watch request at a time, in a thread of its own, until closed.

Does network I/O (reads streamed HTTP responses of a ``KubernetesDatastore``). Shared by the
watches of Calico's kinds (``datastore.kubernetes``) and of BGP password Secrets
(``datastore.secrets``). Imports no Kubernetes client, so an agent on etcd never loads one.
"""
from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator

from datastore.base import (
    AlreadyExists, Compacted, Conflict, DatastoreError, Forbidden, NotFound, Rejected, Unavailable,
)

WATCH_SECONDS = 60  # one watch request's lifetime; it is reopened from the last revision seen


class WatchThread:
    """Runs ``_run`` in a daemon thread named ``name`` from construction until ``close()``.

    A subclass sets its own attributes before calling ``__init__`` (the thread starts there),
    loops while ``_closed`` is not set, and reads its watch requests through ``_events``, so that
    ``close()`` can wake a read blocked in the request in flight."""

    def __init__(self, name: str) -> None:
        self._closed = threading.Event()
        self._resp = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self._closed.set()
        resp = self._resp
        if resp is not None:
            interrupt(resp)
        self._thread.join(timeout=5)

    def _events(self, ds, path: str, query: dict[str, str], revision: int) -> Iterator[dict]:
        """The events of one watch request on ``path`` from ``revision``, decoded, until the
        server ends it or ``close()``; an ERROR event raises as its status (410: ``Compacted``)."""
        query = query | {"watch": "1", "resourceVersion": str(revision),
                         "allowWatchBookmarks": "true", "timeoutSeconds": str(WATCH_SECONDS)}
        self._resp = ds._request("GET", path, query, stream=True)
        try:
            for line in lines(self._resp):
                if self._closed.is_set():
                    return
                event = json.loads(line)
                if event.get("type") == "ERROR":
                    obj = event.get("object") or {}
                    raise status_error("WATCH", path, obj.get("code", 500), json.dumps(obj).encode())
                yield event
        finally:
            self._resp.release_conn()
            self._resp = None


def interrupt(resp) -> None:
    """End a read blocked in another thread: closing the response alone does not wake a thread
    sitting in recv(); shutting the socket down does."""
    sock = getattr(getattr(resp, "connection", None), "sock", None)
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # already closed
    resp.close()


def lines(resp) -> Iterator[bytes]:
    """Newline-delimited JSON from a streamed response, whatever its chunking."""
    pending = b""
    for chunk in resp.stream(65536, decode_content=True):
        pending += chunk
        *complete, pending = pending.split(b"\n")
        yield from (line for line in complete if line.strip())
    if pending.strip():
        yield pending


def status_error(method: str, path: str, status: int, data: bytes | None) -> DatastoreError:
    """The API server's Status as one of our errors."""
    try:
        body = json.loads(data or b"{}")
    except ValueError:
        body = {}
    reason, message = body.get("reason", ""), body.get("message") or f"HTTP {status}"
    text = f"{method} {path}: {message}"
    if status == 404:
        return NotFound(text)
    if status == 409:
        return AlreadyExists(text) if reason == "AlreadyExists" else Conflict(text)
    if status == 410:
        return Compacted(text)
    if status in (400, 415, 422):
        return Rejected(text)
    if status in (401, 403):
        return Forbidden(text)
    return Unavailable(text)
