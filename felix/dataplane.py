"""Kernel route writer: diff desired routes against the routes we own, write only the difference.

The only module of felix writing routes. The route path is our own netlink (``felix.rtnl``: batched
``struct``-packed requests, errors mapped back by sequence number, a dump that keeps routes as raw
images); its blocking socket work runs in a thread (``asyncio.to_thread``), one hop per apply.
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

Speed: "already as desired" is decided by comparing the dumped route's bytes with the bytes we would
write (``rtnl.route_image``); only routes that differ are decoded into fields.
"""
from __future__ import annotations

import asyncio
import errno
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network

from felix import rtnl
from felix.calc import PROTO, DesiredRoute
from felix.inspect import KernelRoute, route_matches

__all__ = ["PROTO", "ApplyResult", "KernelRoute", "RouteTable", "route_is_ours"]

log = logging.getLogger(__name__)

WORKLOAD_PREFIX = "cali"
CNI_GRACE_PERIOD = 10.0
_OIF_TYPE = rtnl.RTA_OIF.to_bytes(2, "little")


def route_is_ours(msg, proto: int = PROTO) -> bool:
    """The one ownership test: a route is ours iff it carries our protocol number.

    ``msg``: an ``rtnl.Route`` or a pyroute2 route message (anything with ``.get("proto")``).
    """
    if isinstance(msg, rtnl.Route):
        return msg.proto == proto
    return msg.get("proto") == proto


class NetlinkError(OSError):
    """A route request the kernel (or we, for a missing device) refused; ``code`` is the errno."""

    def __init__(self, code: int, text: str | None = None) -> None:
        super().__init__(code, text)
        self.code = code

    def describe(self) -> str:
        return rtnl.NetlinkFailure(self.code, self.strerror).describe()


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
    """One full dump: our clean routes by key (images), strays of ours, other owners, link names."""

    ours: dict[int, bytes]
    strays: list[rtnl.Route]  # ours but never matchable (metric/tos != 0, or a second copy)
    foreign: dict[int, int]  # key -> proto of the other owner
    names: dict[int, str]  # ifindex -> name

    @property
    def ifindex(self) -> dict[str, int]:
        return {name: index for index, name in self.names.items()}


