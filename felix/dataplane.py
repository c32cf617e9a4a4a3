"""Kernel route writer: diff desired routes against the routes we own, write only the difference.

The only module of felix doing netlink I/O (pyroute2 ``AsyncIPRoute``; NDB/IPDB are never used).
Lessons from Felix's ``routetable/route_table.go``, each of which has bitten someone:

- Ownership is our ``proto`` number and nothing else (``route_is_ours``). Deletes also carry the proto,
  so even a bug in the diff cannot make the kernel remove another owner's route.
- A destination held by a route of another proto is left alone: ``replace`` would overwrite it, so we
  report it in ``ApplyResult.failed`` instead and retry on the next apply (it may go away).
- Every apply starts from a full dump (the kernel sends no RTM_DELROUTE for routes removed with their
  link, so a cache drifts). Deletes first, then ``replace``. Identical => zero writes: a restarted
  agent adopts its routes without a flap.
- A failure on one route (device not there yet, gateway unreachable) is recorded and the rest go on;
  nothing is remembered as "done", so the next apply retries exactly what still differs.
- A route of ours on a ``cali*`` device that we did not ask for may be the CNI plugin's, written
  before the workload reached us: it gets a grace period before removal (Felix: 10 s).
"""
from __future__ import annotations

import asyncio
import errno
import logging
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network

from pyroute2 import AsyncIPRoute
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import rt_scope, rt_type

from felix.calc import PROTO, DesiredRoute
from felix.inspect import KernelRoute, route_matches

__all__ = ["PROTO", "ApplyResult", "KernelRoute", "RouteTable", "route_is_ours"]

log = logging.getLogger(__name__)

WORKLOAD_PREFIX = "cali"
CNI_GRACE_PERIOD = 10.0


def route_is_ours(msg, proto: int = PROTO) -> bool:
    """The one ownership test: a route is ours iff it carries our protocol number."""
    return msg.get("proto") == proto


@dataclass
class ApplyResult:
    added: int = 0
    replaced: int = 0
    deleted: int = 0
    failed: dict[IPv4Network, str] = field(default_factory=dict)
    # Seconds until a route kept in its CNI grace period may be removed: apply again by then.
    recheck_after: float | None = None

    @property
    def writes(self) -> int:
        return self.added + self.replaced + self.deleted


@dataclass
class _Snapshot:
    """One full dump: our routes by dst, extra copies of ours, other owners' dsts, link names."""

    ours: dict[IPv4Network, KernelRoute]
    strays: list[tuple[KernelRoute, int, int]]  # (route, priority, tos): ours but never matchable
    foreign: dict[IPv4Network, int]  # dst -> proto of the other owner
    ifindex: dict[str, int]


