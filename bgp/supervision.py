"""What the speaker decides about its ExaBGP child, sans I/O: the child's status as ``node status``
and the health probe show it, why it was replaced, and how long to wait before starting the next;
and why a session where we are the passive side is down, from the kernel's TCP MD5 drop counters
(``Md5Watch``).

Purely computational; no I/O. ``speaker`` starts, kills and waits for the child and tells
``ChildStatus`` what happened, with the wall-clock time passed in; it reads the counters from
/proc and gives them to ``speaker_core``, which keeps the ``Md5Watch``.

>>> from datetime import datetime, timezone
>>> t = datetime(2026, 1, 1, tzinfo=timezone.utc)
>>> child = ChildStatus()
>>> child.spawned(41, t).status.state
'starting'
>>> child.restart("exabgp stopped answering (no ack for 31s)", t)
'down: exabgp stopped answering (no ack for 31s)'
>>> child.exited(-9, ran_for=120.0, now=t)  # the kill's exit: the first cause stays
(None, 1.0)
>>> child.spawned(42, t).status.reason
'exabgp stopped answering (no ack for 31s); exabgp pid 42 waiting for its relay'
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from ipaddress import IPv4Address

RESTART_BACKOFF = (1.0, 30.0)  # the first delay before a new child, and the longest
STEADY_RUN = 60.0  # a child that ran this long is restarted after the first delay again


@dataclass(frozen=True)
class SpeakerStatus:
    """The ExaBGP child as a whole: 'running' (relay connected), 'starting', 'restarting', 'stopped'."""

    state: str
    since: datetime | None
    reason: str


class ChildStatus:
    def __init__(self) -> None:
        self.status = SpeakerStatus("stopped", None, "not started")
        self._cause = ""  # why the current child replaced the last one, until its relay connects
        self._delay = RESTART_BACKOFF[0]

    def spawned(self, pid: int, now: datetime) -> ChildStatus:
        waiting = f"exabgp pid {pid} waiting for its relay"
        if self._cause:  # keep saying why until the new child is up
            return self._set("restarting", f"{self._cause}; {waiting}", now)
        return self._set("starting", waiting, now)

    def relay_connected(self, pid: int | None, now: datetime) -> None:
        self._cause = ""
        self._set("running", f"exabgp pid {pid}", now)

    def restart(self, reason: str, now: datetime) -> str:
        """We are killing the child for ``reason``: what every session's down reason is."""
        self._cause = reason
        self._set("restarting", reason, now)
        return f"down: {reason}"

    def exited(self, code: int, ran_for: float, now: datetime) -> tuple[str | None, float]:
        """The child exited after ``ran_for`` seconds: every session's down reason (None when a
        restart already gave one: its cause, e.g. a lost relay, is the news, not the exit that
        follows), and the seconds to wait before the next child (doubling up to the longest; the
        first again after a child that ran ``STEADY_RUN``)."""
        down = None
        if self.status.state != "restarting":
            down = self.restart(f"exabgp exited with code {code}", now)
        delay = RESTART_BACKOFF[0] if ran_for > STEADY_RUN else self._delay
        self._delay = min(delay * 2, RESTART_BACKOFF[1])
        return down, delay

    def stopped(self, now: datetime) -> None:
        self._set("stopped", "stopped by the agent", now)

    def _set(self, state: str, reason: str, now: datetime) -> ChildStatus:
        if (state, reason) != (self.status.state, self.status.reason):
            self.status = SpeakerStatus(state, now, reason)
        return self


# -- what the kernel's TCP MD5 counters say about sessions we wait for ---------------------------
#
# With TCP MD5 (RFC 2385) a connection attempt with a wrong or missing key is dropped by our own
# kernel before any socket sees it: ExaBGP, listening, learns nothing, and a session where we are
# the passive side shows no reason. The kernel counts the drops per network namespace in
# /proc/net/netstat ``TcpExt:`` and nowhere per peer: no request socket is created (``ss -tani``
# shows only the listener), and its "MD5 Hash failed for (SRC, DST)" log line is rate-limited and
# needs dmesg. Checked on Linux 6.18 with BIRD connecting to our listening ExaBGP: one count per
# SYN, retransmissions included, in the listener's namespace (the connecting side counts nothing):
#   - we hold the peer's key, it signs with another: ``TCPMD5Failure``;
#   - we hold the peer's key, it does not sign: ``TCPMD5NotFound``;
#   - we hold no key for it, it signs: ``TCPMD5Unexpected``.

MD5_FIELDS = {"TCPMD5NotFound": "unsigned", "TCPMD5Failure": "failure", "TCPMD5Unexpected": "unexpected"}


@dataclass(frozen=True)
class Md5Counts:
    """The namespace's TCP MD5 drop counters (``MD5_FIELDS``)."""

    unsigned: int = 0  # unsigned, from an address we hold a key for
    failure: int = 0  # signed with another key
    unexpected: int = 0  # signed, from an address we hold no key for

    def __sub__(self, other: Md5Counts) -> Md5Counts:
        return Md5Counts(self.unsigned - other.unsigned, self.failure - other.failure,
                         self.unexpected - other.unexpected)


