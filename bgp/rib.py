"""Adj-RIB-In per peer, import filter, best path and graceful-restart (RFC 4724 helper) retention.

Purely computational; no I/O. Time comes from an injected clock, so stale-route expiry is tested
with a fake one.

ExaBGP keeps none of this for us (no best path, no retention of a restarting peer's routes), so
the speaker feeds every parsed event here and asks ``best()`` for what may reach the kernel.

The Adj-RIB-In keeps what peers sent before filtering, and ``best()`` filters against the current
pools: a pool created after a peer announced a block then takes effect without a route refresh.
The rejection counters count announcements when they arrive, against the filter of that moment.

>>> from ipaddress import IPv4Address as A, IPv4Network as N
>>> rib = Rib(clock=lambda: 0.0)
>>> rib.set_import_filter(frozenset({N("10.244.0.0/16")}), frozenset({N("10.244.1.0/26")}))
>>> rib.announce(A("10.0.0.2"), N("10.244.2.0/26"), A("10.0.0.2"))
>>> rib.announce(A("10.0.0.2"), N("192.0.2.0/24"), A("10.0.0.2"))
>>> sorted(str(r.prefix) for r in rib.best()), rib.counters["rejected_outside_pools"]
(['10.244.2.0/26'], 1)
"""
from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network

from bgp import protocol

log = logging.getLogger(__name__)

DEFAULT_RESTART_TIME = 120.0


@dataclass(frozen=True)
class LearnedRoute:
    prefix: IPv4Network
    nexthop: IPv4Address
    peer: IPv4Address


@dataclass(frozen=True)
class _Path:
    nexthop: IPv4Address
    stale_until: float | None = None  # None: fresh


