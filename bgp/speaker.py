"""The BGP speaker: runs ExaBGP as a child and talks to it through the relay's unix socket
(``exabgp_child``: the child's command line, environment, relay and log).

Does I/O: writes run_dir/exabgp.conf and run_dir/exabgp.log, spawns ExaBGP, owns the socket.
Every BGP decision is ``speaker_core.SpeakerCore``'s (sessions, what to send and when, timers
with their deadlines, reloads, restarts for new local settings, Cease, make-before-break,
graceful-restart expiry, max-prefix hold-down): this asyncio shell feeds it ExaBGP's events, the
agent's calls and its timers' expiry, and executes the effects it returns (``_run``). The child's
status and the delay before the next one are ``supervision.ChildStatus``'s. What the shell
decides itself is about the child and the socket: who may connect, the ack window, the liveness
probe, killing a child that hung or lost its relay.

Why things are the way they are:
- A stop is a restart unless told it is for good (``stop``): ExaBGP's own shutdown (SIGTERM)
  closes the sessions without a NOTIFICATION, which graceful-restart helpers take for a
  restart; leaving for good, the core's Cease goes out first.
- ExaBGP has no backpressure: a blocked write to its API process stops its parsing of what peers
  send. A thread reads the relay socket all the time (``relay_reader``: up to
  ``READ_BUFFER_MAX`` bytes waiting for the loop), the loop takes what it read in one batch, and
  the writer keeps at most ``ACK_WINDOW`` commands unacknowledged.
- Prefix changes go to all neighbors at once; ExaBGP's adj-rib-out keeps them for a neighbor
  that is down, so a withdrawal made while it was down is not replayed as an announcement.
- The relay is our only way to ExaBGP, and ExaBGP does not exit when it loses it (it only drops
  the API process). A lost relay connection, or a relay that never connects, therefore restarts
  the child: peers are shown down at once and their routes are kept as stale (graceful restart)
  until the new ExaBGP has them again.
- ``exabgp.sock`` takes one connection, from a process whose parent is our current ExaBGP child,
  running as root or as us (SO_PEERCRED); anything else is refused and the live relay is kept.
  The socket is 0600 in a 0700 run directory; the config (whose ``run`` line ExaBGP executes) and
  the log are 0600, whatever the umask.
"""
from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import hostio
from bgp import (effects, exabgp_child, exabgp_conf, protocol, reflect, relay_reader, speaker_core,
                 supervision, transition)
from bgp.core import DRAINING_REFLECTION, DRAINING_SESSION, PeerStatus  # noqa: F401 (API)
from bgp.exabgp_child import LOG_MAX_BYTES, exabgp_env, relay_command, rotate_log  # noqa: F401 (API)
from bgp.peers import PeerSpec
from bgp.rib import LearnedRoute
from bgp.settings import (max_prefixes_from_env, origin_validation_from_env,  # noqa: F401 (API)
                          stops_for_good_from_env)
from bgp.speaker_core import DEFAULT_MAX_PREFIXES, MAX_PREFIX_HOLD_DOWN  # noqa: F401 (API)
from bgp.supervision import SpeakerStatus

log = logging.getLogger(__name__)

ACK_WINDOW = 64
LINE_LIMIT = 64 * 2**20  # one UPDATE of many prefixes is one long JSON line
# What ExaBGP may have written that the loop has not taken yet (~800k routes of JSON): past it,
# the reader stops reading and ExaBGP blocks (relay_reader says why).
READ_BUFFER_MAX = 16 * 2**20
STOP_TIMEOUT = 5.0
_MAX_UNIX_PATH = 107
RELAY_CONNECT_TIMEOUT = 10.0
# socat closes the moment ExaBGP dies: a closed relay waits this long for the child's exit, so the
# reason reported is the real cause (the supervisor's "exabgp exited") and not its echo.
CHILD_EXIT_GRACE = 0.5
# While a passive session is down, how often the kernel's TCP MD5 drop counters are read (the
# baseline of a session's drops is the sample taken when its state changed). No session of the
# kind down: no timer at all.
MD5_SAMPLE_INTERVAL = 2.0


