"""ExaBGP's entry point as the speaker runs it: ``python exabgp_main.py server <conf>``.

Standard library only, run as a script. It makes ``import ssl`` fail, adapts the session
behaviours below and, through ``exabgp_share.py``, the API's route injection (one parsed route
shared by all the peers a command names instead of a deep copy per peer, and the command's
neighbor selector matched without a regex per peer); for speed it enlarges the pipe to its API
process (``_large_api_pipe``), makes debug-log calls no-ops while debug logging is off
(``_quiet_debug``) and runs ``SPEAKER_AHEAD`` nice steps ahead of the agent
(``_speaker_first``); then it runs ExaBGP's own ``__main__`` unchanged.

Cease on teardown: ExaBGP 5.0.15 closes a session whose graceful-restart capability was negotiated
*without* a NOTIFICATION even when the API asked ``neighbor X teardown N`` -- so a peer we remove
(a de-configured BGPPeer) takes the silent close for a restart and keeps our routes as stale for
its whole restart time. For the exact version this was read in, an API teardown turns that
neighbor's graceful-restart off first, so the Cease is sent; any other version is left alone with a
warning (tests/functional/test_bgp_interop.py fails if the behaviour changes under us). An agent
stopping for a restart never uses teardown: ExaBGP's own shutdown (SIGTERM) closes every session
without a NOTIFICATION, whatever was negotiated, so graceful restart keeps working for those. A
node leaving for good uses teardown (Administrative Shutdown), and wants the Cease.

A peer torn down through the API stays down for ``TEARDOWN_HOLD`` seconds: ExaBGP's teardown
keeps the neighbor configured and resets its connect backoff, so it connected again within
~15 ms of its Cease, and that new session was then closed without a NOTIFICATION by the reload
that removes the neighbor (which follows the Cease's ``down``), so the peer saw a Cease, a new
session and a silent close. Every teardown the agent sends is followed by that peer's removal
(a de-configured peer, a max-prefix hold-down, a stop for good), so while held the peer does not
connect out, and an incoming connection from it is refused with a Cease (Peer De-configured, as
ExaBGP refuses an address with no neighbor); a reload that changes the neighbor ends the hold
(the agent wants it again, as it was before), and so does the end of the hold time, should no
reload come.

A neighbor removed by a reload while its session is up gets a Cease (Peer De-configured) too, as
BIRD does on a reconfiguration: ExaBGP 5.0.15 closed it without a NOTIFICATION, which a
graceful-restart helper takes for a restart (it keeps our routes as stale for its restart time).
The agent sends its own Cease first to every session it knows is up, but a session ExaBGP has
just established is not known up until the agent has read ExaBGP's ``up``: a peer removed in
between was closed without a word. For the exact version, such a removal makes the session's own
loop send the Cease and close, as a teardown does (``_cease_on_removal``). A neighbor replaced by
one with the same address (its key changed, e.g. its AS number) is closed as before, without a
NOTIFICATION: the peer is still wanted, and both sides keep the routes (graceful restart) until
the new session is up.

Why a session is not up (``node status``, as BIRD's ``Active  Socket: Connection refused``):
ExaBGP 5.0.15 takes a refused connect for an established one (its ``tcp.ready`` reads and so
clears ``SO_ERROR``, then finds the socket writable), fails on the OPEN it writes, and tells the
API only ``down: closing connection``; a connect failure while Idle is not told at all. For that
exact version, a connect that failed raises with the socket's error, and a session reset reports
its error to the API as the ``down`` reason, Idle included (``Socket: Connection refused``).
Other versions are left alone with a warning (tests/functional/test_bgp_status.py fails if the
behaviour changes under us). A connect whose SYNs go unanswered gives up after
``CONNECT_SYN_RETRIES`` retransmissions (~15 s, not the kernel's default ~2 min), so that its
``Socket: Connection timed out`` is seen while it matters: with TCP MD5 a wrong or missing key
makes the peer's kernel drop our SYNs without a word, and that is the only sign of it
(tests/functional/test_bgp_md5.py). ExaBGP tries again after its usual backoff.

ExaBGP speaks plain BGP over TCP and never uses TLS, but its reactor imports
asyncio, and asyncio imports ssl when it can: OpenSSL mapped and initialised in every node's
ExaBGP, 4 MB of RSS (issue 7's memory budget, ``python -m bench.node_memory``). asyncio treats a
failed ``import ssl`` as "no TLS here" by design.
"""
import os
import runpy
import sys