@dataclass
class _Plan:
    """The writes of one apply, in order (deletes first); ``what[i]`` says what request ``i`` is."""

    requests: list[bytes] = field(default_factory=list)
    what: list[tuple[str, IPv4Network]] = field(default_factory=list)  # ("delete"|"add"|"replace", dst)

    def add(self, kind: str, dst: IPv4Network, image: bytes) -> None:
        self.what.append((kind, dst))
        self.requests.append(image)


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
        self._sock: rtnl.RtnlSocket | None = None
        self._pyroute2 = None
        self._lock = asyncio.Lock()  # one apply at a time: two diffs against one dump would race
        self._last_desired: set[tuple[IPv4Network, str | None]] = set()
        self._first_seen: dict[tuple[IPv4Network, str | None], float] = {}
        self._failing: dict[IPv4Network, str] = {}
        self._shapes: dict[tuple, _Shape] = {}
        # Cumulative, for the status socket: an idle agent must not move them between resyncs.
        self.dumps = 0
        self.writes = 0

    async def open(self) -> None:
        # In a thread: entering the namespace is a per-thread setns, and the socket keeps it.
        self._sock = await asyncio.to_thread(rtnl.RtnlSocket, self.netns)

    async def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._pyroute2 is not None:
            self._pyroute2.close()
            self._pyroute2 = None

    async def __aenter__(self) -> RouteTable:
        await self.open()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    @property
    def _ipr(self):
        """A pyroute2 ``AsyncIPRoute`` in the same namespace, for tests and debugging only (nothing
        here uses it); opened on first use, closed with the table."""
        if self._pyroute2 is None:
            from pyroute2 import AsyncIPRoute

            self._pyroute2 = AsyncIPRoute(netns=self.netns, flags=0) if self.netns else AsyncIPRoute()
        return self._pyroute2

    async def kernel_routes(self) -> dict[IPv4Network, KernelRoute]:
        """IPv4 routes of our proto in our table (from a full dump)."""
        async with self._lock:
            return await asyncio.to_thread(self._kernel_routes)

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
            return await asyncio.to_thread(self._apply, desired, delete_unknown_gateway_routes)

    async def set_route(self, route: DesiredRoute) -> None:
        """Write one route now, no diff, no sweep (the CNI plugin's ADD). Raises NetlinkError."""
        async with self._lock:
            await asyncio.to_thread(self._set_route, route)

    # -- the blocking halves (run in a thread, under the lock) ----------------------------------

    def _apply(self, desired: Mapping[IPv4Network, DesiredRoute], delete_gateway_routes: bool):
        snap = self._snapshot()
        result, plan = ApplyResult(), _Plan()
        for route in snap.strays:
            plan.add("delete", _network(route.key), self._delete_image(route))
        unwanted = self._diff(desired, snap, plan, result)
        for route in self._stale(unwanted, snap.names, delete_gateway_routes, result):
            plan.add("delete", _network(route.key), self._delete_image(route))
        self._write(plan, result)
        self._last_desired = {(d.dst, d.dev) for d in desired.values()}
        self._note_failures(result.failed)
        self.writes += result.writes
        return result

    def _set_route(self, route: DesiredRoute) -> None:
        ifindex = {name: index for index, name in self._sock.dump_links().items()}
        image = self._image(route, ifindex)
        if image is None:
            raise NetlinkError(errno.ENODEV, f"device {route.dev} does not exist")
        seq = self._sock.reserve(1)
        failed = self._sock.write([rtnl.encode_request(rtnl.RTM_NEWROUTE, seq, image)], seq)
        if failed:
            raise NetlinkError(failed[0].errno, failed[0].strerror)
        self.writes += 1

    def _kernel_routes(self) -> dict[IPv4Network, KernelRoute]:
        snap = self._snapshot()
        routes = (rtnl.decode_route(image) for image in snap.ours.values())
        return {k.dst: k for k in (_kernel_route(r, snap.names) for r in routes if _clean(r))}

    # -- reading -----------------------------------------------------------------------------

    def _snapshot(self) -> _Snapshot:
        self.dumps += 1
        names = self._sock.dump_links()
        dump = self._sock.dump_routes(self.table, self.proto)
        strays = []
        for image in dump.dups:  # rare: several routes of ours at one dst
            route = rtnl.decode_route(image)
            first = rtnl.decode_route(dump.ours[route.key])
            if _clean(route) and not _clean(first):  # the matchable copy is "ours"; the rest go
                dump.ours[route.key], route = image, first
            strays.append(route)
        return _Snapshot(dump.ours, strays, dump.foreign, names)

    # -- deciding ----------------------------------------------------------------------------

    def _diff(self, desired, snap: _Snapshot, plan: _Plan, result: ApplyResult) -> dict[int, bytes]:
        """Queue the adds/replaces of ``desired``; return our routes that are not desired."""
        ours, ifindex = dict(snap.ours), snap.ifindex
        for want in desired.values():
            dst = want.dst
            key = int(dst.network_address) << 8 | dst.prefixlen
            have = ours.pop(key, None)
            image = self._image(want, ifindex)
            if have is not None and image is not None and _same(have, image, want):
                continue  # the hot path of a no-op resync: one bytes comparison
            if have is not None:
                route = rtnl.decode_route(have)
                if not _clean(route):  # e.g. a metric set by hand: delete it, then add ours
                    plan.add("delete", dst, self._delete_image(route))
                    have = None
                elif route_matches(want, _kernel_route(route, snap.names)):
                    continue  # same route, other bytes (e.g. a linkdown flag)
            if key in snap.foreign:
                result.failed[dst] = (
                    f"destination held by a route of proto {snap.foreign[key]} (not ours, left alone)")
            elif image is None:
                # Usual for a workload whose veth the CNI plugin has not made yet; retried next time.
                result.failed[dst] = f"ENODEV: device {want.dev} does not exist"
            else:
                log.debug("replace route", extra={"dst": str(dst), "reason": want.reason})
                plan.add("add" if have is None else "replace", dst, image)
        return ours

    def _stale(self, unwanted: dict[int, bytes], names, delete_gateway_routes: bool,
               result: ApplyResult) -> list[rtnl.Route]:
        """Our routes to delete among those not desired: strays always; others unless kept."""
        now = self._clock()
        routes = [rtnl.decode_route(image) for image in unwanted.values()]
        kernel = [_kernel_route(r, names) for r in routes]
        present = {(k.dst, k.dev) for k, r in zip(kernel, routes) if _clean(r)}
        self._first_seen = {k: t for k, t in self._first_seen.items() if k in present}
        stale = []
        for route, have in zip(routes, kernel):
            if _clean(route):
                if have.gateway is not None and not delete_gateway_routes:
                    continue
                remaining = self._grace_left(have, now)
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

    def _image(self, want: DesiredRoute, ifindex: dict[str, int]) -> bytes | None:
        """What we write for ``want`` (and what the kernel dumps back); None: its device is missing.

        Built from a cached per-shape head and tail around the destination: 100k desired routes
        share a handful of shapes, and this runs for every one of them on every apply.
        """
        oif = 0
        if want.dev is not None:
            oif = ifindex.get(want.dev)
            if oif is None:
                return None
        gateway = None if want.gateway is None else int(want.gateway)
        key = (want.type, want.scope, want.onlink, oif, gateway)
        shape = self._shapes.get(key)
        if shape is None:
            if len(self._shapes) > 4096:  # one shape per workload device: keep it bounded
                self._shapes.clear()
            shape = self._shapes[key] = _Shape(
                table=self.table, proto=self.proto, rtype=rtnl.TYPES[want.type],
                scope=rtnl.SCOPES[want.scope], onlink=want.onlink, oif=oif, gateway=gateway)
        return shape.image(int(want.dst.network_address), want.dst.prefixlen)

    def _delete_image(self, route: rtnl.Route) -> bytes:
        # proto in the request: the kernel itself refuses to match a route of another owner.
        dst, dst_len = rtnl.key_parts(route.key)
        return rtnl.route_image(dst=dst, dst_len=dst_len, table=self.table, proto=self.proto,
                                rtype=route.type, scope=route.scope, priority=route.priority,
                                tos=route.tos)

    def _write(self, plan: _Plan, result: ApplyResult) -> None:
        if not plan.requests:
            return
        first = self._sock.reserve(len(plan.requests))
        cmds = [rtnl.RTM_DELROUTE if kind == "delete" else rtnl.RTM_NEWROUTE for kind, _ in plan.what]
        failed = self._sock.write(
            [rtnl.encode_request(cmd, first + i, image)
             for i, (cmd, image) in enumerate(zip(cmds, plan.requests))], first)
        for i, (kind, dst) in enumerate(plan.what):
            err = failed.get(i)
            if err is None:
                setattr(result, _COUNTER[kind], getattr(result, _COUNTER[kind]) + 1)
            elif kind != "delete":
                result.failed[dst] = err.describe()
            elif err.errno != errno.ESRCH:  # ESRCH: already gone (e.g. its link went): goal met
                result.failed[dst] = "delete: " + err.describe()

    def _note_failures(self, failed: dict[IPv4Network, str]) -> None:
        """Warn once per new failure, note recoveries; repeats of a known failure stay quiet."""
        for dst, reason in failed.items():
            if self._failing.get(dst) != reason:
                log.warning("route not programmed: %s: %s", dst, reason)
        for dst in self._failing.keys() - failed.keys():
            log.info("route programmed after earlier failure: %s", dst)
        self._failing = dict(failed)


