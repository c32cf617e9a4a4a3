"""Helpers for tests: joining namespaces, polling with a deadline."""
from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from lab.apiserver.launch import stop_process  # noqa: F401  (re-exported for tests)


def veth_between(ns_a: str, if_a: str, addr_a: str, ns_b: str, if_b: str, addr_b: str) -> None:
    """Join two namespaces with a veth pair; addresses in CIDR form (e.g. ``10.0.0.1/24``)."""
    tmp_a, tmp_b = f"v{secrets.token_hex(5)}", f"v{secrets.token_hex(5)}"
    subprocess.run(["ip", "link", "add", tmp_a, "type", "veth", "peer", "name", tmp_b], check=True)
    for tmp, ns, ifname, addr in ((tmp_a, ns_a, if_a, addr_a), (tmp_b, ns_b, if_b, addr_b)):
        subprocess.run(["ip", "link", "set", tmp, "netns", ns], check=True)
        subprocess.run(["ip", "-n", ns, "link", "set", tmp, "name", ifname], check=True)
        subprocess.run(["ip", "-n", ns, "addr", "add", addr, "dev", ifname], check=True)
        subprocess.run(["ip", "-n", ns, "link", "set", ifname, "up"], check=True)


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.05, what: str = "condition"):
    """Poll ``predicate`` until it returns a truthy value or the deadline passes (then fail)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def route_monitor(procs, ns: str, log_path: Path) -> Path:
    """``ip monitor route`` in ``ns`` into ``log_path`` (a process of the ``procs`` registry);
    returns once it listens (it has seen a marker route, added and deleted)."""
    marker = "198.51.100.254/32"
    with open(log_path, "w") as out:
        procs.add(subprocess.Popen(["ip", "-n", ns, "monitor", "route"], stdout=out, stderr=out))

    def seen() -> bool:  # re-added each time: the monitor may start listening late
        subprocess.run(["ip", "-n", ns, "route", "replace", "blackhole", marker], check=True)
        subprocess.run(["ip", "-n", ns, "route", "del", "blackhole", marker], check=True)
        return marker.split("/")[0] in log_path.read_text()
    wait_for(seen, 10, interval=0.2, what=f"ip monitor route listening in {ns}")
    return log_path


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def etcd_healthy(endpoint: str, timeout: float = 0.5) -> bool:
    """True when the etcd at ``endpoint`` (``http://host:port``) answers its health check."""
    import urllib.request

    try:
        with urllib.request.urlopen(f"{endpoint}/health", timeout=timeout) as resp:
            return resp.status == 200
    except OSError:
        return False


def start_etcd(data_dir: str, host: str = "127.0.0.1") -> tuple[subprocess.Popen, str]:
    """Start Debian's etcd on free ports with ``data_dir``; return (process, client endpoint URL).

    The caller owns the process (register it with the ``procs`` fixture or kill it in finally).
    """

    client, peer = free_port(), free_port()
    endpoint = f"http://{host}:{client}"
    proc = subprocess.Popen(
        ["etcd", "--name", "t", "--data-dir", data_dir,
         "--listen-client-urls", endpoint, "--advertise-client-urls", endpoint,
         "--listen-peer-urls", f"http://{host}:{peer}",
         "--initial-advertise-peer-urls", f"http://{host}:{peer}",
         "--initial-cluster", f"t=http://{host}:{peer}", "--log-level", "error"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )

    def healthy() -> bool:
        if proc.poll() is not None:
            pytest.fail(f"etcd exited with {proc.returncode}")
        return etcd_healthy(endpoint)

    try:
        wait_for(healthy, timeout=20, what="etcd to become healthy")
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return proc, endpoint


@contextlib.contextmanager
def etcd_running(data_dir: str, host: str = "127.0.0.1"):
    """``with etcd_running(dir) as endpoint:`` a real etcd, stopped on exit even after a failure."""
    proc, endpoint = start_etcd(data_dir, host)
    try:
        yield endpoint
    finally:
        stop_process(proc)


class LoopThread:
    """An asyncio loop in a thread, so synchronous tests (and wait_for) can drive async code."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro, timeout: float = 30.0):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def call(self, fn, *args):
        async def wrapper():
            return fn(*args)
        return self.run(wrapper())

    def leftover_tasks(self) -> set:
        async def others():
            return {t for t in asyncio.all_tasks() if t is not asyncio.current_task()}
        return self.run(others())

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


# -- the lab, as the e2e tests drive it: the real pycalicoctl in this venv --------------------------

CTL = str(Path(sys.executable).parent / "pycalicoctl")


def ctl(*args: str, check: bool = True, umask: int | None = None,
        timeout: float = 240) -> subprocess.CompletedProcess:
    """``pycalicoctl ARGS``; with ``check`` a non-zero exit fails the test, showing its output."""
    out = subprocess.run([CTL, *args], capture_output=True, text=True, timeout=timeout,
                         preexec_fn=None if umask is None else lambda: os.umask(umask))
    if check and out.returncode != 0:
        pytest.fail(f"pycalicoctl {' '.join(args)} exited {out.returncode}:\n{out.stdout}\n{out.stderr}")
    return out


def lab_state(name: str) -> dict:
    return json.loads(Path(f"/run/pycalico-lab/{name}/state.json").read_text())


def lab_namespaces(name: str) -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith(f"{name}-")]


class Pings:
    """Continuous pings between lab pods (20 a second each; each reply needs both directions' routes):
    ``Pings([(pod_a, pod_b), ...])`` with pods as in the lab's state."""

    def __init__(self, pairs: list[tuple[dict, dict]]) -> None:
        self.procs = {f"{a['node']} -> {b['node']}": subprocess.Popen(
            ["ip", "netns", "exec", a["netns"], "ping", "-q", "-i", "0.05", b["ip"]],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for a, b in pairs}

    def stop(self) -> dict[str, tuple[int, int]]:
        """(sent, received) per pair; ping prints its summary on SIGINT. Every ping is ended
        (killed if it ignores SIGINT) before any output is judged."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        outs = {}
        for pair, proc in self.procs.items():
            try:
                outs[pair] = proc.communicate(timeout=10)[0]
            except subprocess.TimeoutExpired:
                proc.kill()
                outs[pair] = proc.communicate()[0]
        counts = {}
        for pair, out in outs.items():
            match = re.search(r"(\d+) packets transmitted, (\d+) received", out)
            assert match, f"{pair}: {out}"
            counts[pair] = (int(match[1]), int(match[2]))
        return counts