PINNED_EXABGP = "5.0.15"
CONNECT_SYN_RETRIES = 3  # SYNs sent at 0, 1, 3 and 7 s; ETIMEDOUT at ~15 s
# How long a peer torn down through the API stays down, waiting for the reload that removes it:
# the agent reloads at most ~1 s after the Cease's ``down`` (debounce), or 3 s after a Cease
# whose ``down`` never came (speaker_core.CEASE_TIMEOUT); the rest is room for a loaded machine.
TEARDOWN_HOLD = 10.0


def _pinned(version: str, left: str) -> bool:
    """Whether ``version`` is the ExaBGP our adaptations are written for; if not, say on stderr
    what is ``left`` as upstream has it (the adaptation is not applied)."""
    if version == PINNED_EXABGP:
        return True
    print(f"pycalico: exabgp {version} is not {PINNED_EXABGP}: {left}", file=sys.stderr)
    return False


def _cease_on_teardown() -> None:
    import time
    import uuid

    from exabgp.reactor.peer import ACTION, Peer
    from exabgp.version import version

    if not _pinned(version, "teardown left as it is (a removed peer may keep our routes as stale, "
                            "and connects again before it is removed)"):
        return
    original, original_run = Peer.teardown, Peer.run
    original_connection, original_reestablish = Peer.handle_connection, Peer.reestablish

    def held(peer) -> bool:
        return time.monotonic() < getattr(peer, "_pycalico_held_until", 0.0)

    def teardown(self, code, restart=True):
        self.neighbor["capability"]["graceful-restart"] = False  # the peer is being removed
        original(self, code, restart)
        self._pycalico_held_until = time.monotonic() + TEARDOWN_HOLD

    def run(self):
        if self.generator is None and self.proto is None and self._restart and held(self):
            return ACTION.LATER  # no new connection: the reload that removes it is coming
        return original_run(self)

    def handle_connection(self, connection):
        if not held(self):
            return original_connection(self, connection)
        self.reactor.asynchronous.schedule(
            str(uuid.uuid1()), "sending notification (6,3)",
            connection.notification(6, 3, "no session configured for the peer"))
        return True  # refused (the listener only logs it)

    def reestablish(self, restart_neighbor=None):
        self._pycalico_held_until = 0.0  # a changed neighbor: the agent wants the peer
        original_reestablish(self, restart_neighbor)

    Peer.teardown, Peer.run = teardown, run
    Peer.handle_connection, Peer.reestablish = handle_connection, reestablish


def _cease_on_removal() -> None:
    from exabgp.reactor.peer import FSM, Peer
    from exabgp.version import version

    if not _pinned(version, "a removed neighbor's session is closed without a Cease"):
        return
    original = Peer.remove

    def remove(self):
        address = self.neighbor["peer-address"].top()
        replaced = any(n["peer-address"].top() == address  # a changed key (e.g. its AS): a restart
                       for n in self.reactor.configuration.neighbors.values())
        if replaced or self.fsm != FSM.ESTABLISHED or not self.generator:
            original(self)
            return
        # Its loop sees the teardown, sends Cease/3 and closes; the reactor then drops the peer
        # (it does not restart). Graceful restart off, or that loop closes without a word.
        self.neighbor["capability"]["graceful-restart"] = False
        self._teardown, self._restart = 3, False
        self._delay.reset()

    Peer.remove = remove


def _socket_errors_reported() -> None:
    import os
    import select
    import socket

    from exabgp.reactor.network import outgoing
    from exabgp.reactor.network.error import NotConnected, error
    from exabgp.reactor.peer import FSM, Peer
    from exabgp.version import version

    if not _pinned(version, "connect errors left as they are (node status shows no socket error)"):
        return

    def ready(io):
        """tcp.ready, except that a connect the kernel failed raises with its error, and an
        unanswered one fails after CONNECT_SYN_RETRIES."""
        io.setsockopt(socket.IPPROTO_TCP, socket.TCP_SYNCNT, CONNECT_SYN_RETRIES)
        poller = select.poll()
        poller.register(io, select.POLLOUT | select.POLLNVAL | select.POLLERR)
        while True:
            events = 0
            for _, event in poller.poll(0):
                events |= event
            if events & (select.POLLOUT | select.POLLERR | select.POLLHUP):
                err = io.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if not err:
                    yield True, "connection established"
                    return
                if err in error.block:
                    yield False, f"connect attempt failed, retrying, reason {err}"
                    return
                raise NotConnected(f"Socket: {os.strerror(err)}")
            if events & select.POLLNVAL:
                yield False, "connect attempt failed, issue with reading on the network, retrying"
                return
            yield False, "waiting for socket to become ready"

    original_close = Peer._close

    def close(self, message="", error=""):
        if error:
            message = str(error) if str(error).startswith("Socket: ") else f"{message}: {error}"
            if self.fsm in (FSM.IDLE, FSM.ACTIVE) and self.neighbor.api["neighbor-changes"]:
                self.reactor.processes.down(self.neighbor, message)  # the original tells only others
        original_close(self, message, error)

    outgoing.ready = ready
    Peer._close = close


