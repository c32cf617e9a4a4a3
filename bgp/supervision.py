"""What the speaker decides about its ExaBGP child, sans I/O: the child's status as ``node status``
and the health probe show it, why it was replaced, and how long to wait before starting the next.

Purely computational; no I/O. ``speaker`` starts, kills and waits for the child and tells
``ChildStatus`` what happened, with the wall-clock time passed in.

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

from dataclasses import dataclass
from datetime import datetime

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
