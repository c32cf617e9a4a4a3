"""Shared fixtures: throwaway network namespaces and process cleanup.

Every namespace a test makes is named ``<run prefix><short name>`` where the run prefix is unique to
this pytest process, and is deleted in ``finally`` even when the test fails.  Processes started by a
test are registered with ``procs`` and killed by PID afterwards.
"""
from __future__ import annotations

import os
import secrets
import signal
import subprocess
import time
from collections.abc import Iterator

import pytest

from tests.helpers import LoopThread, etcd_running, start_etcd, veth_between, wait_for  # noqa: F401  (re-exported for tests)

RUN_PREFIX = f"pyt{secrets.token_hex(2)}-"


def _netns_pids(name: str) -> list[int]:
    out = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def delete_netns(name: str) -> None:
    """Kill what still runs inside ``name`` (it is ours: we created the namespace) and delete it."""
    for pid in _netns_pids(name):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    subprocess.run(["ip", "netns", "delete", name], capture_output=True)


class NetnsFactory:
    def __init__(self) -> None:
        self.created: list[str] = []

    def __call__(self, short: str) -> str:
        name = f"{RUN_PREFIX}{short}"
        subprocess.run(["ip", "netns", "add", name], check=True)
        self.created.append(name)
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        return name

    def cleanup(self) -> None:
        for name in reversed(self.created):
            delete_netns(name)
        self.created.clear()


@pytest.fixture
def netns() -> Iterator[NetnsFactory]:
    """``ns = netns("a")`` creates a namespace with loopback up; all are removed after the test."""
    if os.geteuid() != 0:
        pytest.fail("functional tests need root (network namespaces)")
    factory = NetnsFactory()
    try:
        yield factory
    finally:
        factory.cleanup()


class ProcessRegistry:
    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []

    def add(self, proc: subprocess.Popen) -> subprocess.Popen:
        self.procs.append(proc)
        return proc

    def cleanup(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + 5
        for proc in self.procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
def procs() -> Iterator[ProcessRegistry]:
    """Register every Popen a test starts: ``procs.add(subprocess.Popen(...))``; killed afterwards."""
    reg = ProcessRegistry()
    try:
        yield reg
    finally:
        reg.cleanup()


@pytest.fixture
def etcd_endpoint(tmp_path) -> Iterator[str]:
    """A real etcd (Debian's etcd-server) on free loopback ports with a temporary data dir."""
    with etcd_running(str(tmp_path / "etcd")) as endpoint:
        yield endpoint


@pytest.fixture
def loop_thread() -> Iterator[LoopThread]:
    """A LoopThread for async code; fails the test if the code under test left tasks running."""
    lt = LoopThread()
    try:
        yield lt
        leftover = lt.leftover_tasks()
        assert leftover == set(), f"Speaker.stop() left tasks behind: {leftover}"
    finally:
        lt.close()