# What ExaBGP may write to its API process while the agent is busy elsewhere: ExaBGP's write to
# that pipe blocks when it is full ("XXX: FIXME: This is potentially blocking"), and a blocked
# ExaBGP reads nothing from its peers. A 64 KiB pipe plus the relay's socket buffer held ~20
# UPDATEs (~16k routes) of JSON; 100k learned routes are ~2 MB. Pages are used only as filled.
# Above /proc/sys/fs/pipe-max-size (1 MiB by default: ~50k routes) needs CAP_SYS_RESOURCE;
# without it the pipe gets that maximum.
API_PIPE_BYTES = 4 * 2**20


def _large_api_pipe() -> None:
    import fcntl

    from exabgp.reactor.api.processes import Processes
    from exabgp.version import version

    if not _pinned(version, "API pipe left at its default size (a busy agent may stall ExaBGP)"):
        return
    original = Processes._start

    def start(self, process):
        original(self, process)
        child = self._process.get(process)
        if child is None or child.stdin is None:
            return
        for size in (API_PIPE_BYTES, _pipe_max()):  # above pipe-max-size needs CAP_SYS_RESOURCE
            try:
                fcntl.fcntl(child.stdin.fileno(), fcntl.F_SETPIPE_SZ, size)
                return
            except OSError:
                continue

    Processes._start = start


def _quiet_debug() -> None:
    """ExaBGP calls ``log.debug`` three times per received prefix (parser and routes), and each
    call goes through two more functions before finding the level off: ~14% of its CPU while it
    receives 100k routes (cProfile). Once its logging is set up (``log.init``), a debug level that
    is off makes ``log.debug`` a no-op, as ExaBGP's own ``log.silence`` does; on, it is ExaBGP's."""
    from exabgp.logger import _log, log
    from exabgp.logger.option import option
    from exabgp.version import version

    if not _pinned(version, "debug logging calls left as they are"):
        return
    original = _log.init

    def eat(cls, message, source="", level="DEBUG"):
        pass

    def init(env):
        original(env)
        if option.logit.get("DEBUG"):
            log.debug = _log.__dict__["debug"]
        else:
            log.debug = classmethod(eat)

    _log.init = staticmethod(init)


def _pipe_max() -> int:
    try:
        with open("/proc/sys/fs/pipe-max-size") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 2**16


# ExaBGP runs this many nice steps ahead of the agent that starts it. It is the first stage of the
# pipeline (it parses UPDATEs while the agent programs what it has parsed) and the process whose
# timers must not slip (keepalives, the hold timer). At the agent's own priority, the agent's
# route programming took cores from ExaBGP's parse whenever both had work: on 2 cores, 100k
# learned routes reached the kernel 1.15x as late as ExaBGP alone parses them, 1.06x with this
# (bench.bgp_convergence, interleaved runs); the agent's work is no smaller, it waits for a core.
SPEAKER_AHEAD = 5


def _speaker_first() -> None:
    """Run this process ``SPEAKER_AHEAD`` nice steps ahead of its parent's priority (inherited:
    the agent's), before ExaBGP starts a thread; its API relay (socat, its child) inherits it.
    That needs CAP_SYS_NICE (the DaemonSet's agent runs as root); without it the priority stays
    the agent's, and ExaBGP's log (stderr) says so."""
    own = os.getpriority(os.PRIO_PROCESS, 0)
    want = max(-20, own - SPEAKER_AHEAD)
    try:
        os.setpriority(os.PRIO_PROCESS, 0, want)
    except OSError as err:
        print(f"pycalico: ExaBGP left at nice {own}, the agent's: nice {want} needs CAP_SYS_NICE "
              f"({err.strerror})", file=sys.stderr, flush=True)


if __name__ == "__main__":
    _speaker_first()
    from exabgp_share import share_routes  # next to this file: standard library and ExaBGP only

    sys.path.pop(0)  # this file's directory (bgp/): its modules must not shadow anything
    sys.modules["ssl"] = None  # type: ignore[assignment]  # `import ssl` now raises ImportError
    _cease_on_teardown()
    _cease_on_removal()
    share_routes()
    _socket_errors_reported()
    _large_api_pipe()
    _quiet_debug()
    sys.argv[0] = "exabgp"
    runpy.run_module("exabgp", run_name="__main__", alter_sys=True)
