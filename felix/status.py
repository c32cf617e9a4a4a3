"""The agent's local status endpoint: a unix socket answering one JSON request per connection.

Request: one line ``{"get": "<topic>"}``; response: one JSON line. Topics are registered by the agent
(``status``: BGP peers, counters, sync state; ``routes``: every owned route with its reason and
whether the kernel matches). The CLI (``pycalicoctl node status|routes``) is the client.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import hostio

log = logging.getLogger(__name__)

RUN_ROOT = Path(os.environ.get("PYCALICO_RUN_ROOT", "/run/pycalico"))
Handler = Callable[[], Awaitable[Any]]


def socket_path(node: str) -> Path:
    """Where the agent for ``node`` on this host listens: one directory per node name.

    The name becomes a path component, so it must be a node name and nothing else (``n1/../n2``
    would reach another node's socket): a lowercase DNS name, as Kubernetes requires of nodes.
    """
    if len(node) > 253 or ".." in node or not re.match(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", node):
        raise ValueError(f"--node: {node!r} is not a valid node name (a lowercase DNS name: a-z, "
                         "0-9, '-', '.', at most 253 characters)")
    return RUN_ROOT / node / "status.sock"


class StatusServer:
    def __init__(self, path: Path, handlers: dict[str, Handler]) -> None:
        self._path, self._handlers = path, handlers
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        # 0600 in a 0700 directory whatever the umask; a stale socket from a killed agent goes.
        self._server = await asyncio.start_unix_server(self._serve, sock=hostio.bind_unix(self._path))

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        self._path.unlink(missing_ok=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        if not hostio.peer_is_privileged(sock):
            # The file mode already keeps others out; this holds even if someone loosens it.
            log.warning("status request refused", extra={"peer_uid": hostio.peer_credentials(sock).uid})
            writer.close()
            return
        try:
            line = await asyncio.wait_for(reader.readline(), timeout=5)
            reply = await self._answer(line)
            writer.write(json.dumps(reply, default=str).encode() + b"\n")
            await writer.drain()
        except (asyncio.TimeoutError, ConnectionError) as exc:
            log.debug("status client went away", extra={"reason": repr(exc)})
        finally:
            writer.close()

    async def _answer(self, line: bytes) -> dict[str, Any]:
        try:
            topic = json.loads(line)["get"]
        except (ValueError, KeyError, TypeError):
            return {"error": 'request must be one JSON line {"get": "<topic>"}'}
        handler = self._handlers.get(topic)
        if handler is None:
            return {"error": f"unknown topic {topic!r}; known: {sorted(self._handlers)}"}
        return {"result": await handler()}


def query(node: str, topic: str, timeout: float = 5.0, path: Path | None = None) -> Any:
    """Blocking client used by the CLI. ``path`` overrides the socket of an agent started with its
    own --run-dir. Raises ValueError for an invalid node name, FileNotFoundError or
    ConnectionRefusedError if no agent runs, PermissionError for a non-root caller, TimeoutError if
    the agent accepts but does not answer within ``timeout`` (e.g. it is stopped), ConnectionError if
    it closes without a complete answer, RuntimeError if it answers with an error."""
    path = path or socket_path(node)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)  # connect, send and every recv: a stopped agent must not hang us
        sock.connect(str(path))
        sock.sendall(json.dumps({"get": topic}).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    try:
        reply = json.loads(data)
    except ValueError:
        raise ConnectionError(f"agent for {node} closed the connection without a complete "
                              f"answer ({len(data)} bytes)") from None
    if "error" in reply:
        raise RuntimeError(f"agent for {node}: {reply['error']}")
    return reply["result"]
