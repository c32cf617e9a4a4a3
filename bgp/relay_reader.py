"""The relay socket's reading side: a thread that drains what ExaBGP writes whatever the event loop
is doing, and hands it to the loop in large batches.

Does I/O (reads a socket in its own thread); ``speaker`` owns the socket and runs one per relay
connection.

Why a thread: ExaBGP writes to its API process with a blocking write, and a blocked ExaBGP parses
nothing from its peers. Between ExaBGP and us there is at most the API pipe (1 MiB without
CAP_SYS_RESOURCE), socat's 64 KiB and the socket's buffer; 100k learned routes are ~2 MB of JSON.
When the socket is read by the event loop, it is read only between the agent's calculations and
route applies, and ExaBGP stalled behind them (issue 9's pipeline: ExaBGP parsing on one core
while the agent programs on the other). The thread waits in ``poll`` and ``recv`` without the
GIL, so it reads as soon as ExaBGP writes; the loop then takes everything read so far at once
(``take``), and parses and feeds it as one batch: one RIB update and one agent reconcile per batch,
not one per UPDATE.

Bounded: at most ``cap`` bytes wait for the loop. Past that the thread stops reading until the
loop has taken them, so a peer flooding faster than the agent can take it fills the socket, the
relay and the pipe, and then blocks ExaBGP (back-pressure on the peer's TCP session), rather than
growing our memory; what any one peer may hold is bounded by its max-prefix limit.

The socket stays non-blocking (the loop writes to it with ``sock_sendall``): the thread waits in
``poll`` and reads what is there. ``stop`` shuts the socket down, which wakes the ``poll``;
the owner closes the socket only once ``finished`` is done, so the descriptor is never reused
under a thread still polling it.
"""
from __future__ import annotations

import asyncio
import select
import socket
import threading

# Per read (into one buffer, copied out at its length): socat writes at most 64 KiB at a time,
# and a read allocating more than it keeps costs RSS (bench.bgp_convergence: +5-10 MB at 1 MiB).
CHUNK = 2**18


class RelayReader:
    """Reads ``sock`` in a thread named ``name`` until EOF, an error or ``stop``."""

    def __init__(self, sock: socket.socket, *, cap: int, name: str) -> None:
        self._sock = sock
        self._cap = cap
        self._loop = asyncio.get_running_loop()
        self._cond = threading.Condition()
        self._chunks: list[bytes] = []
        self._held = 0  # bytes in _chunks
        self._tail = b""  # a line's beginning, for ``lines``
        self._signalled = False  # a wake-up is on its way to the loop
        self._stopped = False
        self._ended = False  # the thread read its last byte (EOF, error or stop)
        self._ready = asyncio.Event()
        self.error: str | None = None  # why reading ended, if not EOF or stop
        self.finished: asyncio.Future[None] = self._loop.create_future()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    async def take(self) -> bytes | None:
        """Everything read since the last call (waits until there is something); None once the
        reading has ended and everything has been taken."""
        while True:
            with self._cond:
                if self._chunks:
                    chunks, self._chunks, self._held = self._chunks, [], 0
                    self._signalled = False
                    self._cond.notify()  # room again, if the thread waited for it
                    return chunks[0] if len(chunks) == 1 else b"".join(chunks)
                if self._ended:
                    return None
                self._signalled = False
                self._ready.clear()
            await self._ready.wait()

    async def lines(self, limit: int) -> list[bytes] | None:
        """The complete lines among everything read since the last call (``take``), without their
        newline; None at the end. ValueError for a line longer than ``limit``."""
        while len(self._tail) <= limit:
            if (data := await self.take()) is None:
                return None
            lines = (self._tail + data if self._tail else data).split(b"\n")
            self._tail = lines.pop()
            if lines:
                return lines
        raise ValueError(f"a line from exabgp is over {limit} bytes")

    def stop(self) -> None:
        """End the thread soon: it takes nothing more from the socket."""
        with self._cond:
            self._stopped = True
            self._cond.notify()
        try:
            self._sock.shutdown(socket.SHUT_RDWR)  # wakes the poll
        except OSError:
            pass  # not connected any more: the poll has woken already

    async def wait_finished(self) -> None:
        await asyncio.shield(self.finished)
        self._thread.join()  # it has returned from _run, or is about to

    def _run(self) -> None:
        poller = select.poll()
        poller.register(self._sock.fileno(), select.POLLIN)
        buf = bytearray(CHUNK)
        view = memoryview(buf)
        try:
            while True:
                with self._cond:
                    while self._held >= self._cap and not self._stopped:
                        self._cond.wait()
                    if self._stopped:
                        return
                poller.poll()
                try:
                    n = self._sock.recv_into(buf)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError as exc:
                    self.error = str(exc) or type(exc).__name__
                    return
                if not n:
                    return
                self._put(bytes(view[:n]))
        finally:
            with self._cond:
                self._ended = True
            self._call(self._ended_in_loop)

    def _put(self, data: bytes) -> None:
        with self._cond:
            self._chunks.append(data)
            self._held += len(data)
            if self._signalled:
                return
            self._signalled = True
        self._call(self._ready.set)

    def _ended_in_loop(self) -> None:
        self._ready.set()
        if not self.finished.done():
            self.finished.set_result(None)

    def _call(self, callback) -> None:
        try:
            self._loop.call_soon_threadsafe(callback)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            pass
