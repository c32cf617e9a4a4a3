"""Namespace plumbing for the lab: create/delete namespaces, veths into a bridge, run code inside.

Does I/O (iproute2 commands, fork). Everything here acts only on namespaces the lab created.
"""
from __future__ import annotations

import os
import pickle
import secrets
import signal
import subprocess
from collections.abc import Callable
from typing import Any, TypeVar

import hostio

T = TypeVar("T")


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(args, check=check, capture_output=True, text=True)


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return sh("ip", *args, check=check)


def list_netns() -> list[str]:
    return [line.split()[0] for line in ip("netns", "list").stdout.splitlines() if line.strip()]


def add_netns(name: str) -> None:
    ip("netns", "add", name)
    ip("-n", name, "link", "set", "lo", "up")


def add_bridge(ns: str, name: str, address: str | None = None) -> None:
    """A Linux bridge ``name`` in ``ns`` (an L2 segment), up, with ``address`` (CIDR) if given."""
    ip("-n", ns, "link", "add", name, "type", "bridge")
    if address is not None:
        ip("-n", ns, "addr", "add", address, "dev", name)
    ip("-n", ns, "link", "set", name, "up")


def port_into_bridge(ns: str, bridge: str, ns_b: str, name_b: str, port: str) -> None:
    """A veth from ``ns_b`` (end ``name_b``, left down) to bridge ``bridge`` in ``ns`` (end
    ``port``, enslaved and up)."""
    veth_into(ns_b, name_b, ns, port)
    ip("-n", ns, "link", "set", port, "master", bridge, "up")


def sysctl(ns: str, key: str, value: str) -> None:
    """Set ``key`` (dotted, e.g. ``net.ipv4.ip_forward``) inside ``ns``: /proc/sys is per network
    namespace for net.*, so this needs the namespace's view of it."""
    sh("ip", "netns", "exec", ns, "sysctl", "-q", "-w", f"{key}={value}")


def netns_pids(name: str) -> list[int]:
    return [int(p) for p in ip("netns", "pids", name, check=False).stdout.split()]


def kill_and_delete_netns(name: str) -> list[int]:
    """SIGKILL every process inside ``name`` (it is the lab's own namespace), then delete it."""
    killed = []
    for pid in netns_pids(name):
        try:
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        except ProcessLookupError:
            pass
    ip("netns", "delete", name, check=False)
    return killed


def veth_into(ns_a: str, name_a: str, ns_b: str, name_b: str) -> None:
    """A veth pair with one end in each namespace. Created under random names in the root
    namespace (names there must not collide), renamed once moved."""
    tmp_a, tmp_b = f"lb{secrets.token_hex(6)}", f"lb{secrets.token_hex(6)}"
    ip("link", "add", tmp_a, "type", "veth", "peer", "name", tmp_b)
    try:
        ip("link", "set", tmp_a, "netns", ns_a)
        ip("link", "set", tmp_b, "netns", ns_b)
    except subprocess.CalledProcessError:
        ip("link", "delete", tmp_a, check=False)
        raise
    ip("-n", ns_a, "link", "set", tmp_a, "name", name_a)
    ip("-n", ns_b, "link", "set", tmp_b, "name", name_b)


def _setns(path: str) -> None:
    """Join the network namespace at ``path`` (in the forked child of in_netns)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        hostio.setns(fd, path)
    finally:
        os.close(fd)


def in_netns(name: str, fn: Callable[..., T], *args: Any) -> T:
    """Run ``fn(*args)`` in a forked child that joined namespace ``name``; return its result.

    Forking keeps the caller's own namespace untouched, and a client library (gRPC for etcd)
    that starts threads does so only in the child, where every socket lands in ``name``.
    """
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(read_fd)
        status = 0
        try:
            _setns(f"/var/run/netns/{name}")
            payload = (True, fn(*args))
        except BaseException as exc:  # noqa: BLE001 - shipped to the parent, re-raised there
            payload, status = (False, exc), 1
        with os.fdopen(write_fd, "wb") as out:
            try:
                out.write(pickle.dumps(payload))
            except (pickle.PicklingError, TypeError, AttributeError) as exc:
                out.write(pickle.dumps((False, RuntimeError(repr(exc)))))
        os._exit(status)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as inp:
        data = inp.read()
    os.waitpid(pid, 0)
    ok, value = pickle.loads(data) if data else (False, RuntimeError("child died"))
    if not ok:
        raise value
    return value
