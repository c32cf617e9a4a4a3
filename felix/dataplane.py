"""Kernel route writer: diff desired routes against the routes we own, write only the difference.

The only module of felix writing routes. The route path is our own netlink (``felix.rtnl``: batched
``struct``-packed requests, errors mapped back by sequence number, a dump that keeps routes as raw
images); its blocking socket work runs in the table's own worker thread, one hop per apply (the
loop stays responsive: ~7 ms worst stall during a 100k-route apply, against the whole apply inline;
one thread rather than the default pool, so one malloc arena, not one per pool thread).
Lessons from Felix's ``routetable/route_table.go``, each of which has bitten someone:

- Ownership is our ``proto`` number and nothing else (``route_is_ours``). Deletes also carry the proto,
  so even a bug in the diff cannot make the kernel remove another owner's route.
- A destination held by a route of another proto is left alone: ``replace`` would overwrite it, so we
  report it in ``ApplyResult.failed`` instead and retry on the next apply (it may go away).
- By default every apply starts from a full dump (the kernel sends no RTM_DELROUTE for routes removed
  with their link, so a naive cache drifts; the incremental mode below copes with that). Deletes
  first, then ``replace``. Identical => zero writes: a restarted agent adopts its routes without a
  flap.
- A failure on one route (device not there yet, gateway unreachable) is recorded and the rest go on;
  nothing is remembered as "done", so the next apply retries exactly what still differs.
- A route of ours on a ``cali*`` device that we did not ask for may be the CNI plugin's, written
  before the workload reached us: it gets a grace period before removal (Felix: 10 s).

Speed: "already as desired" is decided by comparing the dumped route's bytes with the bytes we would
write, both as interned templates (``rtnl.route_template``: the image without its destination, one
``bytes`` object per shape), so a route already as desired costs a dict lookup and a pointer
comparison; only routes that differ are decoded into fields.

Memory: our routes are held as {key: interned template}, never as 100k images or objects; the writes
of an apply are planned as (kind, key, template) and their requests built chunk by chunk as they are
sent (``rtnl.RtnlSocket.write_templates``: per run of one template, in bulk, no Python per route),
then committed to the cache in bulk when none failed.

Incremental mode (``RouteTable(incremental=True)``): instead of a dump per apply, a cache of our
routes -- a full dump, then our own writes and the kernel's notifications of everyone else's changes
(a second socket on RTNLGRP_IPV4_ROUTE and RTNLGRP_LINK; a BPF filter drops the echoes of our own
writes) -- and ``apply`` diffs desired against it. A full dump is done at the first apply, after
``resync()``, after ENOBUFS on the event socket, and whenever the notifications cannot say exactly
what changed: another owner's route went away (which copy?), a route of ours changed while we were
writing, a link went down or away while the cache holds a gateway route without a known device
(IPv4 sends no RTM_DELROUTE for the routes a link takes with it; an apply and ``set_route`` ask
the kernel which device it chose for the gateway routes they wrote without one) or while we
were writing. Otherwise a lost link just drops the cached routes through it. When someone else changes our routes, a link takes routes of ours with it, or a
device a failing route waits for appears, the table tells the agent: ``drifted`` (an
``asyncio.Event``) is set and ``on_drift()`` is called, on the event loop; ``apply`` clears
``drifted`` when it starts.

Dirty destinations (``apply(desired, changed=dsts)``, incremental mode): the caller's calculation
knows which destinations changed since the last apply, so only those are diffed and written (an
event at 100k routes costs its own routes, not a walk of the whole table). The table adds its own:
a link that went down or away (a pod deleted: its veth goes, and its ``/32`` with it, silently)
drops exactly the cached routes through it, and those destinations become dirty; so do those of
failing routes when a device appears or comes up. ``changed`` is trusted only while the cache is:
no dump pending, none of our routes changed by someone else since the last apply, no strays of
ours; otherwise the apply is a full diff (``full_diffs`` counts them, ``partial_diffs`` the others).
Every desired route is copied (a full diff's input) only when the cache is not trusted as the apply
is asked for; should it stop being trusted before the apply runs, the dirty destinations are diffed
against the fresh dump, and the next apply is a full diff (the agent is told, as for a drift).
What the last applies said about the other destinations (their failures, their devices awaited,
their blockers) is carried over.
"""
from __future__ import annotations

import asyncio
import ctypes
import errno
import itertools
import logging
import socket
import threading
import time
from array import array
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address

from felix import rtnl
from felix.calc import LENGTH_SHIFT, PROTO, DesiredRoute, DesiredView, key_network, key_text
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
    failed: dict[int, str] = field(default_factory=dict)  # by destination (``calc.dst_key``)
    # Those of ``failed`` whose device does not exist (a pod's veth not made yet, or gone with its
    # pod): in incremental mode the table calls ``on_drift`` when the device appears, so they
    # need no timed retry.
    awaiting_device: set[int] = field(default_factory=set)
    # Seconds until a route kept in its CNI grace period may be removed: apply again by then.
    recheck_after: float | None = None

    @property
    def writes(self) -> int:
        return self.added + self.replaced + self.deleted


