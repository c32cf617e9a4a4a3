"""The relay socket's reader (bgp/relay_reader.py): it drains what ExaBGP writes while the agent's
event loop is busy, up to its cap, and hands the bytes over in order.

Regression (issue 9): the socket was read by the event loop, so while the agent calculated or
applied routes nobody read it; once the pipe, socat and the socket buffer were full (~1.3 MB),
ExaBGP's blocking write stopped its parsing of the peer's UPDATEs.
"""
from __future__ import annotations

import asyncio
import socket
import threading

import pytest

from bgp.relay_reader import CHUNK, RelayReader
from tests.helpers import LoopThread

BURST = 8 * 2**20  # far more than the socket's buffers hold


def _pair() -> tuple[socket.socket, socket.socket]:
    ours, relay = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    relay.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 2**16)  # small, as a busy pipe is
    ours.setblocking(False)
    return ours, relay


def _block_loop(lt: LoopThread) -> tuple[threading.Event, threading.Event]:
    """Keep ``lt``'s loop busy (a synchronous callback) until the returned release is set."""
    entered, release = threading.Event(), threading.Event()

    def busy() -> None:
        entered.set()
        release.wait(60)

    lt.loop.call_soon_threadsafe(busy)
    assert entered.wait(10), "the loop never ran the blocking callback"
    return entered, release


async def _take_all(reader: RelayReader, size: int) -> bytes:
    got = bytearray()
    while len(got) < size:
        data = await reader.take()
        assert data is not None, f"reader ended after {len(got)} of {size} bytes"
        got += data
    return bytes(got)


def _started(lt: LoopThread, ours: socket.socket, cap: int, name: str) -> RelayReader:
    """A reader of ``ours`` made on ``lt``'s loop (it binds to the running loop) and started."""
    async def make() -> RelayReader:
        return RelayReader(ours, cap=cap, name=name)
    reader = lt.run(make())
    lt.call(reader.start)
    return reader


def _stop(lt: LoopThread, reader: RelayReader) -> None:
    async def stop() -> None:
        reader.stop()
        await reader.wait_finished()
    lt.run(stop())


def test_the_relay_is_drained_while_the_loop_is_busy(loop_thread: LoopThread):
    lt = loop_thread
    ours, relay = _pair()
    try:
        reader = _started(lt, ours, 64 * 2**20, "test-relay-read")
        payload = bytes(range(256)) * (BURST // 256)
        _, release = _block_loop(lt)
        try:
            relay.settimeout(30)  # blocking: it completes only if someone reads meanwhile
            relay.sendall(payload)
        finally:
            release.set()
        assert lt.run(_take_all(reader, len(payload))) == payload
        relay.close()
        assert lt.run(reader.take()) is None  # EOF: the end, once all was taken
        lt.run(reader.wait_finished())
        assert reader.error is None
    finally:
        relay.close()
        ours.close()


def test_the_reader_holds_at_most_its_cap_then_pushes_back(loop_thread: LoopThread):
    lt = loop_thread
    ours, relay = _pair()
    cap = 2**20
    try:
        reader = _started(lt, ours, cap, "test-relay-read")
        payload = bytes(range(251)) * (BURST // 251)
        _, release = _block_loop(lt)
        sent = 0
        try:
            relay.settimeout(2)  # a blocked send here is the back-pressure under test
            with pytest.raises(TimeoutError):
                while sent < len(payload):
                    sent += relay.send(payload[sent:sent + 2**16])
        finally:
            release.set()
        # what the reader holds is under cap + one read; the rest waits in the socket
        assert sent < cap + CHUNK + 2**20, f"{sent} bytes were taken"
        relay.settimeout(30)

        def send_rest() -> None:
            relay.sendall(payload[sent:])
            relay.close()
        writer = threading.Thread(target=send_rest)
        writer.start()
        try:
            assert lt.run(_take_all(reader, len(payload))) == payload  # all of it, in order
        finally:
            writer.join(30)
        assert lt.run(reader.take()) is None
    finally:
        relay.close()
        ours.close()


def test_stop_ends_the_thread_without_eof(loop_thread: LoopThread):
    lt = loop_thread
    ours, relay = _pair()
    try:
        reader = _started(lt, ours, 2**20, "test-relay-read-stop")
        relay.sendall(b"done\n")
        assert lt.run(reader.take()) == b"done\n"
        _stop(lt, reader)
        assert lt.run(asyncio.wait_for(reader.take(), 5)) is None
        assert not any(t.name == "test-relay-read-stop" for t in threading.enumerate())
    finally:
        relay.close()
        ours.close()


def test_lines_are_whole_and_a_line_over_the_limit_is_an_error(loop_thread: LoopThread):
    lt = loop_thread
    ours, relay = _pair()
    try:
        reader = _started(lt, ours, 2**20, "test-relay-read-lines")
        relay.sendall(b'{"type": ')
        relay.sendall(b'"state"}\ndone\n' + b"x" * 100)
        got: list[bytes] = []
        while len(got) < 2:
            got += lt.run(reader.lines(64))
        assert got == [b'{"type": "state"}', b"done"]  # the unfinished line is held back
        with pytest.raises(ValueError, match="over 64 bytes"):
            lt.run(reader.lines(64))
        _stop(lt, reader)
    finally:
        relay.close()
        ours.close()
