"""The BGP speaker's decisions, sans I/O: per-session state, status and causes, and what to send
when a session comes up. Events in (``protocol`` events with the current time passed in), effects
out; ``speaker`` executes the effects (sends lines, arms timers, reloads ExaBGP) and logs.
"""
from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass, replace
from datetime import datetime
from ipaddress import IPv4Address, IPv4Network

from bgp import protocol
from bgp.peers import PeerSpec

MAX_PREFIX_REASON = "max-prefix exceeded"
# What ``node status`` adds to a session kept by make-before-break (bgp.transition).
DRAINING_SESSION = "draining: no longer configured, kept until other sessions carry its routes"
DRAINING_REFLECTION = "draining: no longer a route-reflector client, still reflected to for now"
# A connect nobody answered. With TCP MD5 the peer's kernel drops a SYN with a wrong or missing key
# without a word, so to a session with a password this is also what a wrong password looks like.
CONNECT_TIMED_OUT = "Socket: Connection timed out"
PASSWORD_HINT = "(check the BGP password)"


@dataclass(frozen=True)
class PeerStatus:
    address: IPv4Address
    name: str
    peer_type: str
    state: str  # 'up' when established, else the FSM state: start/idle/active/connect/opensent...
    since: datetime | None
    info: str  # BIRD's words: 'Established', or the BGP state and why (Active Socket: Connection refused)
    reason: str = ""  # why the session is not up ('' while it is): the last that ended it, or failed

    @property
    def bgp_state(self) -> str:
        """The BGP state in BIRD's words, as ``node status`` shows it at the head of INFO."""
        return bird_state(self.state)


# ExaBGP's FSM states in BIRD's words (calicoctl node status shows BIRD's). ExaBGP retries its
# connect, or waits for the peer's, while Idle: what BIRD calls Active.
_BIRD_STATE = {"up": "Established", "start": "Idle", "idle": "Active", "active": "Active",
               "connect": "Connect", "opensent": "OpenSent", "openconfirm": "OpenConfirm"}


def bird_state(state: str) -> str:
    """ExaBGP's session state (``PeerStatus.state``) in BIRD's words: Established, Active, ..."""
    return _BIRD_STATE.get(state, state.capitalize())


@dataclass(frozen=True)
class StateChanged:
    """ExaBGP reported a state for this session (whoever waits for one may look again)."""
    address: IPv4Address


@dataclass(frozen=True)
class SessionUp:
    """The session is established: send it ``session_up_lines`` (logged by the speaker)."""
    address: IPv4Address


@dataclass(frozen=True)
class SessionDown:
    """An established session went down, for ``reason`` (ExaBGP's words; logged by the speaker).
    ``graceful``: it ended without a NOTIFICATION either way (a TCP close or reset), so the peer's
    routes stay as stale for its restart time; False: a NOTIFICATION ended it, which ends graceful
    restart too (RFC 4724 4.2; RFC 8538's N bit is implemented by neither ExaBGP 5.0.15 nor BIRD
    2.0.12), so its routes go at once, stale ones included, as BIRD drops them."""
    address: IPv4Address
    reason: str
    graceful: bool = True


@dataclass(frozen=True)
class HoldDown:
    """A session torn down for max-prefix is down: keep it out of ExaBGP's config for the
    hold-down (the session is already marked ``held_down``; the speaker arms the timer and reloads)."""
    address: IPv4Address


Effect = StateChanged | SessionUp | SessionDown | HoldDown


