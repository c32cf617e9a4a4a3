"""Start and stop the stand-in as a child process: ``with running_apiserver(etcd_url) as url:``.

Does I/O (a subprocess, HTTP polling of ``/readyz``). Used by tests and the lab; the process is
stopped by its PID (SIGTERM, then SIGKILL) even when the body raises.
"""
from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator


def kubeconfig(url: str, name: str = "pycalico-lab") -> str:
    """A kubeconfig (YAML text) for kubectl / the official client: plain HTTP, no credentials.

    Write it with ``hostio.write_private`` (0600) like any other config.
    """
    return (f"apiVersion: v1\nkind: Config\n"
            f"clusters:\n- name: {name}\n  cluster:\n    server: {url}\n"
            f"users:\n- name: {name}\n  user: {{}}\n"
            f"contexts:\n- name: {name}\n  context:\n    cluster: {name}\n    user: {name}\n"
            f"current-context: {name}\n")


class ApiserverFailed(RuntimeError):
    """The stand-in exited or did not become ready in time."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def ready(url: str, timeout: float = 0.5) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/readyz", timeout=timeout) as resp:
            return resp.status == 200
    except (OSError, urllib.error.URLError):
        return False


def start_apiserver(etcd_url: str, host: str = "127.0.0.1", port: int = 0, *,
                    bookmark_interval: float = 5.0, timeout: float = 20.0,
                    stderr=None) -> tuple[subprocess.Popen, str]:
    """Start ``python -m lab.apiserver``; return (process, base URL) once ``/readyz`` answers."""
    port = port or free_port(host)
    url = f"http://{host}:{port}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "lab.apiserver", "--etcd-endpoints", etcd_url,
         "--listen", f"{host}:{port}", "--bookmark-interval", str(bookmark_interval)],
        stdout=subprocess.DEVNULL, stderr=stderr)
    deadline = time.monotonic() + timeout
    while not ready(url):
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_process(proc)
            raise ApiserverFailed(f"API server stand-in on {url} did not become ready "
                                  f"(exit code {proc.returncode})")
        time.sleep(0.05)
    return proc, url


def stop_process(proc: subprocess.Popen, timeout: float = 5.0) -> None:
    """SIGTERM, then SIGKILL after ``timeout``; always reaped (any child we started, by PID)."""
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextlib.contextmanager
def running_apiserver(etcd_url: str, **kwargs) -> Iterator[str]:
    """``with running_apiserver("http://127.0.0.1:2379") as url:`` -- stopped on exit."""
    proc, url = start_apiserver(etcd_url, **kwargs)
    try:
        yield url
    finally:
        stop_process(proc)