@dataclass
class _Snapshot:
    """One full dump: our routes by key (interned templates), strays of ours, other owners, links."""

    ours: dict[int, bytes]
    strays: list[bytes]  # whole images of second copies of ours at one dst (another metric/tos)
    foreign: dict[int, int]  # key -> proto of the other owner
    names: dict[int, str]  # ifindex -> name
    up: set[int] = field(default_factory=set)  # ifindexes with IFF_UP
    shared: bool = False  # ``ours`` is the cache's own dict: read it, never change it
    templates: dict[bytes, bytes] = field(default_factory=dict)  # interned: one per shape


class _Plan:
    """The writes of one apply as parallel lists (kinds[i] "delete", "stray", "add" or "replace",
    keys[i] the destination's key, images[i] its ``rtnl.route_template``), deletes kept apart so
    they go first. "stray": a second route of ours at a key (``_Snapshot.strays``)."""

    def __init__(self) -> None:
        self.kinds: list[str] = []
        self.keys: list[int] = []
        self.images: list[bytes] = []
        self._deletes: tuple[list[str], list[int], list[bytes]] = ([], [], [])
        self.deletes = 0  # after ``deletes_first``: how many of the writes are deletes (in front)

    def add(self, kind: str, key: int, image: bytes) -> None:
        kinds, keys, images = self._deletes if kind in _DELETES else (self.kinds, self.keys,
                                                                     self.images)
        kinds.append(kind)
        keys.append(key)
        images.append(image)

    def add_all(self, kind: str, routes: dict[int, bytes]) -> None:
        """``add(kind, key, template)`` of each item of ``routes``, in bulk (a delete-all at 100k
        routes spent a tenth of its time in ``add``)."""
        kinds, keys, images = self._deletes if kind in _DELETES else (self.kinds, self.keys,
                                                                     self.images)
        kinds.extend(itertools.repeat(kind, len(routes)))
        keys.extend(routes)
        images.extend(routes.values())

    def deletes_first(self) -> None:
        """Put the deletes in front, in the order they were planned; call once, before writing."""
        columns = (self.kinds, self.keys, self.images)
        self.deletes = len(self._deletes[0])
        for first, then in zip(self._deletes, columns):
            first += then  # in place: at 100k deletes a concatenation copied every column
        self.kinds, self.keys, self.images = self._deletes
        self._deletes = ([], [], [])