@dataclass
class _Conn:
    channel: protocol.Channel
    sock: socket.socket
    reader: relay_reader.RelayReader
    reader_task: asyncio.Task | None
    child_pid: int | None  # the ExaBGP child whose relay this is
    task: asyncio.Task | None = None
    waiting_since: float | None = None  # monotonic time since which ExaBGP owes us an ack


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _md5_counts(pid: int | None) -> supervision.Md5Counts | None:
    """The TCP MD5 drop counters of process ``pid``'s network namespace (None: no child, or
    it just exited)."""
    if pid is None:
        return None
    try:
        return supervision.md5_counts(Path(f"/proc/{pid}/net/netstat").read_text())
    except OSError:
        return None


class Speaker:
    def __init__(self, *, node_name: str, router_id: IPv4Address, local_address: IPv4Address,
                 local_asn: int, run_dir: Path, on_change: Callable[[], None],
                 listen_port: int = 179, netns: str | None = None, hold_time: int = 9,
                 gr_restart_time: int = 120, sync_deadline: float = 30.0,
                 liveness_interval: float = 10.0, liveness_timeout: float = 30.0,
                 drain_deadline: float = transition.DEADLINE,
                 max_prefixes: int | None = DEFAULT_MAX_PREFIXES,
                 max_prefix_hold_down: float = MAX_PREFIX_HOLD_DOWN) -> None:
        self._node = node_name
        self._local_address = local_address
        self._run_dir = Path(run_dir)
        self._sock_path = self._run_dir / "exabgp.sock"
        if len(str(self._sock_path).encode()) > _MAX_UNIX_PATH:
            raise ValueError(f"run_dir: {run_dir} is too long for a unix socket path")
        self._on_change = on_change
        self._netns = netns
        self._liveness = (liveness_interval, liveness_timeout)
        base = exabgp_conf.ExaBGPConfig(
            router_id=router_id, local_address=local_address,
            relay_command=relay_command(self._sock_path),
            hold_time=hold_time, gr_restart_time=gr_restart_time, port=listen_port)
        self._core = speaker_core.SpeakerCore(
            base=base, local_asn=local_asn, gr_restart_time=gr_restart_time,
            sync_deadline=sync_deadline, drain_deadline=drain_deadline, max_prefixes=max_prefixes,
            max_prefix_hold_down=max_prefix_hold_down)
        self._env = exabgp_env(local_address, listen_port)
        self._outbox: deque[str] = deque()
        self._wake = asyncio.Event()
        self._settled = asyncio.Event()  # the core ran effects: a peer set may no longer wait for a Cease
        self._conn: _Conn | None = None
        self._listener: socket.socket | None = None
        self._acceptor: asyncio.Task | None = None
        self._handlers: set[asyncio.Task] = set()  # relay connection tasks, until they end
        self._proc: asyncio.subprocess.Process | None = None
        self._supervisor: asyncio.Task | None = None
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._notify_pending = False
        self._stopping = False
        self.refused_connections = 0
        self._child = supervision.ChildStatus()

    # -- public API -----------------------------------------------------------------------------

    async def start(self) -> None:
        hostio.private_dir(self._run_dir)
        listener = hostio.bind_unix(self._sock_path)
        listener.listen()
        listener.setblocking(False)
        self._listener = listener
        self._acceptor = asyncio.create_task(self._accept(listener), name=f"bgp-accept-{self._node}")
        self._run(self._core.start(time.monotonic()))
        await self._spawn()
        self._supervisor = asyncio.create_task(self._supervise(), name=f"bgp-supervise-{self._node}")

    async def set_peers(self, peers: frozenset[PeerSpec],
                        cluster_id: IPv4Address | str | None = None) -> None:
        """Configure exactly ``peers``; ``cluster_id``: our ``routeReflectorClusterID`` (we reflect
        to peers whose ``rr_client`` is set, RFC 4456), None when we are no route reflector.
        A removed peer whose session is up gets a Cease first, and this returns once the new set
        is configured (``speaker_core.CEASE_TIMEOUT`` at most). Given what it already has, it does
        nothing and tells no one (a notification on no change turns the agent's level-triggered
        loop into a busy loop)."""
        self._run(self._core.set_peers(peers, cluster_id, time.monotonic()))
        await self._peers_settled()

    async def want_peers(self, peers: frozenset[PeerSpec],
                         cluster_id: IPv4Address | str | None = None) -> None:
        """Move to exactly ``peers`` without losing routes (``SpeakerCore.want_peers``);
        ``cluster_id`` as in ``set_peers`` (at once)."""
        self._run(self._core.want_peers(peers, cluster_id, time.monotonic()))
        await self._peers_settled()

    async def drop_peers(self) -> None:
        """BGP off for this node: no session at all, a Cease to each that is up
        (``SpeakerCore.drop_peers``); returns as ``set_peers`` does."""
        self._run(self._core.drop_peers(time.monotonic()))
        await self._peers_settled()

    async def _peers_settled(self) -> None:
        """Until no peer set waits for a Cease to take effect (the core's timer bounds the wait)."""
        while self._core.ceasing and not self._stopping:
            self._settled.clear()
            await self._settled.wait()

    def set_local(self, asn: int, listen_port: int) -> None:
        """Our AS number and listen port, changed live: a change restarts ExaBGP, gracefully
        (``SpeakerCore.set_local`` says why), debounced with peer changes."""
        todo = self._core.set_local(asn, listen_port, time.monotonic())
        if todo:
            self._env = exabgp_env(self._local_address, listen_port)
        self._run(todo)

    async def set_advertisements(self, prefixes: frozenset[IPv4Network]) -> None:
        """Only the diff is sent; a session that comes up gets everything, then End-of-RIB."""
        self._run(self._core.set_advertisements(prefixes))

    def set_import_filter(self, pools: frozenset[IPv4Network], own_blocks: frozenset[IPv4Network]) -> None:
        self._run(self._core.set_import_filter(pools, own_blocks, time.monotonic()))

    def set_origins(self, blocks: dict[IPv4Network, IPv4Address] | None,
                    borrowed: dict[IPv4Address, IPv4Address]) -> None:
        """Who may originate which pool prefix (``Rib.set_origins``; None: no origin validation)."""
        self._run(self._core.set_origins(blocks, borrowed, time.monotonic()))

    def set_origins_current(self, current: bool) -> None:
        """Whether the origins are the datastore's current view: while not, a route rejected for
        its origin is held, not counted (``Rib.set_origins_current``). A no-op if unchanged."""
        self._run(self._core.set_origins_current(current))

    def change_origins(self, blocks: dict[IPv4Network, IPv4Address | None],
                       borrowed: dict[IPv4Address, IPv4Address | None]) -> None:
        """``set_origins`` by difference (``Rib.change_origins``): None for one no longer owned."""
        self._run(self._core.change_origins(blocks, borrowed, time.monotonic()))

    def learned_routes(self) -> frozenset[LearnedRoute]:
        """Every best route (cached: the same object until something changes)."""
        return self._core.learned_routes()

    def learned_count(self) -> int:
        """How many prefixes have a learned best path (per health probe: no route objects made)."""
        return self._core.learned_count()

    def learned_changes(self) -> tuple[list[LearnedRoute], list[LearnedRoute]]:
        """(removed, added) since the last call (the first: all added), for one consumer that keeps
        its own copy: work per changed route, where diffing two ``learned_routes()`` is per route
        held (100k routes: ~0.3 s per reconcile). See ``Rib.take_changes``."""
        return self._core.learned_changes()

    def learned_change_columns(self) -> tuple[tuple[list[int], list], tuple[list[int], list]]:
        """``learned_changes`` as ((removed keys, paths), (added keys, paths)), no object per
        route (``Rib.take_change_columns``; ``felix.cluster.learned_pairs`` reads them)."""
        return self._core.learned_change_columns()

    def reflected(self) -> dict[IPv4Address, dict[IPv4Network, reflect.Reflected]]:
        """What we reflect to each peer (our Adj-RIB-Out of reflected routes)."""
        return self._core.reflected()

    def peer_status(self) -> list[PeerStatus]:
        """Each configured session; one kept by make-before-break says so after its state, a
        passive one that is down the TCP MD5 drops since its last state change, if any."""
        self._sample_md5()
        return self._core.peer_status()

    def _sample_md5(self) -> None:
        """The TCP MD5 drop counters of ExaBGP's namespace (where its listening socket is) to
        the core, while a passive session is down (``supervision.Md5Watch``)."""
        if self._core.md5_wanted and not self._stopping:
            self._core.md5_counters(_md5_counts(self.child_pid))

    def _follow_md5(self) -> None:
        """After a change the core notified: sample at once if a passive session is down (its
        baseline), and keep sampling every MD5_SAMPLE_INTERVAL until none is."""
        if "md5" in self._timers or not self._core.md5_wanted:
            return

        def tick() -> None:
            self._sample_md5()
            if self._core.md5_wanted and not self._stopping:
                self._timers["md5"] = asyncio.get_running_loop().call_later(MD5_SAMPLE_INTERVAL, tick)
            else:
                self._timers.pop("md5", None)

        self._sample_md5()
        self._timers["md5"] = asyncio.get_running_loop().call_later(MD5_SAMPLE_INTERVAL, tick)

    def counters(self) -> dict[str, int]:
        return self._core.counters()

    def status(self) -> SpeakerStatus:
        return self._child.status

    @property
    def child_pid(self) -> int | None:
        """PID of the running ExaBGP child (None before start or while it is being restarted)."""
        proc = self._proc
        return proc.pid if proc is not None and proc.returncode is None else None

    def check_routes_in_sync(self) -> bool:
        """Whether learned routes are complete (``SpeakerCore.routes_in_sync``); only reads."""
        return self._core.routes_in_sync

    async def stop(self, *, for_good: bool = False) -> None:
        """End the speaker. By default a restart (SIGTERM: a rolling update, an upgrade): ExaBGP
        is ended without a Cease, so graceful-restart peers keep our routes as stale until the
        next speaker's End-of-RIB. ``for_good`` (the node is leaving): every session gets a Cease
        first, and this waits until they are down (``speaker_core.CEASE_TIMEOUT`` at most).
        ``SpeakerCore.stop`` says why."""
        if not self._stopping:
            self._run(self._core.stop(for_good))
            if for_good:
                await self._sessions_down(speaker_core.CEASE_TIMEOUT)
        self._stopping = True
        self._settled.set()
        self._child.stopped(_now())
        for handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
        if self._supervisor is not None:
            self._supervisor.cancel()
            await asyncio.gather(self._supervisor, return_exceptions=True)
        await self._terminate_child()
        await self._drop_connection()
        if self._acceptor is not None:
            self._acceptor.cancel()
            await asyncio.gather(self._acceptor, return_exceptions=True)
        if self._listener is not None:
            self._listener.close()
        await self._handlers_ended()
        self._sock_path.unlink(missing_ok=True)

    async def _handlers_ended(self) -> None:
        """Until every connection task has ended: the relay's reader may have taken its closed
        connection itself (EOF seen before the child's exit): it still drops it and waits for the
        child then."""
        if not self._handlers:
            return
        _, pending = await asyncio.wait(set(self._handlers), timeout=STOP_TIMEOUT)
        for task in pending:  # should not happen: a handler stuck past the child's exit
            log.warning("a relay connection task outlived the stop; cancelling it",
                        extra={"node": self._node, "task": task.get_name()})
            task.cancel()
        if pending:
            await asyncio.wait(pending)

    async def _sessions_down(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self._core.sessions_up:
            self._settled.clear()
            try:
                await asyncio.wait_for(self._settled.wait(), deadline - time.monotonic())
            except TimeoutError:
                log.warning("sessions still up after their Cease; stopping anyway",
                            extra={"node": self._node})
                return

    # -- the core's effects ---------------------------------------------------------------------

    def _run(self, todo: list[effects.Effect]) -> None:
        """Execute what the core decided, in order (nothing once stopping)."""
        for effect in todo:
            if self._stopping:
                return
            match effect:
                case effects.Send(lines):
                    self._send(lines)
                case effects.Arm(timer, at):
                    self._cancel_timer(timer)
                    self._timers[timer] = asyncio.get_running_loop().call_later(
                        max(0.0, at - time.monotonic()), self._fire, timer)
                case effects.Cancel(timer):
                    self._cancel_timer(timer)
                case effects.WriteConfig(text, peers):
                    self._write_config(text, peers)
                case effects.RestartChild(reason):
                    if self._proc is not None:
                        self._restart_child(self._proc, reason)
                case effects.Notify():
                    self._notify()
                    self._follow_md5()
                case effects.Log(level, message, fields):
                    getattr(log, level)(message, extra={"node": self._node, **fields})
                case _:
                    raise AssertionError(f"Bug: the speaker does not know the effect {effect!r}")
        self._settled.set()

    def _fire(self, timer: str) -> None:
        self._timers.pop(timer, None)
        self._run(self._core.timer_fired(timer, time.monotonic(), _now()))

    def _write_config(self, text: str, peers: int) -> None:
        # Atomic (ExaBGP never reads half a file) and 0600: ExaBGP executes its `run` line.
        try:
            hostio.write_private(self._run_dir / "exabgp.conf", text)
        except BaseException:
            self._core.config_not_written()
            raise
        log.info("wrote exabgp config", extra={"node": self._node, "peers": peers})

    # -- child process --------------------------------------------------------------------------

    async def _spawn(self) -> None:
        argv = exabgp_child.argv(self._run_dir, self._netns)
        rotate_log(self._run_dir / "exabgp.log", LOG_MAX_BYTES)
        logfd = hostio.open_private(self._run_dir / "exabgp.log")
        try:
            self._proc = await asyncio.create_subprocess_exec(
                *argv, env={**os.environ, **self._env}, cwd=self._run_dir,
                stdin=asyncio.subprocess.DEVNULL, stdout=logfd, stderr=asyncio.subprocess.STDOUT)
        finally:
            os.close(logfd)
        self._core.spawned()
        self._child.spawned(self._proc.pid, _now())
        self._arm_relay_deadline(self._proc)
        log.info("started exabgp", extra={"node": self._node, "pid": self._proc.pid})

    def _arm_relay_deadline(self, proc: asyncio.subprocess.Process) -> None:
        def check() -> None:
            self._timers.pop("relay", None)
            conn = self._conn
            if self._proc is proc and (conn is None or conn.child_pid != proc.pid):
                self._restart_child(proc, f"its relay did not connect within {RELAY_CONNECT_TIMEOUT:.0f}s")

        self._cancel_timer("relay")
        self._timers["relay"] = asyncio.get_running_loop().call_later(RELAY_CONNECT_TIMEOUT, check)

    def _cancel_timer(self, name: str) -> None:
        handle = self._timers.pop(name, None)
        if handle is not None:
            handle.cancel()

    def _restart_child(self, proc: asyncio.subprocess.Process, reason: str) -> None:
        """Kill ``proc`` (if it is still our child); the supervisor starts a new one."""
        if self._stopping or self._proc is not proc or proc.returncode is not None:
            return
        log.error("restarting exabgp", extra={"node": self._node, "pid": proc.pid, "reason": reason})
        self._all_peers_down(self._child.restart(reason, _now()))
        proc.kill()  # SIGKILL: its sessions are gone anyway; peers keep our routes (GR)

    async def _supervise(self) -> None:
        while True:
            assert self._proc is not None, "Bug: supervising before spawn"
            began = time.monotonic()
            code = await self._proc.wait()
            log.error("exabgp exited", extra={"node": self._node, "code": code, "log": str(self._run_dir)})
            await self._drop_connection()
            down, delay = self._child.exited(code, time.monotonic() - began, _now())
            if down is not None:
                self._all_peers_down(down)
            await asyncio.sleep(delay)
            try:
                await self._spawn()
            except OSError as exc:  # transient (e.g. fork failed): the loop retries with backoff
                log.error("cannot restart exabgp", extra={"node": self._node, "error": str(exc)})

    async def _terminate_child(self) -> None:
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), STOP_TIMEOUT)
        except TimeoutError:
            log.warning("exabgp ignored SIGTERM; killing it", extra={"pid": proc.pid})
            proc.kill()
            await proc.wait()

    # -- the relay connection -------------------------------------------------------------------

    async def _accept(self, listener: socket.socket) -> None:
        """Accept connections to exabgp.sock for as long as the speaker runs: our child's relay
        gets a reader task (``_on_connect``), anyone else is closed at once."""
        loop = asyncio.get_running_loop()
        while True:
            sock, _ = await loop.sock_accept(listener)
            refusal = self._refusal(sock)
            if refusal is not None:
                self.refused_connections += 1
                log.warning("refused a connection to the exabgp socket",
                            extra={"node": self._node, "reason": refusal})
                sock.close()
                continue
            proc = self._proc
            reader = relay_reader.RelayReader(sock, cap=READ_BUFFER_MAX, name=f"bgp-read-{self._node}")
            conn = _Conn(protocol.Channel(), sock, reader, None, proc.pid if proc else None)
            self._conn = conn  # at once: a second connection is refused from here on
            reader.start()
            conn.reader_task = handler = asyncio.create_task(self._on_connect(conn, proc),
                                                             name=f"bgp-read-{self._node}")
            self._handlers.add(handler)
            handler.add_done_callback(self._handlers.discard)

    async def _on_connect(self, conn: _Conn, proc: asyncio.subprocess.Process | None) -> None:
        reader = conn.reader
        if self._conn is not conn:  # dropped before this task ran
            return
        self._cancel_timer("relay")
        self._child.relay_connected(conn.child_pid, _now())
        self._outbox.clear()  # commands meant for an ExaBGP that is gone; peers resync on 'up'
        conn.task = asyncio.create_task(self._write_loop(conn), name=f"bgp-write-{self._node}")
        self._arm_liveness(conn)
        self._run(self._core.relay_connected())
        reason = "relay connection closed"
        try:
            await self._read_loop(conn)
            if reader.error is not None:
                raise ConnectionError(reader.error)
        except (ConnectionError, ValueError) as exc:  # ValueError: a line over LINE_LIMIT
            reason = f"relay connection failed: {exc}"
            log.error("relay connection failed", extra={"node": self._node, "error": str(exc)})
        finally:
            if self._conn is conn:
                await self._drop_connection()
                if proc is not None and not await exabgp_child.exits_within(proc, CHILD_EXIT_GRACE):
                    self._restart_child(proc, reason)

    async def _read_loop(self, conn: _Conn) -> None:
        """Until the relay's EOF: everything the reader has, as one batch of lines, one batch of
        events (the core and the agent then work per batch, not per UPDATE)."""
        while (lines := await conn.reader.lines(LINE_LIMIT)) is not None:
            events: list[protocol.Event] = []
            feed = conn.channel.feed
            for line in lines:
                events += feed(line.decode("utf-8", errors="replace"))
            if self._conn is not conn:
                return
            self._handle(events)

    def _refusal(self, sock: socket.socket) -> str | None:
        """Why a new connection to exabgp.sock is refused, or None: only our child's relay may talk."""
        if self._conn is not None:
            return "a relay is already connected (one connection at a time)"
        cred = hostio.peer_credentials(sock)
        if cred.uid not in (0, os.geteuid()):
            return f"peer uid {cred.uid} is not root"
        proc = self._proc
        if proc is None or proc.returncode is not None or exabgp_child.parent_pid(cred.pid) != proc.pid:
            return f"peer pid {cred.pid} is not the relay of our exabgp child"
        return None

    async def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        self._core.relay_lost()
        if conn.task is not None:
            conn.task.cancel()  # our writer task: never the caller (it only writes)
            await asyncio.gather(conn.task, return_exceptions=True)
        # The socket is closed only once the reader thread is done with it.
        conn.reader.stop()
        await conn.reader.wait_finished()
        conn.sock.close()
        reader = conn.reader_task  # ends by itself: its reader has ended
        if reader is not None and reader is not asyncio.current_task():
            _, pending = await asyncio.wait({reader}, timeout=STOP_TIMEOUT)
            for task in pending:  # should not happen
                task.cancel()

    def _send(self, lines: Iterable[str]) -> None:
        self._outbox.extend(lines)
        self._wake.set()

    async def _write_loop(self, conn: _Conn) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            out = []
            while self._outbox and conn.channel.outstanding < ACK_WINDOW:
                if conn.channel.outstanding == 0:
                    conn.waiting_since = time.monotonic()
                out.append(conn.channel.command(self._outbox.popleft()))
            if out:
                try:
                    await loop.sock_sendall(conn.sock, b"".join(out))
                except OSError as exc:  # the relay is gone: its reader sees the EOF and says so
                    log.debug("relay socket write failed", extra={"node": self._node, "error": str(exc)})
                    return

    def _arm_liveness(self, conn: _Conn) -> None:
        """A hung ExaBGP (stopped, deadlocked) keeps its relay connected: ask it something when
        idle, and restart it when a command waits longer than the timeout for its ack."""
        interval, timeout = self._liveness

        def check() -> None:
            if self._conn is not conn:
                return
            waited = None if conn.waiting_since is None else time.monotonic() - conn.waiting_since
            if waited is None:
                self._send([protocol.probe_command()])
            elif waited > timeout and self._proc is not None and self._proc.pid == conn.child_pid:
                self._restart_child(self._proc, f"exabgp stopped answering (no ack for {waited:.0f}s)")
                return
            self._timers["liveness"] = asyncio.get_running_loop().call_later(interval, check)

        self._cancel_timer("liveness")
        self._timers["liveness"] = asyncio.get_running_loop().call_later(interval, check)

    # -- events ---------------------------------------------------------------------------------

    def _handle(self, events: list[protocol.Event]) -> None:
        """Acks and text are the writer's and the log's; the rest goes to the core."""
        rest = []
        for event in events:
            match event:
                case protocol.Ack() | protocol.CommandError():
                    conn = self._conn
                    if conn is not None:
                        conn.waiting_since = time.monotonic() if conn.channel.outstanding else None
                    self._wake.set()
                    if isinstance(event, protocol.CommandError):
                        log.warning("exabgp rejected a command",
                                    extra={"node": self._node, "command": (event.command or "")[:200]})
                case protocol.Text(text):
                    log.debug("exabgp says", extra={"node": self._node, "text": text})
                case protocol.Malformed(line, reason):
                    log.warning("malformed input from exabgp",
                                extra={"node": self._node, "reason": reason, "line": line[:200]})
                    rest.append(event)
                case _:
                    rest.append(event)
        if rest:
            self._run(self._core.feed(rest, time.monotonic(), _now()))

    def _all_peers_down(self, reason: str) -> None:
        self._run(self._core.child_lost(reason, time.monotonic(), _now()))

    def _notify(self) -> None:
        """Coalesce: one on_change per loop iteration, however many events arrived."""
        if self._notify_pending or self._stopping:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # called before the agent runs its loop: it reconciles when it starts anyway
        self._notify_pending = True
        loop.call_soon(self._call_on_change)

    def _call_on_change(self) -> None:
        self._notify_pending = False
        if not self._stopping:
            self._on_change()
