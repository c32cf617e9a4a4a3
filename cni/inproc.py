"""The CNI handlers run inside the agent: IPAM in-process, one datastore connection reused.

``cni.plugin`` reaches its IPAM through ``cni.delegate.delegate`` (exec ``pycalico-ipam`` from
CNI_PATH) and its datastore through ``cni.common.open_datastore`` (a new connection per call), both
bound as module globals of ``cni.plugin`` / ``cni.ipam_plugin``. ``install()`` rebinds those globals
to dispatchers that do exactly what they did before unless the calling thread is serving a request
for the agent (``serving(...)``); then IPAM is ``cni.ipam_plugin``'s handlers called directly
(serialised per node by a lock in the agent, and still under the node's flock, so an exec'd plugin
of the old kind cannot race it) and the datastore is the agent's. Once ``cni.plugin`` takes these
two as parameters (see the server's docstring) this module shrinks to the in-process delegate.
"""
from __future__ import annotations

import contextvars
import dataclasses
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, nullcontext
from typing import Any

import cni.common
import cni.delegate
import cni.ipam_plugin
import cni.plugin
from cni.config import Invocation, NetConf
from cni.runtime import classify
from datastore import Datastore

# Our own IPAM plugin's names (the lab's, and the name Calico's conflists use); any other
# ipam.type is still exec'd from CNI_PATH, as the spec's delegation says.
IN_PROCESS_IPAM = frozenset({"pycalico-ipam", "calico-ipam"})


@dataclasses.dataclass(frozen=True)
class Serving:
    """What a request served by the agent uses instead of new processes and connections."""

    datastore_for: Callable[[NetConf], Datastore]
    node_lock: Callable[[str], threading.Lock]


_SERVING: contextvars.ContextVar[Serving | None] = contextvars.ContextVar("cni_serving",
                                                                            default=None)
_ORIGINAL_DELEGATE = cni.delegate.delegate
_ORIGINAL_OPEN = cni.common.open_datastore
_install_lock = threading.Lock()


@contextmanager
def serving(ctx: Serving) -> Iterator[None]:
    """Within this block (this thread only), the handlers use ``ctx``."""
    token = _SERVING.set(ctx)
    try:
        yield
    finally:
        _SERVING.reset(token)


def install() -> None:
    """Point ``cni.plugin`` and ``cni.ipam_plugin`` at the dispatchers (idempotent)."""
    with _install_lock:
        cni.plugin.delegate = delegate
        cni.plugin.open_datastore = open_datastore
        cni.ipam_plugin.open_datastore = open_datastore


def delegate(command: str, inv: Invocation, conf: NetConf,
             env: Mapping[str, str] | None = None) -> dict[str, Any] | None:
    """``cni.delegate.delegate``'s contract: the IPAM result (ADD), None (DEL/CHECK), or CNIError."""
    ctx = _SERVING.get()
    if ctx is None or conf.ipam_type not in IN_PROCESS_IPAM:
        return _ORIGINAL_DELEGATE(command, inv, conf, env)
    return delegate_in_process(ctx, command, inv, conf, env)


def delegate_in_process(ctx: Serving, command: str, inv: Invocation, conf: NetConf,
                        env: Mapping[str, str] | None = None) -> dict[str, Any] | None:
    """What exec'ing ``pycalico-ipam`` does, without the process: same handlers, same errors."""
    handler = {"ADD": cni.ipam_plugin.cmd_add, "DEL": cni.ipam_plugin.cmd_del,
               "CHECK": cni.ipam_plugin.cmd_check}[command]
    environ = {**(inv.environ if env is None else env), "CNI_COMMAND": command}
    inv = dataclasses.replace(inv, command=command, environ=environ)
    # Writers queue on a lock here rather than polling the flock every 10 ms; CHECK only reads.
    lock = ctx.node_lock(conf.nodename) if command != "CHECK" else nullcontext()
    install()  # cni.ipam_plugin opens its datastore through the dispatcher: ctx's connection
    try:
        with lock, serving(ctx):
            result = handler(inv, conf)
    except Exception as exc:  # noqa: BLE001 — the exec'd plugin printed exactly this classification
        raise classify(exc) from exc
    return result if command == "ADD" else None


@contextmanager
def open_datastore(conf: NetConf) -> Iterator[Datastore]:
    """``cni.common.open_datastore``, or the agent's connection (not closed here) when serving."""
    ctx = _SERVING.get()
    if ctx is None:
        with _ORIGINAL_OPEN(conf) as ds:
            yield ds
        return
    yield ctx.datastore_for(conf)