class RouteTable:
    """Owns the routes of ``proto`` in one routing table of one network namespace.

    ``netns`` given: work inside that named namespace (tests, the lab). ``None``: the current one
    (the agent runs inside its node's namespace).

    ``incremental=True``: keep a cache of our routes (module docstring) instead of a dump per apply.
    The owner then calls ``resync()`` on its resync timer, and re-applies when told that something
    drifted: ``on_drift`` is called (on the event loop, from the notification reader; never while
    an apply of its own is running its writes) and ``drifted`` is set. For the agent::

        RouteTable(proto=p, incremental=True, on_drift=lambda: self._request("drift"))
        ...  # and on the periodic resync: self.routes.resync() before the apply
    """

    def __init__(
        self,
        *,
        netns: str | None = None,
        proto: int = PROTO,
        table: int = 254,
        grace_period: float = CNI_GRACE_PERIOD,
        clock: Callable[[], float] = time.monotonic,
        incremental: bool = False,
        on_drift: Callable[[], None] | None = None,
    ) -> None:
        self.netns, self.proto, self.table, self.incremental = netns, proto, table, incremental
        self._grace, self._clock = grace_period, clock
        self._sock: rtnl.RtnlSocket | None = None
        self._worker: ThreadPoolExecutor | None = None
        self._pyroute2 = None
        self._lock = asyncio.Lock()  # one apply at a time: two diffs against one dump would race
        self._last_desired: set[tuple[int, str]] = set()  # (key, dev) of desired workload routes
        self._desired_workloads: set[tuple[int, str]] = set()  # the same, of the apply under way
        self._first_seen: dict[tuple[int, str], float] = {}
        self._failing: dict[int, str] = {}  # key -> why, of the last applies
        # Cumulative, for the status socket: an idle agent must not move them between resyncs.
        self.dumps = 0
        self.writes = 0
        self.full_diffs = 0  # applies that diffed every desired route against every route of ours
        self.partial_diffs = 0  # applies that diffed the dirty destinations only
        # Incremental mode: the cache and what feeds it (see the module docstring).
        self.drifted = asyncio.Event()
        self._on_drift = on_drift
        self._events: rtnl.RtnlSocket | None = None
        self._cache: _Snapshot | None = None
        self._cache_lock = threading.Lock()  # the loop's event reader vs the apply thread
        self._stale = True  # a full dump is needed before the next diff
        self._dumping = self._writing = False
        self._pending: deque[bytes] = deque()  # notifications read during a full dump
        self._waiting: dict[int, str] = {}  # key -> device of a route that failed with ENODEV
        self._waiting_devs: set[str] = set()  # their devices
        self._blocked: set[int] = set()  # keys held by another owner's route
        self._touched: set[int] = set()  # keys the notifications made dirty (e.g. a lost link)
        self._full_diff = False  # someone changed a route of ours: the next apply diffs them all
        self._loop: asyncio.AbstractEventLoop | None = None

    async def open(self) -> None:
        _return_large_blocks()
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="routetable")
        try:
            # In the worker: entering the namespace is a per-thread setns; the socket keeps it.
            self._sock = await self._in_thread(rtnl.RtnlSocket, self.netns)
            if self.incremental:
                # Subscribed before the first dump, so nothing between the two is missed.
                self._events = await self._in_thread(
                    rtnl.RtnlSocket, self.netns, rtnl.RTMGRP_IPV4_ROUTE | rtnl.RTMGRP_LINK)
                self._events.ignore_sender(self._sock.port_id)
                self._loop = asyncio.get_running_loop()
                self._loop.add_reader(self._events.fileno(), self._on_readable)
        except BaseException:
            await self.close()
            raise

    def resync(self) -> None:
        """Make the next apply start from a full dump (incremental mode; e.g. on a timer)."""
        self._stale = True

    async def close(self) -> None:
        if self._events is not None:
            if self._loop is not None:
                self._loop.remove_reader(self._events.fileno())
            self._events.close()
            self._events = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._pyroute2 is not None:
            self._pyroute2.close()
            self._pyroute2 = None
        if self._worker is not None:
            self._worker.shutdown(wait=False)  # idle: every call into it was awaited
            self._worker = None

    async def __aenter__(self) -> RouteTable:
        await self.open()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def _in_thread(self, fn, *args):
        return await _in_worker(self._worker, fn, *args)

    @property
    def _ipr(self):
        """A pyroute2 ``AsyncIPRoute`` in the same namespace, for tests and debugging only (nothing
        here uses it); opened on first use, closed with the table."""
        if self._pyroute2 is None:
            from pyroute2 import AsyncIPRoute

            self._pyroute2 = AsyncIPRoute(netns=self.netns, flags=0) if self.netns else AsyncIPRoute()
        return self._pyroute2

    async def kernel_routes(self) -> dict[int, KernelRoute]:
        """IPv4 routes of our proto in our table (from a full dump), by ``calc.dst_key``."""
        async with self._lock:
            return await self._in_thread(self._kernel_routes)

    def apply(
        self,
        desired: Mapping[int, DesiredRoute],
        *,
        delete_unknown_gateway_routes: bool = True,
        changed: Iterable[int] | None = None,
    ) -> Awaitable[ApplyResult]:
        """Make our routes equal ``desired`` (by ``calc.dst_key``, as ``RouteCalc.desired``); see
        the module docstring for the rules.

        ``delete_unknown_gateway_routes=False`` keeps our gateway routes that are not desired (after
        an agent restart, until BGP has re-synced, so traffic keeps flowing).
        ``changed``: the only destinations (keys) that may differ since the last apply (incremental mode:
        diff and write just those, if the cache can be trusted; a full diff otherwise).

        ``desired`` is read when this is called, not when the returned awaitable runs: the caller
        may go on changing its mapping while this apply waits for an earlier one or writes (the
        agent calculates the next burst while the kernel takes this one).
        """
        dirty = dirty_routes = None
        routes = None  # every desired route: a full diff's input, copied only when one is due
        if changed is None or not self.incremental or not self._trusted():
            # A calculation's view builds its learned routes as the diff reads them; any other
            # mapping is copied.
            routes = desired.snapshot() if isinstance(desired, DesiredView) else list(desired.values())
        else:
            dirty = set(changed)
            with self._cache_lock:
                dirty |= self._touched  # what the kernel's notifications made dirty
            dirty_routes = (desired.routes(dirty) if isinstance(desired, DesiredView)
                            else [r for r in map(desired.get, dirty) if r is not None])
        return self._apply_when_free(routes, delete_unknown_gateway_routes, dirty, dirty_routes)

    async def _apply_when_free(self, routes: Iterable[DesiredRoute] | None, delete_gateway_routes: bool,
                               dirty: set[int] | None,
                               dirty_routes: list[DesiredRoute] | None) -> ApplyResult:
        async with self._lock:
            self.drifted.clear()  # what drifted so far, this apply sees
            return await self._in_thread(self._apply, routes, delete_gateway_routes, dirty,
                                         dirty_routes)

    async def set_route(self, route: DesiredRoute) -> None:
        """Write one route now, no diff, no sweep (the CNI plugin's ADD). Raises NetlinkError."""
        async with self._lock:
            await self._in_thread(self._set_route, route)

    # -- the blocking halves (run in a thread, under the lock) ----------------------------------

    def _apply(self, routes: Iterable[DesiredRoute] | None, delete_gateway_routes: bool,
               dirty: set[int] | None = None,
               dirty_routes: list[DesiredRoute] | None = None):
        """``routes``: every desired route (None: not copied, the cache was trusted when the apply
        was asked for); ``dirty_routes``: those of the ``dirty`` keys."""
        if self.incremental:
            snap, partial = self._cached_snapshot(dirty)
            if not partial and routes is None:
                # The cache stopped being trusted while this apply waited: the dirty keys are
                # diffed against the fresh cache now, every other key by the next apply.
                snap, partial = self._partial_of(snap, dirty), True
            dirty = dirty if partial else None  # the cache could not be trusted: a full diff
        else:
            snap, dirty = self._snapshot(), None
        if dirty is None:
            self.full_diffs += 1
        else:
            self.partial_diffs += 1
        desired = routes if dirty is None else dirty_routes
        result, plan = ApplyResult(), _Plan()
        try:
            for image in snap.strays:
                plan.add("stray", _key_of(image), rtnl.route_template(image))
            unwanted = self._diff(desired, snap, plan, result, dirty)
            # the dumped route itself: the kernel matches it exactly
            plan.add_all("delete", self._unwanted(unwanted, snap.names, delete_gateway_routes,
                                                  result, dirty))
            plan.deletes_first()
            failed = self._write(plan, result)
        except BaseException:
            if self.incremental:
                with self._cache_lock:
                    self._writing, self._stale = False, True  # what was written is unknown
            raise
        if self.incremental:
            self._commit(plan, failed, self._resolve_devices(plan, failed))
            with self._cache_lock:
                late = bool(self._touched)
            if late:  # made dirty after this apply was asked for: the next one takes them
                self._loop.call_soon_threadsafe(self._drift_found)
        self._last_desired = self._desired_workloads
        if dirty is not None:  # the other destinations' failures stand until they are retried
            result.failed = {**{k: r for k, r in self._failing.items() if k not in dirty},
                             **result.failed}
        self._note_failures(result.failed)
        if self.incremental:
            result.awaiting_device = set(self._waiting)
        self.writes += result.writes
        return result

    def _set_route(self, route: DesiredRoute) -> None:
        ifindex = {name: index for index, name in self._sock.dump_links().items()}
        image = self._image(route, ifindex)
        if image is None:
            raise NetlinkError(errno.ENODEV, f"device {route.dev} does not exist")
        failed = self._sock.write([(rtnl.RTM_NEWROUTE, image)])
        if failed:
            raise NetlinkError(failed[0].errno, failed[0].strerror)
        self.writes += 1
        if self._cache is None:
            return
        # Cached as an apply's write is: with the device the kernel chose for a gateway route
        # written without one, so that a lost link drops exactly the routes through it.
        plan = _Plan()
        plan.add("add", route.key, rtnl.route_template(image))
        template = plan.images[0]
        template = self._resolve_devices(plan, {}).get(template, template)
        with self._cache_lock:
            if self._cache is not None:
                self._cache.ours[route.key] = self._intern(template)

    def _kernel_routes(self) -> dict[int, KernelRoute]:
        snap = self._snapshot()
        routes = (rtnl.decode_route(image) for image in
                  map(rtnl.route_from_template, snap.ours.keys(), snap.ours.values()))
        return {r.key: _kernel_route(r, snap.names) for r in routes if _clean(r)}

    # -- reading -----------------------------------------------------------------------------

    def _snapshot(self) -> _Snapshot:
        self.dumps += 1
        flags: dict[int, int] = {}
        names = self._sock.dump_links(flags)
        dump = self._sock.dump_routes(self.table, self.proto)
        strays = []
        for image in dump.dups:  # rare: several routes of ours at one dst
            route = rtnl.decode_route(image)
            first = rtnl.route_from_template(route.key, dump.ours[route.key])
            if _clean(route) and not _clean(rtnl.decode_route(first)):  # the matchable one is "ours"
                template = rtnl.route_template(image)
                dump.ours[route.key], image = dump.templates.setdefault(template, template), first
            strays.append(image)
        up = {index for index, f in flags.items() if f & rtnl.IFF_UP}
        return _Snapshot(dump.ours, strays, dump.foreign, names, up, templates=dump.templates)

    # -- deciding ----------------------------------------------------------------------------

    def _diff(self, desired: Iterable[DesiredRoute], snap: _Snapshot, plan: _Plan,
              result: ApplyResult, dirty: set[int] | None = None) -> dict[int, bytes]:
        """Queue the adds/replaces of ``desired`` (routes); return our routes that are not desired.
        ``dirty`` given: ``desired`` and ``snap.ours`` hold only those keys; what is known of the
        other keys is kept.

        The hot loop of every resync: per route its key (an int: no ``ipaddress`` object), one
        image (from a cached shape), one ``bytes`` comparison; only routes that differ are decoded.

        A private ``snap.ours`` is consumed (what is left is unwanted). A shared one (the cache
        itself: copying 100k entries per apply was a fifth of the route table's memory) is only
        read: when every route of ours was desired nothing is unwanted, else a second pass finds
        what was not. Meanwhile nothing changes the cache: a notification that would marks it
        stale instead (``_writing``).
        """
        ours, ifindex, intern = snap.ours, {n: i for i, n in snap.names.items()}, snap.templates.setdefault
        take, workload, waiting, blocked = ours.get if snap.shared else ours.pop, set(), {}, set()
        foreign = snap.foreign
        kinds, keys, images = plan.kinds, plan.keys, plan.images  # adds and replaces go here
        found = 0  # desired routes of ours
        same: dict[bytes, bytes] = {}  # dumped template -> our template it was found equal to
        # (type, scope, onlink, dev, gateway, prefix length) -> our template (None: no device)
        templates: dict[tuple, bytes | None] = {}
        for want in desired:
            key, gateway, dev = want.key, want.gateway, want.dev
            shape = (want.type, want.scope, want.onlink, dev, None if gateway is None else gateway._ip,
                     key >> LENGTH_SHIFT)
            image = templates.get(shape, False)
            if image is False:
                image = templates[shape] = self._template(want, ifindex, intern)
            if dev is not None and dev.startswith(WORKLOAD_PREFIX):
                workload.add((key, dev))
            have = take(key, None)
            if have is not None:
                found += 1
                if have is image or same.get(have) is image:
                    continue  # already as desired: no write
                if image is not None and _same(have, image, want):
                    same[have] = image  # _same depends on the two templates only
                    continue
                route = rtnl.decode_route(rtnl.route_from_template(key, have))
                if not _clean(route):  # e.g. a metric set by hand: delete it, then add ours
                    plan.add("delete", key, have)
                    have = None
                elif route_matches(want, _kernel_route(route, snap.names)):
                    continue  # same route, other bytes (e.g. a linkdown flag)
            if key in foreign:
                result.failed[key] = (
                    f"destination held by a route of proto {foreign[key]} (not ours, left alone)")
                blocked.add(key)
            elif image is None:
                # Usual for a workload whose veth the CNI plugin has not made yet; retried next time.
                result.failed[key] = f"ENODEV: device {dev} does not exist"
                waiting[key] = dev
            else:  # plan.add, inlined: this is the loop of every route
                kinds.append("add" if have is None else "replace")
                keys.append(key)
                images.append(image)
        if dirty is not None:
            workload |= {kd for kd in self._last_desired if kd[0] not in dirty}
            waiting.update((k, d) for k, d in self._waiting.items() if k not in dirty)
            blocked |= self._blocked - dirty
        self._desired_workloads, self._waiting, self._blocked = workload, waiting, blocked
        self._waiting_devs = set(waiting.values())
        if not snap.shared:
            return ours
        if found == len(ours):
            return {}
        wanted = {want.key for want in desired}
        return {key: image for key, image in list(ours.items()) if key not in wanted}

    def _unwanted(self, unwanted: dict[int, bytes], names: dict[int, str], delete_gateway_routes: bool,
               result: ApplyResult, dirty: set[int] | None = None
               ) -> dict[int, bytes]:
        """{key: template} of our routes to delete among those not desired: strays always, the rest
        unless kept (gateway routes until BGP resynced; unknown workload routes in their grace).
        ``dirty`` given: only those keys were looked at; the grace of the others runs on."""
        workload_oifs = {i for i, name in names.items() if name.startswith(WORKLOAD_PREFIX)}
        kept = {} if dirty is None else {k: t for k, t in self._first_seen.items() if k[0] not in dirty}
        if delete_gateway_routes and not workload_oifs:
            self._first_seen = kept
            return unwanted  # nothing to keep: no need to decode (nor copy) 100k deletes
        now, stale, present = self._clock(), {}, set()
        for key, image in unwanted.items():
            route = rtnl.decode_route(rtnl.route_from_template(key, image))
            if _clean(route):
                if route.gateway and not delete_gateway_routes:
                    continue
                if route.oif in workload_oifs:
                    present.add((key, names[route.oif]))
                    remaining = self._grace_left(key, names[route.oif], now)
                    if remaining > 0:
                        result.recheck_after = min(remaining, result.recheck_after or remaining)
                        continue
            stale[key] = image
        self._first_seen = {**kept, **{k: t for k, t in self._first_seen.items() if k in present}}
        return stale

    def _grace_left(self, key: int, dev: str, now: float) -> float:
        """Seconds of grace left for an unasked-for route on a workload device (0: none).

        Such a route may be the CNI plugin's, written before its workload reached us. A route we
        desired in the previous apply gets no grace: its workload is known to be gone.
        """
        if (key, dev) in self._last_desired:
            return 0.0
        left = self._first_seen.setdefault((key, dev), now) + self._grace - now
        if left > 0:
            log.debug("keeping unknown workload route in grace period",
                      extra={"dst": key_text(key), "dev": dev})
        return max(left, 0.0)

    # -- the cache (incremental mode) -------------------------------------------------------------

    def _cached_snapshot(self, dirty: set[int] | None = None) -> tuple[_Snapshot, bool]:
        """A private copy of the cache, brought up to date (a full dump if it cannot be trusted),
        and whether it is partial: with ``dirty`` given and the cache trusted (no dump needed,
        nothing drifted, no strays), only those keys of ``ours`` are copied."""
        with self._cache_lock:
            self._pump()  # everything that happened before this apply
            dump = self._cache is None or self._stale
            if dirty is not None and not (dump or self._full_diff or self._cache.strays):
                self._writing = True
                self._touched.difference_update(dirty)  # this apply diffs them
                c = self._cache
                ours = _subset(c.ours, dirty)
                return _Snapshot(ours, [], dict(c.foreign), dict(c.names), set(c.up),
                                 templates=c.templates), True
            self._full_diff = False  # this apply diffs them all
            self._touched.clear()
            if dump:
                self._dumping = True
                self._pending.clear()  # older than the dump about to start
                self._cache = None  # dropped before the dump: never two 100k-route caches at once
        if dump:
            try:
                fresh = self._snapshot()
            finally:
                with self._cache_lock:
                    self._dumping = False
            with self._cache_lock:
                self._cache, self._stale = fresh, False
                while self._pending:  # read during the dump: in order, on top of it
                    self._on_buffer(self._pending.popleft())
                self._pump()
        with self._cache_lock:
            self._writing = True
            c = self._cache  # ours shared, not copied: _diff only reads it
            return _Snapshot(c.ours, list(c.strays), dict(c.foreign), dict(c.names), set(c.up),
                             shared=True, templates=c.templates), False

    def _trusted(self) -> bool:
        """Whether the next apply could diff just the dirty keys (the cache needs no dump, nothing
        drifted, no strays); an apply still under way may yet change that."""
        with self._cache_lock:
            return not (self._cache is None or self._stale or self._full_diff or self._cache.strays)

    def _partial_of(self, snap: _Snapshot, dirty: set[int]) -> _Snapshot:
        """The ``dirty`` keys of a full (shared) snapshot, as ``_cached_snapshot`` gives them when
        the cache is trusted; the next apply is made a full diff, and the agent is told."""
        ours = _subset(snap.ours, dirty)
        with self._cache_lock:
            self._full_diff = True
        self._loop.call_soon_threadsafe(self._drift_found)
        return _Snapshot(ours, [], snap.foreign, snap.names, snap.up, templates=snap.templates)

    def _resolve_devices(self, plan: _Plan, failed: dict[int, rtnl.NetlinkFailure]
                         ) -> dict[bytes, bytes]:
        """{template: the same + the RTA_OIF the kernel chose} of the gateway routes written
        without a device: what a dump would show, so a lost link says exactly which routes went
        with it. One ``fibmatch`` per template (routes of one gateway resolve alike); a template
        whose device the kernel does not tell stays as it is."""
        n = plan.deletes
        if failed:  # a key to ask about must be one that was written
            first: dict[bytes, int] = {}
            for i in range(n, len(plan.keys)):
                if i not in failed:
                    first.setdefault(plan.images[i], plan.keys[i])
        else:
            # one key per template (the last); islice: no copy of 100k-long columns
            first = dict(zip(itertools.islice(plan.images, n, None), itertools.islice(plan.keys, n, None)))
        first = {image: key for image, key in first.items()
                 if image[7] == rtnl.RTN_UNICAST and image[-6:-4] != _OIF_TYPE}
        resolved = {}
        for image, key in first.items():
            route = self._sock.fib_match(key)
            if route is not None and (route.key, route.proto, route.table) == (
                    key, self.proto, self.table) and route.oif:
                resolved[image] = image + rtnl.oif_attr(route.oif)
        return resolved

    def _commit(self, plan: _Plan, failed: dict[int, rtnl.NetlinkFailure],
                resolved: dict[bytes, bytes]) -> None:
        """Our own writes into the cache (the kernel does not echo them to us); ``resolved``:
        templates with the device the kernel chose (``_resolve_devices``)."""
        skipped = {i for i, err in failed.items()
                   if not (plan.kinds[i] in _DELETES and err.errno == errno.ESRCH)}
        n, keys, images = plan.deletes, plan.keys, plan.images
        with self._cache_lock:
            ours, gone, intern = self._cache.ours, set(), self._intern
            if skipped or "stray" in itertools.islice(plan.kinds, n):  # rare: one write at a time
                for i, (kind, key, image) in enumerate(zip(plan.kinds, keys, images)):
                    if i in skipped:
                        continue
                    if kind == "delete":
                        ours.pop(key, None)
                    elif kind == "stray":
                        gone.add(rtnl.route_from_template(key, image))
                    else:
                        ours[key] = intern(resolved.get(image, image))
            else:  # every write done: in bulk, a lookup per template rather than per route
                for key in itertools.islice(keys, n):
                    ours.pop(key, None)
                added, templates = itertools.islice(keys, n, None), itertools.islice(images, n, None)
                final = {t: intern(resolved.get(t, t)) for t in set(itertools.islice(images, n, None))}
                ours.update(zip(added, map(final.__getitem__, templates)))
            if gone:
                self._cache.strays = [s for s in self._cache.strays if s not in gone]
            self._writing = False

    def _intern(self, template: bytes) -> bytes:
        """``template`` as the cache's one copy of it (the cache must exist)."""
        return self._cache.templates.setdefault(template, template)

    def _on_readable(self) -> None:
        """The event socket has notifications (on the loop): fold them in, tell the agent."""
        with self._cache_lock:
            try:
                drift = self._pump()
            except OSError as err:  # not ENOBUFS (handled): still, the cache can no longer be trusted
                log.error("reading route notifications failed: %s; full resync next", err)
                self._stale = drift = True
        if drift:
            self._drift_found()

    def _drift_found(self) -> None:
        """Tell the agent to apply again (on the loop)."""
        self.drifted.set()
        if self._on_drift is not None:
            self._on_drift()

    def _pump(self) -> bool:
        """Read every queued notification (cache lock held); True if an apply is needed: our
        routes drifted (then ``_full_diff`` or ``_stale`` is set) or ``_touched`` grew."""
        drift = False
        while self._events is not None:
            try:
                buf = self._events.recv_nowait()
            except OSError as err:
                if err.errno != errno.ENOBUFS:
                    raise
                log.warning("route notifications lost (ENOBUFS): full resync on the next apply")
                self._stale = drift = True
                continue
            if buf is None:
                break
            if self._dumping:
                self._pending.append(buf)
            elif self._cache is not None:
                drift |= self._on_buffer(buf)
        return drift

    def _on_buffer(self, buf: bytes) -> bool:
        drift = False
        for mtype, flags, msg in rtnl.parse_events(buf):
            if mtype in (rtnl.RTM_NEWROUTE, rtnl.RTM_DELROUTE) and msg[16] == socket.AF_INET:
                route = rtnl.decode_route(msg[16:])
                if route.table == self.table:
                    drift |= self._on_route(mtype == rtnl.RTM_NEWROUTE, flags, route, msg[16:])
            elif mtype in (rtnl.RTM_NEWLINK, rtnl.RTM_DELLINK):
                drift |= self._on_link(mtype == rtnl.RTM_NEWLINK, *rtnl.parse_link(msg, 0, len(msg)))
        return drift

    def _on_route(self, new: bool, flags: int, route: rtnl.Route, image: bytes) -> bool:
        """Someone else added, replaced or deleted a route in our table; True if it touches ours."""
        cache, key = self._cache, route.key
        if route.proto == self.proto:
            if self._writing or not _clean(route) or (
                    new and key in cache.ours and not flags & rtnl.NLM_F_REPLACE):
                self._stale = True  # racing our writes, or a second copy: ask the kernel
            elif new:
                cache.ours[key] = self._intern(rtnl.route_template(image))
            else:
                cache.ours.pop(key, None)
            self._full_diff = True
            return True
        if new:
            cache.foreign.setdefault(key, route.proto)
            if key in cache.ours:  # beside ours, or in its place (a replace): ask the kernel
                self._stale = True
                return True
            return False
        self._stale = True  # one of possibly several copies went: which one, only a dump says
        return key in self._blocked  # a destination we wait for may be free now

    def _on_link(self, new: bool, index: int, ifi_flags: int, name: str) -> bool:
        """A link appeared, changed or went; True if routes of ours went with it or may now work."""
        cache = self._cache
        was_up = index in cache.up
        if new and ifi_flags & rtnl.IFF_UP:
            cache.up.add(index)
        else:
            cache.up.discard(index)
        old_name = cache.names.pop(index, None) if not new else cache.names.get(index)
        if new:
            cache.names[index] = name
        if was_up and index not in cache.up:  # down or deleted: the kernel took its routes, silently
            return self._lost_link(index)
        woken: set[int] = set()
        if name in self._waiting_devs and name != old_name:  # routes that waited for this device
            woken.update(key for key, dev in self._waiting.items() if dev == name)
        if not was_up and index in cache.up:  # came up: failing routes may work now
            woken.update(self._failing)
        self._touched |= woken
        return bool(woken)

    def _lost_link(self, index: int) -> bool:
        """Drop the cached routes through a link that went down or away, their destinations made
        dirty; True if there were any.

        Dumped images end with their RTA_OIF, and so do the cached templates of gateway routes we
        wrote without a device (``_resolve_devices``). One without (its device not resolved):
        only a full dump can say whether it went too. Only a dump can say it either while we
        write (our write through the link may land after its loss).
        """
        # Per shape, not per route: the templates are interned, so a lost link costs one pass
        # in C over the cache, not a Python loop (100k routes: ~4 ms against ~60 ms).
        ours, suffix = self._cache.ours, rtnl.oif_attr(index)
        shapes = set(ours.values())
        hits = {t for t in shapes if t.endswith(suffix)}
        unresolved = any(t[7] == rtnl.RTN_UNICAST and t[-6:-4] != _OIF_TYPE for t in shapes)
        through = list(itertools.compress(ours.keys(), map(hits.__contains__, ours.values()))
                       ) if hits else []
        if unresolved or (through and self._writing):
            self._stale = True
            return True
        for key in through:
            del self._cache.ours[key]
        self._touched.update(through)
        return bool(through)

    # -- writing -----------------------------------------------------------------------------

    def _image(self, want: DesiredRoute, ifindex: dict[str, int]) -> bytes | None:
        """What we write for ``want`` (and what the kernel dumps back); None: its device is missing."""
        shape = self._shape(want, ifindex)
        if shape is None:
            return None
        return rtnl.route_from_template(want.key, shape.template(want.key >> LENGTH_SHIFT))

    def _template(self, want: DesiredRoute, ifindex: dict[str, int],
                  intern: Callable[[bytes, bytes], bytes]) -> bytes | None:
        """The ``rtnl.route_template`` of ``want``, interned; None: its device is missing."""
        shape = self._shape(want, ifindex, intern)
        return None if shape is None else shape.template(want.key >> LENGTH_SHIFT)

    def _shape(self, want: DesiredRoute, ifindex: dict[str, int],
               intern: Callable[[bytes, bytes], bytes] | None = None) -> _Shape | None:
        oif = 0
        if want.dev is not None:
            oif = ifindex.get(want.dev)
            if oif is None:
                return None
        return _Shape(intern, table=self.table, proto=self.proto, rtype=rtnl.TYPES[want.type],
                      scope=rtnl.SCOPES[want.scope], onlink=want.onlink, oif=oif,
                      gateway=None if want.gateway is None else int(want.gateway))

    def _write(self, plan: _Plan, result: ApplyResult) -> dict[int, rtnl.NetlinkFailure]:
        if not plan.kinds:
            return {}
        failed = self._sock.write_templates(array("H", map(_CMD.__getitem__, plan.kinds)), plan.keys,
                                            plan.images)
        counts = Counter(plan.kinds)
        for i, err in sorted(failed.items()):
            kind, key = plan.kinds[i], plan.keys[i]
            if kind not in _DELETES:
                result.failed[key] = err.describe()
            elif err.errno != errno.ESRCH:  # ESRCH: already gone (e.g. its link went): goal met
                result.failed[key] = "delete: " + err.describe()
            counts[kind] -= 1
        result.added, result.replaced = counts["add"], counts["replace"]
        result.deleted = counts["delete"] + counts["stray"]
        if log.isEnabledFor(logging.DEBUG):
            for kind, key in zip(plan.kinds, plan.keys):
                log.debug("route %s", kind, extra={"dst": key_text(key)})
        return failed

    def _note_failures(self, failed: dict[int, str]) -> None:
        """Warn once per new failure, note recoveries; repeats of a known failure stay quiet."""
        for key, reason in failed.items():
            if self._failing.get(key) != reason:
                log.warning("route not programmed: %s: %s", key_text(key), reason)
        for key in self._failing.keys() - failed.keys():
            log.info("route programmed after earlier failure: %s", key_text(key))
        self._failing = dict(failed)


