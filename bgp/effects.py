"""What ``speaker_core.SpeakerCore`` asks ``speaker.Speaker`` to do: its effects, and the names of
its timers. Purely computational; no I/O (h11 keeps its events apart from its connection too).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv4Address

# Timer names (``Arm``/``Cancel``/``timer_fired``); a hold-down timer is per peer: ``hold_down_timer``.
SYNC = "sync"  # sync_deadline after start: learned routes count as complete
EXPIRY = "expiry"  # the next graceful-restart stale route expires
RELOAD = "reload"  # the debounced ExaBGP reload (or restart, after set_local)
TRANSITION = "transition"  # make-before-break: the plan changes by time alone
CEASE = "cease"  # removed peers that were sent a Cease: apply the new peer set anyway
_HOLD_DOWN = "hold-down "  # + the peer's address


def hold_down_timer(address: IPv4Address) -> str:
    return f"{_HOLD_DOWN}{address}"


@dataclass(frozen=True)
class Send:
    """Queue these lines for ExaBGP, in order."""
    lines: tuple[str, ...]


@dataclass(frozen=True)
class Arm:
    """Call ``timer_fired(timer, ...)`` at monotonic time ``at`` (replaces an armed one of that name)."""
    timer: str
    at: float


@dataclass(frozen=True)
class Cancel:
    timer: str


@dataclass(frozen=True)
class WriteConfig:
    """Write ExaBGP's config (``config_not_written()`` if that fails)."""
    text: str
    peers: int


@dataclass(frozen=True)
class RestartChild:
    """Restart the ExaBGP child (graceful restart keeps the routes on both sides meanwhile)."""
    reason: str


@dataclass(frozen=True)
class Notify:
    """Learned routes or peer status may have changed: call ``on_change`` (coalesced)."""


@dataclass(frozen=True)
class Log:
    level: str  # a logging.Logger method: 'info', 'warning'
    message: str
    fields: dict = field(default_factory=dict)


Effect = Send | Arm | Cancel | WriteConfig | RestartChild | Notify | Log
NOTIFY = Notify()


def hold_down_peer(timer: str) -> IPv4Address | None:
    """The peer of a ``hold_down_timer`` name (None for any other timer)."""
    return IPv4Address(timer.removeprefix(_HOLD_DOWN)) if timer.startswith(_HOLD_DOWN) else None