_COUNTER = {"delete": "deleted", "add": "added", "replace": "replaced"}


class _Shape:
    """``route_image`` of one shape (type, scope, gateway, device...) precomputed around the dst."""

    def __init__(self, **spec) -> None:
        self.spec = spec
        self.heads: dict[int, bytes] = {}  # by prefix length: rtmsg, RTA_TABLE, RTA_DST's header
        self.tail = rtnl.route_image(dst=0, dst_len=32, **spec)[_DST_AT + 4:]

    def image(self, dst: int, dst_len: int) -> bytes:
        head = self.heads.get(dst_len)
        if head is None:
            if not dst_len:
                return rtnl.route_image(dst=0, dst_len=0, **self.spec)  # no RTA_DST at all
            head = self.heads[dst_len] = rtnl.route_image(dst=0, dst_len=dst_len, **self.spec)[:_DST_AT]
        return head + dst.to_bytes(4, "big") + self.tail


_DST_AT = 12 + 8 + 4  # the dst address in an image: after rtmsg, RTA_TABLE and RTA_DST's header


def _same(have: bytes, image: bytes, want: DesiredRoute) -> bool:
    """The dumped image is exactly what we would write; a gateway route without a device may
    carry the RTA_OIF the kernel resolved (any device is fine, see ``route_matches``)."""
    if have == image:
        return True
    return (want.dev is None and want.gateway is not None and len(have) == len(image) + 8
            and have[-6:-4] == _OIF_TYPE and have.startswith(image))


def _clean(route: rtnl.Route) -> bool:
    """We write metric 0, tos 0: a route of ours with anything else can never match."""
    return not route.priority and not route.tos


def _network(key: int) -> IPv4Network:
    return IPv4Network(rtnl.key_parts(key))


def _kernel_route(route: rtnl.Route, names: dict[int, str]) -> KernelRoute:
    return KernelRoute(
        dst=_network(route.key),
        type=rtnl.TYPE_NAMES.get(route.type, str(route.type)),
        dev=names.get(route.oif) if route.oif else None,
        gateway=IPv4Address(route.gateway) if route.gateway else None,
        scope=rtnl.SCOPE_NAMES.get(route.scope, str(route.scope)),
        proto=route.proto,
        onlink=bool(route.flags & rtnl.RTNH_F_ONLINK),
    )