class Rib:
    def __init__(self, clock: Callable[[], float] = time.monotonic,
                 restart_time: float = DEFAULT_RESTART_TIME) -> None:
        self._clock = clock
        self._default_restart = restart_time
        self._restart_time: dict[IPv4Address, float | None] = {}
        self._restart_cap: dict[IPv4Address, float] = {}
        self._paths: dict[IPv4Address, dict[IPv4Network, _Path]] = {}
        self._pools: frozenset[IPv4Network] = frozenset()
        self._own: frozenset[IPv4Network] = frozenset()
        self.counters: Counter[str] = Counter()

    # -- configuration ----------------------------------------------------------------------

    def set_import_filter(self, pools: frozenset[IPv4Network], own_blocks: frozenset[IPv4Network]) -> bool:
        """Accept only prefixes inside a pool, outside our own blocks, not a default route.

        ``pools`` are all pools, disabled ones included: disabling a pool only stops new allocations,
        its pods keep their routes. Returns whether the filter changed (nothing to redo if not).
        """
        pools, own_blocks = frozenset(pools), frozenset(own_blocks)
        if (pools, own_blocks) == (self._pools, self._own):
            return False
        self._pools, self._own = pools, own_blocks
        return True

    def set_restart_cap(self, peer: IPv4Address, seconds: float) -> None:
        """The longest we keep ``peer``'s routes after it goes down, whatever its OPEN offered
        (``nodeMeshMaxRestartTime`` / BGPPeer ``maxRestartTime``): a dead peer that offered 4095 s
        must not keep its routes in our kernel for 68 minutes."""
        if seconds < 0:
            raise ValueError(f"restart cap for {peer}: {seconds} is negative")
        self._restart_cap[peer] = float(seconds)

    def rejection(self, prefix: IPv4Network) -> str | None:
        """Why the import filter rejects ``prefix`` (a counter name), or None when it accepts it."""
        if prefix.prefixlen == 0:
            return "rejected_default_route"
        if any(prefix.subnet_of(own) for own in self._own):
            return "rejected_own_block"
        if not any(prefix.subnet_of(pool) for pool in self._pools):
            return "rejected_outside_pools"
        return None

    # -- events -----------------------------------------------------------------------------

    def apply(self, event: protocol.Event) -> bool:
        """Feed one parsed protocol event; return whether best() may have changed."""
        match event:
            case protocol.RouteAnnounced(peer, prefix, nexthop):
                self.announce(peer, prefix, nexthop)
            case protocol.RouteWithdrawn(peer, prefix):
                self.withdraw(peer, prefix)
            case protocol.EndOfRib(peer, family) if family == protocol.IPV4_UNICAST:
                self.end_of_rib(peer)
            case protocol.OpenReceived(peer, _, _, restart):
                self.set_restart_time(peer, restart)
                return False
            case protocol.PeerStateChanged(peer, "down", _):
                self.peer_down(peer)
            case protocol.Malformed():
                self.counters["malformed"] += 1
                return False
            case _:
                return False
        return True

    def announce(self, peer: IPv4Address, prefix: IPv4Network, nexthop: IPv4Address) -> None:
        if not _well_formed(peer, prefix, nexthop):
            self.counters["malformed"] += 1
            log.warning("dropped malformed route", extra={"peer": str(peer), "prefix": str(prefix)})
            return
        reason = self.rejection(prefix)
        if reason is not None:
            self.counters[reason] += 1
            log.debug("route rejected by import filter",
                      extra={"peer": str(peer), "prefix": str(prefix), "reason": reason})
        self._paths.setdefault(peer, {})[prefix] = _Path(nexthop)

    def withdraw(self, peer: IPv4Address, prefix: IPv4Network) -> None:
        self._paths.get(peer, {}).pop(prefix, None)

    def set_restart_time(self, peer: IPv4Address, seconds: int | None) -> None:
        """The restart time the peer offered in its OPEN; None: no graceful restart capability."""
        self._restart_time[peer] = None if seconds is None else float(seconds)

    def restart_time(self, peer: IPv4Address) -> float | None:
        """How long ``peer``'s routes are kept once it goes down: what it offered, at most its cap."""
        offered = self._restart_time.get(peer, self._default_restart)
        if offered is None:
            return None
        return min(offered, self._restart_cap.get(peer, offered))

    def peer_down(self, peer: IPv4Address) -> None:
        """Keep the peer's routes as stale for its restart time (drop them if it offered none)."""
        restart = self.restart_time(peer)
        paths = self._paths.get(peer, {})
        if not restart:
            paths.clear()
            return
        deadline = self._clock() + restart
        for prefix, path in paths.items():
            if path.stale_until is None:
                paths[prefix] = _Path(path.nexthop, deadline)

    def end_of_rib(self, peer: IPv4Address) -> None:
        """The peer re-sent everything: whatever is still stale was not re-announced."""
        paths = self._paths.get(peer, {})
        for prefix in [p for p, path in paths.items() if path.stale_until is not None]:
            del paths[prefix]

    def remove_peer(self, peer: IPv4Address) -> None:
        """The session is no longer configured: forget it, stale routes included."""
        self._paths.pop(peer, None)
        self._restart_time.pop(peer, None)
        self._restart_cap.pop(peer, None)

    def expire(self) -> bool:
        """Drop stale routes whose restart time has passed; return whether anything was dropped."""
        now, dropped = self._clock(), False
        for paths in self._paths.values():
            for prefix in [p for p, path in paths.items() if _expired(path, now)]:
                del paths[prefix]
                dropped = True
        return dropped

    def next_deadline(self) -> float | None:
        """The clock value at which the next stale route expires, if any."""
        deadlines = [path.stale_until for paths in self._paths.values() for path in paths.values()
                     if path.stale_until is not None]
        return min(deadlines, default=None)

    # -- results ----------------------------------------------------------------------------

    def best(self) -> frozenset[LearnedRoute]:
        """One route per accepted prefix: fresh beats stale, then the lowest peer address."""
        now = self._clock()
        chosen: dict[IPv4Network, tuple[tuple[bool, IPv4Address], LearnedRoute]] = {}
        for peer, paths in self._paths.items():
            for prefix, path in paths.items():
                if _expired(path, now) or self.rejection(prefix) is not None:
                    continue
                key = (path.stale_until is not None, peer)
                if prefix not in chosen or key < chosen[prefix][0]:
                    chosen[prefix] = (key, LearnedRoute(prefix, path.nexthop, peer))
        return frozenset(route for _, route in chosen.values())

    def route_count(self, peer: IPv4Address) -> int:
        return len(self._paths.get(peer, {}))


def _expired(path: _Path, now: float) -> bool:
    return path.stale_until is not None and path.stale_until <= now


def _well_formed(peer: object, prefix: object, nexthop: object) -> bool:
    return (isinstance(peer, IPv4Address) and isinstance(prefix, IPv4Network)
            and isinstance(nexthop, IPv4Address) and not nexthop.is_unspecified)
