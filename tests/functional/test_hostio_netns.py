"""hostio.netns_entered: one thread visits a namespace and comes back; nothing forks."""
from __future__ import annotations

import os
import threading

import pytest
from pyroute2 import IPRoute

import hostio

pytestmark = pytest.mark.root


def netns_inode(path: str) -> int:
    return os.stat(path).st_ino


def test_a_thread_visits_a_namespace_and_comes_back(netns):
    ns = netns("visit")
    target = f"/var/run/netns/{ns}"
    seen: dict = {}

    def visit() -> None:
        before = netns_inode("/proc/thread-self/ns/net")
        with hostio.netns_entered(target):
            seen["inside"] = netns_inode("/proc/thread-self/ns/net")
            ipr = IPRoute()  # a socket opened inside stays inside
        seen["after"] = netns_inode("/proc/thread-self/ns/net")
        seen["before"] = before
        with ipr:
            seen["links"] = sorted(link.get_attr("IFLA_IFNAME") for link in ipr.get_links())

    children_before = set(os.listdir(f"/proc/{os.getpid()}/task"))
    thread = threading.Thread(target=visit)
    thread.start()
    thread.join(10)
    assert seen["inside"] == netns_inode(target)
    assert seen["after"] == seen["before"] == netns_inode("/proc/self/ns/net")
    assert seen["links"] == ["lo"]  # the namespace's links, not ours
    assert netns_inode("/proc/thread-self/ns/net") == netns_inode("/proc/self/ns/net")
    assert set(os.listdir(f"/proc/{os.getpid()}/task")) <= children_before | {str(thread.native_id)}


def test_a_missing_namespace_leaves_the_thread_where_it_was(tmp_path):
    before = netns_inode("/proc/thread-self/ns/net")
    with pytest.raises(FileNotFoundError):
        with hostio.netns_entered(tmp_path / "nope"):
            pass
    assert netns_inode("/proc/thread-self/ns/net") == before