_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter


def _return_large_blocks() -> None:
    """Make glibc give blocks of 128 KiB and more back to the kernel when they are freed.

    An apply at 100k routes builds and drops multi-megabyte dicts and lists (a dump, a plan).
    glibc's default raises its mmap threshold to the size of the largest block freed, so after
    the first such apply they came from the heap, which small blocks in between kept from
    shrinking: bench.kernel_routes measured a peak RSS 14 MB higher at 100k routes (84.5 against
    70.7 MB), with the same allocations. Setting the threshold fixes it (and stops the dynamic
    adjustment) for the whole process; not glibc (no ``mallopt``): nothing to do.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (AttributeError, OSError):
        return
    mallopt(_M_MMAP_THRESHOLD, 128 * 1024)


async def _in_worker(worker: ThreadPoolExecutor, fn, *args):
    """``fn(*args)`` in ``worker``; if we are cancelled meanwhile, wait for it to end before
    passing the cancellation on: the lock stays held, and nobody closes the socket under a batch
    that is still being written."""
    work = asyncio.get_running_loop().run_in_executor(worker, fn, *args)
    try:
        return await asyncio.shield(work)
    except asyncio.CancelledError:
        await asyncio.wait({work})
        if not work.cancelled():
            work.exception()  # retrieved: the cancellation is what the caller gets
        raise


_CMD = {"delete": rtnl.RTM_DELROUTE, "stray": rtnl.RTM_DELROUTE, "add": rtnl.RTM_NEWROUTE,
        "replace": rtnl.RTM_NEWROUTE}
_DELETES = frozenset({"delete", "stray"})


def _subset(routes: dict[int, bytes], keys: set[int]) -> dict[int, bytes]:
    """The items of ``routes`` at ``keys``: one lookup per key (measured at 100k keys in sets of
    2000, against a 100k-route cache: 33 ms, where a keys-view intersection then a copy took 52
    and a membership test then a lookup 37)."""
    get = routes.get
    return {key: template for key in keys if (template := get(key)) is not None}


def _key_of(image: bytes) -> int:
    return rtnl.decode_route(image).key


class _Shape:
    """The ``rtnl.route_template`` of one shape (type, scope, gateway, device...) per prefix
    length, interned with ``intern`` (``dict.setdefault`` of the templates of the routes it is
    compared with, so that "the same" is mostly "the same object")."""

    def __init__(self, intern: Callable[[bytes, bytes], bytes] | None = None, **spec) -> None:
        self.spec, self._intern = spec, intern
        self.templates: dict[int, bytes] = {}  # by prefix length

    def template(self, dst_len: int) -> bytes:
        template = self.templates.get(dst_len)
        if template is None:
            template = rtnl.route_template(rtnl.route_image(dst=0, dst_len=dst_len, **self.spec))
            if self._intern is not None:
                template = self._intern(template, template)
            self.templates[dst_len] = template
        return template


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


def _kernel_route(route: rtnl.Route, names: dict[int, str]) -> KernelRoute:
    return KernelRoute(
        dst=key_network(route.key),
        type=rtnl.TYPE_NAMES.get(route.type, str(route.type)),
        dev=names.get(route.oif) if route.oif else None,
        gateway=IPv4Address(route.gateway) if route.gateway else None,
        scope=rtnl.SCOPE_NAMES.get(route.scope, str(route.scope)),
        proto=route.proto,
        onlink=bool(route.flags & rtnl.RTNH_F_ONLINK),
    )
