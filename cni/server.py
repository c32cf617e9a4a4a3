"""The agent's CNI socket: runs the thin plugin's requests with the real handlers, warm.

``CNIServer(path, datastore, node_name)``; ``await start()`` / ``await stop()`` on the agent's loop.
One request per connection (framing in ``cni.thin``): the caller's credentials are checked first
(``SO_PEERCRED``: root or the agent's own uid; the socket is also 0600 in a 0700 directory), then
``cni.runtime.run`` with ``cni.plugin``'s ADD/DEL/CHECK runs in a worker thread (pyroute2 and the
datastore client are blocking), and the exit status and stdout go back unchanged.

IPAM runs in-process (``cni.inproc``) under a per-node lock: the agent is the node's single IPAM
writer, and the handlers still take ``cni.ipam_plugin``'s node flock, so an old-style exec'd plugin
on the same node cannot race it. ``datastore`` is the connection the handlers use for every request:
a ``Datastore`` (shared, e.g. the agent's own; the etcd backend is thread-safe; not closed here), a
zero-argument factory (called once, on the first request; closed at ``stop``), or None (one
connection per distinct netconf datastore, opened on first use and closed at ``stop``).

The seam this uses without editing ``cni/plugin.py``: ``cni.inproc.install()`` rebinds
``cni.plugin.delegate`` / ``open_datastore`` (and ``cni.ipam_plugin.open_datastore``) to
dispatchers that behave as before outside a served request. The explicit form would be a
``Services(delegate, open_datastore)`` argument (default: exec and connect) to ``cmd_add`` /
``cmd_del`` / ``cmd_check`` / ``release_address``, with ``cni.ipam_plugin`` taking the datastore.
"""
from __future__ import annotations

import asyncio
import contextlib
import io
import ipaddress
import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from contextlib import ExitStack, closing
from pathlib import Path

import hostio
from cni import inproc, plugin, runtime, thin
from cni.common import open_datastore
from cni.config import Invocation, NetConf
from cni.errors import DECODE_FAILURE, INVALID_CONFIG, IO_FAILURE, UNEXPECTED, CNIError
from datastore import Datastore

log = logging.getLogger(__name__)

READ_TIMEOUT = 10.0  # a client that connects and sends nothing must not hold a connection
MAX_WORKERS = 4

DatastoreSource = Datastore | Callable[[], Datastore] | None


def socket_path(run_root: Path, node: str) -> Path:
    """``<run root>/<node>/cni.sock``, where ``cni.thin`` looks (felix.status.socket_path's sibling)."""
    return run_root / node / "cni.sock"