@dataclass
class PeerSession:
    """One configured session as ExaBGP reports it, and why it is not up."""

    spec: PeerSpec
    state: str = "start"
    since: datetime | None = None
    reason: str = ""  # the session's own last down reason (ExaBGP's, or the speaker's)
    # Why the session was ended, outranking the down reason that follows it, until it is up again:
    # a NOTIFICATION the peer sent, or a limit we enforce (e.g. "max-prefix exceeded").
    cause: str = ""
    synced: bool = False  # has been up and sent End-of-RIB at least once
    eor: bool = False  # sent End-of-RIB since it last came up
    held_down: bool = False  # left out of ExaBGP's config for MAX_PREFIX_HOLD_DOWN
    eor_owed: bool = False  # up, sent its routes, our End-of-RIB deferred (``eor_due``)
    # A NOTIFICATION went either way while the session is up: its down is not graceful.
    notified: bool = False

    def status(self) -> PeerStatus:
        s = self.spec
        if self.state == "up":
            return PeerStatus(s.address, s.name, s.peer_type, self.state, self.since, "Established")
        reason = self.cause or self.reason
        if reason == CONNECT_TIMED_OUT and s.password:
            reason = f"{reason} {PASSWORD_HINT}"
        state = bird_state(self.state)
        info = f"{state} {reason}" if reason else state
        return PeerStatus(s.address, s.name, s.peer_type, self.state, self.since, info, reason)

    def on_event(self, event: protocol.Event, now: datetime) -> list[Effect]:
        """A protocol event about this session (``now``: the wall-clock time of its arrival)."""
        match event:
            case protocol.PeerStateChanged(_, state, reason):
                return self._on_state(state, reason, now)
            case protocol.NotificationReceived(_, code, subcode, message):
                self.cause = notification_reason(code, subcode, message)
                self.notified |= self.state == "up"
            case protocol.EndOfRib(_, family) if family == protocol.IPV4_UNICAST and self.state == "up":
                self.synced = self.eor = True
        return []

    def _on_state(self, state: str, reason: str, now: datetime) -> list[Effect]:
        address = self.spec.address
        effects: list[Effect] = [StateChanged(address)]
        if state == "up":
            self.state, self.since, self.reason, self.cause, self.eor = "up", now, "", "", False
            self.notified = False
            effects.append(SessionUp(address))
        elif state == "down":
            if self.state == "up":
                notified = self.notified or notification_sent(reason)
                effects.append(SessionDown(address, reason, graceful=not notified))
            self.notified = False
            # "Socket: <error>" (a connect that failed, exabgp_main) as BIRD says it; else ExaBGP's words.
            self.reason = reason if reason.startswith("Socket: ") else f"down: {reason}" if reason else "down"
            if self.cause == MAX_PREFIX_REASON and not self.held_down:
                self.held_down = True
                effects.append(HoldDown(address))
            self.leave_up("idle", now)
        elif state not in ("established", "connected"):  # 'up' is the signal for established
            self.leave_up(state, now)
        return effects

    def child_lost(self, reason: str, now: datetime) -> bool:
        """The ExaBGP child is gone: the session is down for ``reason``, whatever ended it before
        (the child's fate is news to every session). True if it was up."""
        was_up = self.state == "up"
        self.reason, self.cause, self.notified = reason, "", False
        self.leave_up("idle", now)
        return was_up

    def leave_up(self, state: str, now: datetime) -> None:
        if self.state == "up" or self.since is None:
            self.since = now
        self.state, self.eor_owed = state, False


# RFC 4271 4.5 and 6 (and RFC 4486 for Cease) in BIRD's words, for the codes a session meets.
_NOTIFICATIONS = {
    (1, 0): "Message header error", (2, 0): "OPEN message error",
    (2, 1): "Unsupported version number", (2, 2): "Bad peer AS", (2, 3): "Bad BGP identifier",
    (2, 4): "Unsupported optional parameter", (2, 6): "Unacceptable hold time",
    (2, 7): "Required capability missing", (3, 0): "UPDATE message error",
    (4, 0): "Hold timer expired", (5, 0): "Finite state machine error", (6, 0): "Cease",
    (6, 1): "Maximum number of prefixes reached", (6, 2): "Administrative shutdown",
    (6, 3): "Peer de-configured", (6, 4): "Administrative reset", (6, 5): "Connection rejected",
    (6, 6): "Other configuration change", (6, 7): "Connection collision resolution",
    (6, 8): "Out of resources", (6, 9): "Hard reset",
}


# How ExaBGP 5 names a session it reset after sending a NOTIFICATION (its hold timer expired, an
# UPDATE it could not parse, our ``teardown``): the ``down`` reason starts with this.
_NOTIFICATION_SENT = "notification sent ("


def notification_sent(reason: str) -> bool:
    """Whether ExaBGP's ``down`` reason says it ended the session with a NOTIFICATION of its own.

    >>> notification_sent("notification sent (6,2): Cease / Administrative Shutdown")
    True
    >>> notification_sent("closing connection: peer closed the connection")
    False
    """
    return reason.startswith(_NOTIFICATION_SENT)


def notification_reason(code: int, subcode: int, message: str = "") -> str:
    """``Received: Bad peer AS (2/2)``: a NOTIFICATION from the peer, as BIRD shows it, codes kept
    (ExaBGP's own text, when it has one, follows)."""
    name = _NOTIFICATIONS.get((code, subcode)) or _NOTIFICATIONS.get((code, 0)) or "Notification"
    text = f"Received: {name} ({code}/{subcode})"
    return f"{text} {message}".rstrip() if message and message.lower() != name.lower() else text


def session_up_lines(address: IPv4Address, advertised: frozenset[IPv4Network],
                     reflected: list[str], end_of_rib: bool = True) -> list[str]:
    """What a session that came up gets: every prefix we advertise, then what we reflect to it
    (its Adj-RIB-Out), then End-of-RIB, last: a graceful-restart helper drops our stale routes
    at End-of-RIB (RFC 4724), so nothing may follow it. ``end_of_rib=False``: it is deferred
    (``eor_due``; ``owed_eors`` sends it later)."""
    eor = [protocol.eor_command(address)] if end_of_rib else []
    return protocol.announce_commands(advertised, address) + reflected + eor


@dataclass(frozen=True)
class Deferral:
    """Where a speaker is in RFC 4724's selection deferral: whether it reflects (has a cluster
    id), how long since it started (``waited``, seconds) and the limit (``deadline``)."""
    reflecting: bool
    waited: float
    deadline: float


def _ibgp(spec: PeerSpec) -> bool:
    return spec.asn == spec.local_asn


