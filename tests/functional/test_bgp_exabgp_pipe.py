"""ExaBGP's pipe to its API process, as the speaker starts it (bgp/exabgp_main.py).

ExaBGP writes to that pipe with a blocking write and reads nothing from its peers while blocked;
at the default 64 KiB a busy agent stalled it every ~20 UPDATEs during a 100k-route burst.
"""
from __future__ import annotations

import fcntl
import os
import subprocess
import threading
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from bgp.exabgp_main import API_PIPE_BYTES
from bgp.peers import PeerSpec
from bgp.speaker import Speaker
from tests.helpers import LoopThread, wait_for

pytestmark = pytest.mark.root

ME, PEER = IPv4Address("10.250.0.1"), IPv4Address("10.250.0.2")  # a peer that never comes


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(c) for c in path.read_text().split()] if path.exists() else []


def _relay_pid(exabgp: int) -> int | None:
    for child in _children(exabgp):
        if b"socat" in Path(f"/proc/{child}/cmdline").read_bytes():
            return child
    return None


def test_exabgps_pipe_to_its_api_process_holds_a_burst(netns, loop_thread: LoopThread, tmp_path):
    lt = loop_thread
    ns = netns("bgpp")
    subprocess.run(["ip", "-n", ns, "addr", "add", f"{ME}/32", "dev", "lo"], check=True)  # ExaBGP listens there

    async def make() -> Speaker:
        return Speaker(node_name=ns, router_id=ME, local_address=ME, local_asn=64512,
                       run_dir=tmp_path / "run", on_change=lambda: None, netns=ns, hold_time=9,
                       sync_deadline=60.0)

    speaker = lt.run(make())
    try:
        lt.run(speaker.set_peers(frozenset({PeerSpec(
            address=PEER, asn=64512, local_asn=64512, passive=True, peer_type="node-to-node mesh",
            name="peer")})))
        lt.run(speaker.start())
        wait_for(lambda: lt.call(speaker.status).state == "running", 20, what="relay connected")
        exabgp = lt.call(lambda: speaker.child_pid)
        relay = wait_for(lambda: _relay_pid(exabgp), 10, what="the socat relay")
        # The relay's stdin is the read end of the pipe ExaBGP writes to: the same pipe.
        fd = os.open(f"/proc/{relay}/fd/0", os.O_RDONLY | os.O_NONBLOCK)
        try:
            size = fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ)
        finally:
            os.close(fd)
        # As much as allowed: above pipe-max-size (1 MiB by default) needs CAP_SYS_RESOURCE.
        allowed = min(API_PIPE_BYTES, int(Path("/proc/sys/fs/pipe-max-size").read_text()))
        assert size >= allowed > 2**16, f"pipe holds {size} bytes"
        assert any(t.name == f"bgp-read-{ns}" for t in threading.enumerate())  # the relay's reader
    finally:
        lt.run(speaker.stop())
    assert not any(t.name == f"bgp-read-{ns}" for t in threading.enumerate()), "stop left its reader"