class CNIServer:
    def __init__(self, path: Path, datastore: DatastoreSource, node_name: str | None = None, *,
                 executor: Executor | None = None,
                 observe: Callable[[str, float, bool], None] | None = None,
                 on_added: Callable[[str, ipaddress.IPv4Address], None] | None = None) -> None:
        """``node_name``: if given, requests whose netconf names another node are refused.
        ``executor``: where the blocking handlers run (default: a pool of ``MAX_WORKERS`` threads,
        shut down at ``stop``); the process's network namespace must be the node's.
        ``observe(command, seconds, ok)``: called after every request (metrics).
        ``on_added(host_ifname, address)``: called (in the worker thread) after a successful ADD,
        before kubelet hears of it: the agent writes the pod's ``/32 dev cali*`` route there, as
        Calico's CNI plugin does, so the pod is reachable when its containers start rather than
        when its WorkloadEndpoint has gone round the datastore. A failure there is logged, not an
        ADD failure: the agent writes the route from the WorkloadEndpoint anyway."""
        self._path, self._node = Path(path), node_name
        self._source = datastore
        self._shared = datastore if isinstance(datastore, Datastore) else None
        self._owned: dict[tuple, Datastore] = {}
        self._closing = ExitStack()  # the connections we opened, closed at stop
        self._ds_lock = threading.Lock()
        self._node_locks: dict[str, threading.Lock] = {}
        self._given_executor = executor
        self._executor: Executor | None = None
        self._server: asyncio.AbstractServer | None = None
        self._handlers = {cmd: self._checked(fn) for cmd, fn in (
            ("ADD", plugin.cmd_add), ("DEL", plugin.cmd_del), ("CHECK", plugin.cmd_check))}
        self.requests = 0  # served (all outcomes); for metrics and tests
        self._observe = observe
        self._on_added = on_added
        inproc.install()

    async def start(self) -> None:
        self._executor = self._given_executor or ThreadPoolExecutor(MAX_WORKERS,
                                                                    thread_name_prefix="cni")
        self._server = await asyncio.start_unix_server(self._serve, sock=hostio.bind_unix(self._path))

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        self._path.unlink(missing_ok=True)
        if self._executor is not None and self._given_executor is None:
            # Waits for requests in flight: their veths and IPAM records complete or roll back.
            await asyncio.get_running_loop().run_in_executor(None, self._executor.shutdown)
        self._executor = None
        with self._ds_lock:
            self._owned.clear()
            self._closing.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            rc, stdout = await self._answer(reader, writer.get_extra_info("socket"))
            writer.write(thin.encode_frame({"rc": rc, "stdout": stdout}, thin.MAX_REPLY))
            await writer.drain()
        except (asyncio.TimeoutError, ConnectionError, asyncio.IncompleteReadError) as exc:
            log.info("cni client went away", extra={"reason": repr(exc)})
        except Exception as exc:  # noqa: BLE001 — a bug here must not kill the loop's other work
            log.exception("bug: cni request failed outside the handlers")
            with contextlib.suppress(ConnectionError):
                writer.write(thin.encode_frame({"rc": 1, "stdout": _error(
                    UNEXPECTED, f"unexpected {type(exc).__name__} in the agent", str(exc))},
                    thin.MAX_REPLY))
                await writer.drain()
        finally:
            writer.close()

    async def _answer(self, reader: asyncio.StreamReader, sock) -> tuple[int, str]:
        if not hostio.peer_is_privileged(sock):
            # The file mode already keeps others out; this holds even if someone loosens it.
            uid = hostio.peer_credentials(sock).uid
            log.warning("cni request refused", extra={"peer_uid": uid})
            return 1, _error(IO_FAILURE, "permission denied: the pycalico agent serves CNI requests "
                             "from root only", f"caller uid {uid}")
        try:
            header = await asyncio.wait_for(reader.readexactly(4), READ_TIMEOUT)
            length = thin.frame_length(header, thin.MAX_REQUEST)
            body = await asyncio.wait_for(reader.readexactly(length), READ_TIMEOUT)
            env, stdin = thin.parse_request(thin.decode_body(body))
        except thin.ProtocolError as exc:
            return 1, _error(DECODE_FAILURE, "malformed CNI request", str(exc))
        self.requests += 1
        return await asyncio.get_running_loop().run_in_executor(
            self._executor, self.handle, env, stdin)

    def handle(self, env: dict[str, str], stdin: bytes) -> tuple[int, str]:
        """One CNI invocation (blocking): exit status and stdout, as the plugin process would give."""
        started = time.monotonic()
        env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), **env}
        out = io.StringIO()
        ctx = inproc.Serving(datastore_for=self._datastore_for, node_lock=self._node_lock)
        with inproc.serving(ctx):
            rc = runtime.run(self._handlers, stdin=stdin, env=env, stdout=out,
                             configure_logging=False)
        seconds = time.monotonic() - started
        log.debug("cni request served", extra={"command": env.get("CNI_COMMAND"), "rc": rc,
                                               "ms": round(seconds * 1000, 1)})
        if self._observe is not None:
            self._observe(env.get("CNI_COMMAND", "?"), seconds, rc == 0)
        return rc, out.getvalue()

    def _checked(self, handler):
        def run(inv: Invocation, conf: NetConf):
            if self._node is not None and conf.nodename != self._node:
                raise CNIError(INVALID_CONFIG, f"nodename {conf.nodename!r}: this agent serves "
                               f"node {self._node!r}")
            result = handler(inv, conf)
            if self._on_added is not None and inv.command == "ADD":
                self._tell_added(result)
            return result
        return run

    def _tell_added(self, result: dict) -> None:
        try:
            host = result["interfaces"][0]["name"]
            address = ipaddress.ip_interface(result["ips"][0]["address"]).ip
            self._on_added(host, address)
        except Exception:  # noqa: BLE001 — the route also follows from the WorkloadEndpoint
            log.warning("cni: writing the pod route at ADD failed; the agent writes it from the "
                        "workload endpoint", exc_info=True)

    def _node_lock(self, node: str) -> threading.Lock:
        with self._ds_lock:
            return self._node_locks.setdefault(node, threading.Lock())

    def _datastore_for(self, conf: NetConf) -> Datastore:
        if self._shared is not None:
            return self._shared
        key = () if self._source is not None else (
            conf.datastore_type, conf.etcd_endpoints, conf.kubeconfig)
        with self._ds_lock:  # connecting is slow but rare; holding the lock keeps it to one
            if key not in self._owned:
                self._owned[key] = self._closing.enter_context(
                    closing(self._source()) if self._source is not None else open_datastore(conf))
            return self._owned[key]


def _error(code: int, msg: str, details: str) -> str:
    return thin.error_json("1.0.0", code, msg, details)