def feeds(source: PeerSpec, target: PeerSpec) -> bool:
    """Whether a route reflector may reflect ``source``'s routes to ``target`` (RFC 4456 6):
    both iBGP, and one of them a client (a non-client's routes go to clients only)."""
    return (source.address != target.address and _ibgp(source) and _ibgp(target)
            and (source.rr_client or target.rr_client))


def eor_due(target: PeerSession, sessions: Iterable[PeerSession], deferral: Deferral) -> bool:
    """Whether End-of-RIB may go to ``target`` now.

    RFC 4724 4.1: a restarting speaker defers its route selection, and so its End-of-RIB, until
    it has End-of-RIB from its peers or a deferral timer expires; a helper drops whatever of our
    routes it still holds as stale at our End-of-RIB. What a route reflector sends a peer is what
    it reflects from the others, so a restarted reflector that sent End-of-RIB before it learned
    them would make its clients flush the routes they hold from each other (traffic lost until
    they come back through it). So End-of-RIB to a reflection target waits until every session
    that ``feeds`` it has been up and sent End-of-RIB (``synced``; a session held down for
    max-prefix is not waited for), or ``deferral.deadline`` passed since the start (the speaker's
    sync deadline: the same deadline after which its learned routes count as complete).

    Nothing else waits: a speaker that does not reflect sends only its own prefixes, known
    before any session is up, and an eBGP peer gets nothing reflected. Non-clients never feed
    each other, so two reflectors restarting together do not wait for each other.

    >>> def peer(i, client):
    ...     return PeerSession(PeerSpec(IPv4Address(f"10.0.0.{i}"), 64512, 64512, passive=False,
    ...                                 peer_type="global", name=f"n{i}", rr_client=client))
    >>> a, b, other_rr = peer(1, True), peer(2, True), peer(3, False)
    >>> eor_due(a, [a, b, other_rr], Deferral(reflecting=True, waited=1.0, deadline=30.0))
    False
    >>> b.synced = other_rr.synced = True
    >>> eor_due(a, [a, b, other_rr], Deferral(reflecting=True, waited=1.0, deadline=30.0))
    True
    """
    if not deferral.reflecting or deferral.waited >= deferral.deadline:
        return True
    return all(s.synced or s.held_down for s in sessions if feeds(s.spec, target.spec))


def greeting(session: PeerSession, sessions: Iterable[PeerSession], advertised: frozenset[IPv4Network],
             reflected: list[str], deferral: Deferral) -> list[str]:
    """``session_up_lines`` for a session that came up, End-of-RIB included only if it is due
    (``eor_due``); else the session is owed it (``owed_eors``)."""
    session.eor_owed = not eor_due(session, sessions, deferral)
    return session_up_lines(session.spec.address, advertised, reflected, not session.eor_owed)


def owed_eors(sessions: Iterable[PeerSession], deferral: Deferral) -> list[str]:
    """End-of-RIB to each session that is up and owed one, now that it is due (``eor_due``);
    those sessions are owed nothing more."""
    sessions = list(sessions)
    due = [s for s in sessions if s.eor_owed and s.state == "up" and eor_due(s, sessions, deferral)]
    for session in due:
        session.eor_owed = False
    return [protocol.eor_command(s.spec.address) for s in due]


def in_sync(peers: list[PeerSession], started_at: float | None, now: float, deadline: float) -> bool:
    """Routes are in sync once every session was up and sent End-of-RIB, or ``deadline`` seconds
    passed since ``started_at`` (monotonic ``now``); never before the speaker started."""
    if started_at is None:
        return False
    return now - started_at >= deadline or all(p.synced for p in peers)


def tear_down_over_limit(sessions: dict[IPv4Address, PeerSession],
                         exceeded: list[IPv4Address]) -> list[str]:
    """Cease (Maximum Number of Prefixes Reached) to each peer over its limit; a configured one
    shows ``MAX_PREFIX_REASON`` as its cause until it is up again."""
    for address in exceeded:
        session = sessions.get(address)
        if session is not None:
            session.cause = MAX_PREFIX_REASON  # outranks the down reason until it is up again
            session.notified |= session.state == "up"  # our Cease ends it
    return [protocol.teardown_command(address, protocol.CEASE_MAX_PREFIXES) for address in exceeded]


def reload_at(first: float, now: float, debounce: float, max_delay: float) -> float:
    """When to reload ExaBGP for a burst of peer changes that began at ``first``: ``debounce``
    after the last change (``now``), but never later than ``max_delay`` after the first (a steady
    trickle of changes must still reach ExaBGP)."""
    return min(now + debounce, first + max_delay)


def draining_status(status: PeerStatus, draining: Collection[IPv4Address],
                    wanted: Collection[IPv4Address]) -> PeerStatus:
    """``status`` with why make-before-break keeps the session, if it does (``draining``: the
    sessions kept; ``wanted``: the addresses of the sessions wanted)."""
    if status.address not in draining:
        return status
    why = DRAINING_REFLECTION if status.address in wanted else DRAINING_SESSION
    return replace(status, info=f"{status.info}; {why}")