class RouteTable:
    """Owns the routes of ``proto`` in one routing table of one network namespace.

    ``netns`` given: work inside that named namespace (tests, the lab). ``None``: the current one
    (the agent runs inside its node's namespace).
    """

    def __init__(
        self,
        *,
        netns: str | None = None,
        proto: int = PROTO,
        table: int = 254,
        grace_period: float = CNI_GRACE_PERIOD,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.netns, self.proto, self.table = netns, proto, table
        self._grace, self._clock = grace_period, clock
        self._ipr: AsyncIPRoute | None = None
        self._lock = asyncio.Lock()  # one apply at a time: two diffs against one dump would race
        self._last_desired: set[tuple[IPv4Network, str | None]] = set()
        self._first_seen: dict[tuple[IPv4Network, str | None], float] = {}
        self._failing: dict[IPv4Network, str] = {}
        # Cumulative, for the status socket: an idle agent must not move them between resyncs.
        self.dumps = 0
        self.writes = 0

    async def open(self) -> None:
        # flags=0: never create a namespace by accident (pyroute2's default is O_CREAT).
        self._ipr = AsyncIPRoute(netns=self.netns, flags=0) if self.netns else AsyncIPRoute()
        await self._ipr.setup_endpoint()

    async def close(self) -> None:
        if self._ipr is not None:
            self._ipr.close()
            self._ipr = None

    async def __aenter__(self) -> RouteTable:
        await self.open()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def kernel_routes(self) -> dict[IPv4Network, KernelRoute]:
        """IPv4 routes of our proto in our table (from a full dump)."""
        async with self._lock:
            return (await self._snapshot()).ours

    async def apply(
        self,
        desired: Mapping[IPv4Network, DesiredRoute],
        *,
        delete_unknown_gateway_routes: bool = True,
    ) -> ApplyResult:
        """Make our routes equal ``desired``; see the module docstring for the rules.

        ``delete_unknown_gateway_routes=False`` keeps our gateway routes that are not desired (after
        an agent restart, until BGP has re-synced, so traffic keeps flowing).
        """
        async with self._lock:
            snap = await self._snapshot()
            result = ApplyResult()
            for route, priority, tos in snap.strays:
                await self._delete(route, result, priority=priority, tos=tos)
            for route in self._stale(snap.ours, desired, delete_unknown_gateway_routes, result):
                await self._delete(route, result)
            for want in desired.values():
                await self._ensure(want, snap, result)
            self._last_desired = {(d.dst, d.dev) for d in desired.values()}
            self._note_failures(result.failed)
            self.writes += result.writes
            return result

    async def set_route(self, route: DesiredRoute) -> None:
        """Write one route now, no diff, no sweep (the CNI plugin's ADD). Raises NetlinkError."""
        async with self._lock:
            await self._replace(route, await self._link_indexes())

    # -- reading -----------------------------------------------------------------------------

    async def _snapshot(self) -> _Snapshot:
        self.dumps += 1
        ifindex = await self._link_indexes()
        names = {index: name for name, index in ifindex.items()}
        snap = _Snapshot(ours={}, strays=[], foreign={}, ifindex=ifindex)
        async for msg in await self._ipr.route("dump", family=socket.AF_INET):
            if _table_of(msg) == self.table:
                self._classify(msg, names, snap)
        return snap

    def _classify(self, msg, names: dict[int, str], snap: _Snapshot) -> None:
        route = _parse(msg, names)
        if not route_is_ours(msg, self.proto):
            snap.foreign.setdefault(route.dst, route.proto)
            return
        priority, tos = msg.get("priority") or 0, msg["tos"]
        # We write metric 0, tos 0: another copy at the same dst can never match, so it goes.
        if priority or tos or route.dst in snap.ours:
            snap.strays.append((route, priority, tos))
        else:
            snap.ours[route.dst] = route

    async def _link_indexes(self) -> dict[str, int]:
        return {link.get("ifname"): link["index"] async for link in await self._ipr.link("dump")}

    # -- deciding ----------------------------------------------------------------------------

    def _stale(self, ours, desired, delete_gateway_routes: bool, result) -> list[KernelRoute]:
        now = self._clock()
        present = {(r.dst, r.dev) for r in ours.values()}
        self._first_seen = {k: t for k, t in self._first_seen.items() if k in present}
        stale = []
        for route in ours.values():
            if route.dst in desired:
                continue  # replaced in place if different: no delete, no gap
            if route.gateway is not None and not delete_gateway_routes:
                continue
            remaining = self._grace_left(route, now)
            if remaining > 0:
                result.recheck_after = min(remaining, result.recheck_after or remaining)
                continue
            stale.append(route)
        return stale

    def _grace_left(self, route: KernelRoute, now: float) -> float:
        """Seconds of grace left for an unasked-for route on a workload device (0: none).

        Such a route may be the CNI plugin's, written before its workload reached us. A route we
        desired in the previous apply gets no grace: its workload is known to be gone.
        """
        key = (route.dst, route.dev)
        if not (route.dev or "").startswith(WORKLOAD_PREFIX) or key in self._last_desired:
            return 0.0
        left = self._first_seen.setdefault(key, now) + self._grace - now
        if left > 0:
            log.debug("keeping unknown workload route in grace period", extra={"dst": str(route.dst)})
        return max(left, 0.0)

    # -- writing -----------------------------------------------------------------------------

    async def _ensure(self, want: DesiredRoute, snap: _Snapshot, result: ApplyResult) -> None:
        have = snap.ours.get(want.dst)
        if have is not None and route_matches(want, have):
            return
        if want.dst in snap.foreign:
            result.failed[want.dst] = (
                f"destination held by a route of proto {snap.foreign[want.dst]} (not ours, left alone)"
            )
            return
        try:
            await self._replace(want, snap.ifindex)
        except NetlinkError as err:
            result.failed[want.dst] = _describe(err)
            return
        if have is None:
            result.added += 1
        else:
            result.replaced += 1

    async def _replace(self, want: DesiredRoute, ifindex: dict[str, int]) -> None:
        spec = {
            "dst": str(want.dst), "table": self.table, "proto": self.proto,
            "type": want.type, "scope": want.scope,
        }
        if want.gateway is not None:
            spec["gateway"] = str(want.gateway)
        if want.dev is not None:
            if want.dev not in ifindex:
                # Usual for a workload whose veth the CNI plugin has not made yet; retried next time.
                raise NetlinkError(errno.ENODEV, f"device {want.dev} does not exist")
            spec["oif"] = ifindex[want.dev]
        log.debug("replace route", extra={"dst": spec["dst"], "reason": want.reason})
        await self._ipr.route("replace", **spec)

    async def _delete(self, route: KernelRoute, result: ApplyResult, *, priority=0, tos=0) -> None:
        # proto in the request: the kernel itself refuses to match a route of another owner.
        spec = {
            "dst": str(route.dst), "table": self.table, "proto": self.proto,
            "type": route.type, "scope": route.scope, "priority": priority, "tos": tos,
        }
        try:
            await self._ipr.route("del", **spec)
        except NetlinkError as err:
            if err.code == errno.ESRCH:  # already gone (e.g. its link went): the goal is met
                return
            result.failed[route.dst] = "delete: " + _describe(err)
            return
        log.debug("deleted route", extra={"dst": spec["dst"]})
        result.deleted += 1

    def _note_failures(self, failed: dict[IPv4Network, str]) -> None:
        """Warn once per new failure, note recoveries; repeats of a known failure stay quiet."""
        for dst, reason in failed.items():
            if self._failing.get(dst) != reason:
                log.warning("route not programmed: %s: %s", dst, reason)
        for dst in self._failing.keys() - failed.keys():
            log.info("route programmed after earlier failure: %s", dst)
        self._failing = dict(failed)


def _table_of(msg) -> int:
    return msg.get("table") or msg["table"]


def _parse(msg, names: dict[int, str]) -> KernelRoute:
    dst = IPv4Network(f"{msg.get('dst') or '0.0.0.0'}/{msg['dst_len']}", strict=False)
    gateway = msg.get("gateway")
    oif = msg.get("oif")
    return KernelRoute(
        dst=dst,
        type=rt_type.get(msg["type"], str(msg["type"])),
        dev=names.get(oif) if oif else None,
        gateway=IPv4Address(gateway) if gateway else None,
        scope=rt_scope.get(msg["scope"], str(msg["scope"])),
        proto=msg["proto"],
    )


def _describe(err: NetlinkError) -> str:
    name = errno.errorcode.get(err.code, str(err.code))
    return f"{name}: {err.args[1]}"  # args are (code, message); message defaults to strerror