def md5_counts(netstat: str) -> Md5Counts | None:
    """The counters in the text of /proc/net/netstat (None if it has none: no TCP MD5 support).

    >>> md5_counts("TcpExt: SyncookiesSent TCPMD5NotFound TCPMD5Failure TCPMD5Unexpected\\n"
    ...            "TcpExt: 0 3 5 0\\nIpExt: InNoRoutes\\nIpExt: 0\\n")
    Md5Counts(unsigned=3, failure=5, unexpected=0)
    """
    lines = [line.split() for line in netstat.splitlines() if line.startswith("TcpExt:")]
    if len(lines) < 2:
        return None
    values = dict(zip(lines[0][1:], lines[1][1:]))
    if not all(name in values for name in MD5_FIELDS):
        return None
    return Md5Counts(**{attr: int(values[name]) for name, attr in MD5_FIELDS.items()})


@dataclass(frozen=True)
class Md5Session:
    """What ``Md5Watch`` needs of one configured session: ``key`` changes with its state (e.g.
    (spec, state, since)): the drops are counted from the last change of it."""

    address: IPv4Address
    key: object
    up: bool
    passive: bool
    password: bool


class Md5Watch:
    """Why a session where we are the passive side is not up, from the namespace's TCP MD5 drop
    counters: the drops since its last state change (its baseline, taken at the first sample
    after the change), if they rose. The counters are per namespace, so a drop is attributed to
    a session only by elimination: the kernel holds a key for each session with a password (a
    drop with a key: ``unsigned`` or ``failure``) and none for the others (``unexpected``); when
    several sessions of the kind are down, the text says the kernel does not say which.

    >>> from ipaddress import IPv4Address
    >>> a = Md5Session(IPv4Address("10.0.0.2"), key=("idle", None), up=False, passive=True, password=True)
    >>> watch = Md5Watch()
    >>> watch.sample(Md5Counts(failure=4), [a])
    >>> watch.sample(Md5Counts(failure=9), [a])
    >>> watch.reasons([a])[a.address]
    'Passive: TCP MD5 dropped 5 incoming segments signed with another password (check the BGP password)'
    """

    def __init__(self) -> None:
        self._base: dict[IPv4Address, tuple[object, Md5Counts]] = {}
        self._last: Md5Counts | None = None

    @staticmethod
    def wanted(sessions: Iterable[Md5Session]) -> bool:
        """Some passive session is down: sample the counters."""
        return any(s.passive and not s.up for s in sessions)

    def sample(self, counts: Md5Counts | None, sessions: Iterable[Md5Session]) -> None:
        """The counters now (None: unknown, e.g. no child to read them from)."""
        if counts is None:
            return
        self._last = counts
        base = {}
        for s in sessions:
            if s.passive and not s.up:
                kept = self._base.get(s.address)
                base[s.address] = kept if kept is not None and kept[0] == s.key else (s.key, counts)
        self._base = base

    def reasons(self, sessions: Iterable[Md5Session]) -> dict[IPv4Address, str]:
        """Each passive session that is down and has drops counted since its baseline: why."""
        sessions = list(sessions)
        if self._last is None:
            return {}
        down = [s for s in sessions if not s.up]
        out = {}
        for s in down:
            kept = self._base.get(s.address)
            if not s.passive or kept is None or kept[0] != s.key:
                continue
            text = _dropped(self._last - kept[1], s.password)
            if text:
                others = sum(1 for o in down if o.password == s.password and o.address != s.address)
                out[s.address] = _md5_reason(text, others, s.password)
        return out


def _dropped(delta: Md5Counts, password: bool) -> str:
    """What the counters' rise says, for a session with a ``password`` or without."""
    if not password:
        n = delta.unexpected
        return (f"{_segments(n)} signed with a password, from addresses it holds no key for;"
                " this session has no password") if n > 0 else ""
    failed, unsigned = max(delta.failure, 0), max(delta.unsigned, 0)
    if failed and unsigned:
        return f"{_segments(failed + unsigned)} ({failed} signed with another password, {unsigned} unsigned)"
    if failed:
        return f"{_segments(failed)} signed with another password"
    return f"{_segments(unsigned)} without a signature" if unsigned else ""


def _segments(n: int) -> str:
    return f"{n} incoming segment" if n == 1 else f"{n} incoming segments"


def _md5_reason(dropped: str, others: int, password: bool) -> str:
    text = f"Passive: TCP MD5 dropped {dropped}"
    if others:
        kind = "with" if password else "without"
        who = "1 other session" if others == 1 else f"{others} other sessions"
        verb = "is" if others == 1 else "are"
        text += (f", from this peer or from {who} {kind} a password that {verb} down"
                 " (the kernel counts per namespace, not per peer)")
    return f"{text} (check the BGP password)"
