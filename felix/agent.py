"""``pycalico-node``: the per-node agent. Wires datastore -> calc -> kernel and BGP.

One asyncio loop. The syncer thread only posts batches (memory, mark dirty); one level-triggered
reconcile applies a burst. Before a reconcile the loop waits as long as the previous one cost in
CPU time (at most ``COALESCE``; nothing after one that cost less than ``COALESCE_FROM``) since it
ended: an event after a quiet spell is reconciled at once, cheap incremental reconciles follow
each other closely, and a burst of expensive ones (rebuilds) leaves the process at least half idle
while the burst lands. The frequent events (workload endpoints, learned BGP routes)
update the route calculation incrementally and write only the destinations that changed; any other
change rebuilds it (``_reconcile``). Nothing is written to the kernel, and no BGP peer is configured, before
the datastore is in sync. On exit (SIGTERM) the agent stops its ExaBGP child but leaves its kernel
routes in place, so traffic keeps flowing while it restarts; the next agent adopts them. Its BGP
sessions close without a Cease, so graceful-restart peers keep its routes as stale until the next
agent's End-of-RIB; only a node leaving for good sends its peers a Cease, on which they drop its
routes at once: its Node deleted or without a BGP address (BGP switched off for the node: every
session ends then, ``Speaker.drop_peers``), or PYCALICO_BGP_STOP=cease (every stop).
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import ipaddress
import itertools
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace

import tenacity

import datastore
import hostio
from bgp.peers import bgp_peers, password_problems, secret_refs
from bgp.speaker import Speaker, max_prefixes_from_env, origin_validation_from_env, stops_for_good_from_env
from cni.server import CNIServer
from crds import Node, ObjectMeta
from crds.models import NodeBGPSpec, NodeSpec
from datastore import secrets
from datastore.base import AlreadyExists, Conflict, Datastore, Forbidden, NotFound, Unavailable
from datastore.syncer import Connection, Syncer, is_fatal
from felix import cluster, logs
from felix.autodetect import detect
from felix.calc import PROTO, RouteCalc, key_network, key_text, workload_route
from felix.dataplane import RouteTable
from felix.encap import Encap
from felix.health import HEALTH_PORT, METRICS_PORT, AgentHealth, HealthServer
from felix.metrics import count_route_kinds, route_kind
from felix.inspect import compare
from felix.startup import default_pool, ensure_default_pool
from felix.status import RUN_ROOT, StatusServer

log = logging.getLogger("pycalico.agent")

RETRY_DELAY = 1.0  # first retry of routes that failed (e.g. their cali* device is not there yet)
MAX_RETRY_DELAY = 30.0  # retries back off (jittered) up to this while the failure lasts
# Full kernel dump and diff even without events (Felix's routeRefreshInterval, 90 s; env
# FELIX_ROUTEREFRESHINTERVAL). Between them the route table's cache is kept by netlink notifications.
RESYNC_INTERVAL = 90.0  # Felix's routeRefreshInterval default
TICK_INTERVAL = 60.0  # the idle loop still wakes this often (liveness: health.STALL_AFTER is 120 s)
# The most the loop waits between two reconciles for a burst to land; it waits only as long as the
# previous reconcile cost in CPU time, so one pod event reaches the kernel in milliseconds, not 50 ms.
COALESCE = 0.05
# A reconcile that cost less CPU than this (one pod event's: ~1-3 ms at 100k routes) is followed
# by no pause at all: a pod event right behind another waited ~2 ms for nothing (events arriving
# during a reconcile are taken together by the next one anyway).
COALESCE_FROM = 0.01
# While the first snapshot loads (100k blocks: millions of new objects) the cyclic GC is off: it ran
# ~20 full collections of up to 1 s each, collecting nothing. The first full route apply collects
# once and freezes (_freeze_long_lived); should that take longer than this, the GC comes back on.
LOAD_GC_OFF = 300.0
# A full (generation 2) collection walks every object not frozen, and a burst of 100k learned routes
# leaves ~300k long-lived ones (RIB, calculation, route cache) not yet frozen: with CPython's default
# (700, 10, 10) the learn and withdrawal of 100k routes ran 11 full passes, with this 1
# (bench.bgp_convergence agent_gc_collections; offline, the BGP-to-calculation path of 100k routes
# spent 0.20 CPU-s in the GC with the default, 0.07 with this). Young collections stay as frequent
# (they are cheap, and our structures hold no cycles to find sooner).
GC_THRESHOLDS = (700, 10, 100)
CNI_ROUTE_WAIT = 5.0  # at most this long a CNI ADD waits for its pod route to be written
# From this many destinations changed by one reconcile (a burst of learned routes) its route apply
# is left running while the loop goes on: the next reconcile takes and calculates what arrived
# meanwhile (and the speaker reads ExaBGP) while the kernel takes this one, and waits for it only
# before its own apply. Smaller changes are written before the reconcile returns, as always.
PIPELINE_MIN = 2048
CAUSES = ("event", "retry", "resync", "drift")  # drift: the kernel changed our routes (netlink)


NETWORKING_BACKENDS = ("bird", "vxlan", "none")


@dataclass(frozen=True)
class AgentConfig:
    node: str
    ipv4: ipaddress.IPv4Interface
    datastore_type: str
    etcd_endpoints: str | None
    run_dir: Path
    route_proto: int = PROTO
    kubeconfig: str | None = None
    health_host: str = "127.0.0.1"  # FELIX_HEALTHHOST (Felix binds health to localhost)
    health_port: int | None = HEALTH_PORT  # FELIX_HEALTHPORT; None: off
    metrics_host: str = "0.0.0.0"  # FELIX_PROMETHEUSMETRICSHOST
    metrics_port: int | None = None  # FELIX_PROMETHEUSMETRICSPORT when ...ENABLED (Felix: off)
    bgp: bool = True  # CALICO_NETWORKING_BACKEND: bird (BGP on), vxlan / none (routes from affinities)


class Backoff:
    """Jittered exponential delays (tenacity's strategy) for work retried outside a call."""

    def __init__(self, base: float, cap: float) -> None:
        self._wait = tenacity.wait_random_exponential(multiplier=base, max=cap)
        self.failures = 0

    def next_delay(self) -> float:
        self.failures += 1
        return self._wait(SimpleNamespace(attempt_number=self.failures))

    def reset(self) -> None:
        self.failures = 0


class Agent:
    def __init__(self, cfg: AgentConfig, ds: Datastore) -> None:
        self.cfg, self.ds = cfg, ds
        self.state = cluster.ClusterState()
        # Incremental: a cache fed by our writes and netlink notifications; a route of ours that
        # someone deletes or alters is repaired at once ("drift"), a full dump only on resync.
        self.routes = RouteTable(proto=cfg.route_proto, incremental=True,
                                 on_drift=lambda: self._request("drift"))
        self.encap = Encap(ds, cfg.node)  # tunnels and NAT, applied before the routes
        self._encap_problems: dict[str, str] = {}
        self._unroutable: dict = {}
        self.speaker: Speaker | None = None
        # Who may announce what (bgp.policy), kept by difference; the speaker that has the set.
        self._origins, self._origins_speaker = cluster.BgpOrigins(), None
        self.secrets = None  # BGP password Secrets (datastore.secrets), made in run()
        self._secrets_changed, self._password_problems = False, []
        self._wake = asyncio.Event()
        self._causes: set[str] = set()
        self._stop = asyncio.Event()
        self._desired: dict = {}  # the full desired mapping by dst_key (status, health): calc.desired
        # The route calculation, kept incrementally (see _reconcile); valid only once rebuilt.
        self.calc = RouteCalc()
        self._calc_ready = False
        self._workloads = cluster.LocalWorkloads(cfg.node)
        self._learned_dirty = True  # the speaker said something changed since we last read it
        self._full_apply = True  # the next route apply diffs every destination
        self._causes_now: set[str] = set()
        self._last_reconcile = -RESYNC_INTERVAL  # loop time the latest reconcile ended
        self._last_cost = 0.0  # and the CPU time it cost (the process's: its worker threads too)
        self.gc_pauses = GcPauses()
        self._unhonoured_said: tuple[str, list[str]] | None = None  # FelixConfiguration fields
        self._syncer: Syncer | None = None
        self._retry: asyncio.TimerHandle | None = None
        self._route_backoff = Backoff(RETRY_DELAY, MAX_RETRY_DELAY)
        self._error_backoff = Backoff(RETRY_DELAY, MAX_RETRY_DELAY)
        self.reconciles = dict.fromkeys(CAUSES, 0)
        self.reconcile_errors = 0
        self.last_error: tuple[str, datetime] | None = None
        self.fatal: BaseException | None = None
        self._tick = time.monotonic()  # liveness: the loop's latest iteration
        self._routes_applied = False
        self._route_failures: dict = {}
        self._applying: asyncio.Future | None = None  # a route apply left running (PIPELINE_MIN)
        self.health = HealthServer(self._health, host=cfg.health_host, health_port=cfg.health_port,
                                   metrics_host=cfg.metrics_host, metrics_port=cfg.metrics_port)
        # The CNI path: the thin host plugin forwards kubelet's requests here (cni/thin.py); the
        # agent is warm, connected, and the node's single IPAM writer.
        self.cni = CNIServer(cfg.run_dir / "cni.sock", ds, cfg.node,
                             observe=self.health.metrics.observe_cni, on_added=self._on_cni_added)
        self._aio: asyncio.AbstractEventLoop | None = None
        self._status = StatusServer(cfg.run_dir / "status.sock",
                                    {"status": self._status_topic, "routes": self._routes_topic})

    # -- lifecycle --
    async def run(self) -> None:
        loop = self._aio = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        await self.routes.open()
        await self.encap.open()
        await self._status.start()
        await self.health.start()  # probes answer "datastore connecting" until in sync
        await self.cni.start()
        self.secrets = secrets.for_agent(self.ds, self.cfg.kubeconfig,
                                         lambda: loop.call_soon_threadsafe(self._on_secret_change))
        self._syncer = Syncer(
            self.ds, cluster.WATCHED_KINDS,
            lambda batch: loop.call_soon_threadsafe(self._on_batch, batch),
            on_fatal=lambda exc: loop.call_soon_threadsafe(self._die, exc),
            reduce=cluster.reduce_resource)  # an IPAM block's few used fields, not its model
        gc.callbacks.append(self.gc_pauses)
        gc.set_threshold(*GC_THRESHOLDS)
        gc.disable()
        gc_back = loop.call_later(LOAD_GC_OFF, gc.enable)
        self._syncer.start()
        try:
            await self._loop()
        finally:
            gc_back.cancel()
            gc.enable()
            gc.callbacks.remove(self.gc_pauses)
            await self._shutdown()

    async def _shutdown(self) -> None:
        log.info("stopping; kernel routes are left in place for the next agent to adopt")
        if self._retry is not None:
            self._retry.cancel()
        if self._applying is not None:  # a route apply still writing: let it end first
            await asyncio.wait({self._applying})
        if self._syncer is not None:
            await asyncio.to_thread(self._syncer.stop)
        if self.speaker is not None:
            await self.speaker.stop(for_good=self._leaving_for_good())
        if self.secrets is not None:
            await asyncio.to_thread(self.secrets.close)
        await self._status.stop()
        await self.cni.stop()
        await self.health.stop()
        await self.routes.close()
        await self.encap.close()
        self.ds.close()

    def _leaving_for_good(self) -> bool:
        """A stop is a restart (peers keep our routes by graceful restart) unless the node leaves:
        PYCALICO_BGP_STOP=cease, or our Node deleted from the datastore (a node removed from the
        cluster; the speaker runs only once in sync, so a Node missing is a Node deleted)."""
        node_gone = self.state.in_sync and all(
            n.name != self.cfg.node for n in cluster.node_infos(self.state))
        if node_gone:
            log.info("own Node deleted from the datastore: leaving for good", extra={"node": self.cfg.node})
        return stops_for_good_from_env() or node_gone

    def _die(self, exc: BaseException) -> None:
        self.fatal = exc
        self._stop.set()

    def _on_secret_change(self) -> None:
        self._secrets_changed = True
        self._request("event")

    def _on_batch(self, batch) -> None:
        if self.state.apply(batch):
            self._request("event")

    def _request(self, cause: str) -> None:
        """Ask for a reconcile; watchers and timers only do this, never any I/O themselves."""
        self._causes.add(cause)
        self._wake.set()

    def _retry_in(self, delay: float) -> None:
        """One pending retry at a time, at the earliest time anyone asked for."""
        loop = asyncio.get_running_loop()
        when = loop.time() + delay
        if self._retry is not None and self._retry.when() <= when:
            return
        if self._retry is not None:
            self._retry.cancel()
        self._retry = loop.call_at(when, self._retry_due)

    def _retry_due(self) -> None:
        self._retry = None
        self._request("retry")

    def refresh_interval(self) -> float | None:
        """Seconds between full kernel resyncs, None for never: FELIX_ROUTEREFRESHINTERVAL, else
        FelixConfiguration ``routeRefreshInterval`` (ours, else default), else 90 s; 0 turns it off
        (Felix's meaning)."""
        env = os.environ.get("FELIX_ROUTEREFRESHINTERVAL")
        if env:
            seconds = float(env)
        else:
            spec = cluster.felix_settings(self.state, self.cfg.node)
            seconds = spec.route_refresh_seconds if spec is not None else RESYNC_INTERVAL
        return seconds if seconds > 0 else None

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        next_resync = loop.time() + (self.refresh_interval() or float("inf"))
        while not self._stop.is_set():
            self._tick = time.monotonic()
            waiter = asyncio.ensure_future(self._wake.wait())
            stopper = asyncio.ensure_future(self._stop.wait())
            await asyncio.wait({waiter, stopper},
                               timeout=min(TICK_INTERVAL, max(0.0, next_resync - loop.time())),
                               return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            stopper.cancel()
            if self._stop.is_set():
                return
            if loop.time() >= next_resync:
                self._causes.add("resync")
                next_resync = loop.time() + (self.refresh_interval() or float("inf"))
            elif not self._wake.is_set():
                continue  # only the liveness tick
            await self._coalesce()
            causes, self._causes = self._causes or {"resync"}, set()
            self._wake.clear()
            if self.state.in_sync:
                cpu = time.process_time()
                await self._guarded_reconcile(causes)
                self._last_reconcile = loop.time()
                self._last_cost = time.process_time() - cpu

    async def _coalesce(self) -> None:
        """Let a burst land: since the last reconcile ended, wait as long as it cost in CPU time
        (at most COALESCE). After a quiet spell that is nothing but one turn of the loop (callbacks
        already queued, e.g. the rest of a syncer batch, still land): an isolated event costs no
        sleep, and a 1 ms incremental reconcile delays the next event by 1 ms at most. CPU time,
        not wall time: a reconcile that waited (for the kernel, or for a core on a busy machine)
        cost nothing worth leaving idle for, and on a loaded node wall time made one slow event
        delay the next by as much again (pod-event p99 over 10 ms at 100k routes). Events
        arriving during a reconcile are taken together by the next one anyway."""
        pause = min(self._last_cost, COALESCE) if self._last_cost >= COALESCE_FROM else 0.0
        left = self._last_reconcile + pause - asyncio.get_running_loop().time()
        await asyncio.sleep(max(left, 0.0))

    async def _guarded_reconcile(self, causes: set[str]) -> None:
        """One reconcile; a failure is temporary (retried with backoff, counted, shown in node
        status) unless it is a broken invariant, which stops the agent (kopf's classification)."""
        for cause in causes:
            self.reconciles[cause] += 1
        started = time.monotonic()
        if "resync" in causes:
            self.routes.resync()  # the next apply starts from a full dump
        self._causes_now = causes
        try:
            await self._reconcile()
        except Exception as exc:  # noqa: BLE001 - classified right here
            self._reconcile_failed(exc)
        else:
            if self._applying is None:  # else: reset once its apply succeeded
                self._error_backoff.reset()
        finally:
            self.health.metrics.observe_reconcile(time.monotonic() - started,
                                                  "+".join(sorted(causes)))

    def _reconcile_failed(self, exc: Exception) -> None:
        if is_fatal(exc):
            log.critical("reconcile hit a broken invariant; stopping", exc_info=True)
            self._die(exc)
            return
        first = self._error_backoff.failures == 0
        delay = self._error_backoff.next_delay()
        self.reconcile_errors += 1
        self.last_error = (f"{type(exc).__name__}: {exc}", _now())
        log.warning("reconcile failed, retrying in %.1fs: %s", delay, self.last_error[0],
                    exc_info=first)
        self._retry_in(delay)

    # -- the reconcile: current state in, kernel and BGP brought to match --
    async def _reconcile(self) -> None:
        """Incremental when only workload endpoints and/or the speaker's learned routes changed:
        the calculation takes their deltas (the speaker's own record of what changed) and the route table writes just the destinations that
        changed (speaker, tunnels and NAT depend on neither, and are left alone). Anything else
        (pools, Nodes, blocks, BGP configuration, the first reconcile, one after a failure)
        rebuilds the calculation. A resync or a retry always diffs every route (a retry also
        re-applies tunnels and NAT: their recheck comes as a retry); after a drift the route
        table adds what the kernel changed to the dirty set itself (a pod's veth gone: its
        route), or diffs everything when it cannot say (someone else changed a route of ours).
        The route apply of a burst (``PIPELINE_MIN``) is left running: the kernel takes it while
        the next reconcile calculates, which waits for it before its own apply and then adds
        the learned routes that changed during that wait (``_catch_up``)."""
        causes, changes = self._causes_now, self.state.take_changes()
        if self.cfg.bgp:
            self._origins.update(self.state, changes)
        if cluster.IN_SYNC in changes or "FelixConfiguration" in changes:
            self._report_unhonoured()
        if self.cfg.bgp and self.speaker is not None and "IPAMBlock" in changes:
            # A block we claimed goes out first: what configure does (peers, tunnels, NAT) and
            # the calculation change nothing we announce, and took ~10 ms of the claiming node's
            # reconcile (its CNI ADD runs meanwhile). New peers get everything once up anyway.
            await self._advertise(cluster.local_blocks(self.state, self.cfg.node))
        rebuild = not self._calc_ready or bool(changes.keys() - {"WorkloadEndpoint"})
        self._calc_ready = False  # until this reconcile succeeds: a failed one leaves a rebuild
        configure = (rebuild or bool(causes & {"retry", "resync"}) or bool(self._encap_problems)
                     or self._secrets_changed)
        self._secrets_changed = False
        if configure and not await self._configure():
            return
        learned_changed, bgp_in_sync = self._learned_dirty, True
        if self.cfg.bgp:
            self._learned_dirty = False  # a change from here on asks for another reconcile
            bgp_in_sync = self.speaker.check_routes_in_sync()
            # A datastore away: a route ahead of its block's affinity stays held, not counted.
            self.speaker.set_origins_current(_datastore_current(self.state))
        gone, appeared = set(), set()
        if rebuild:
            workloads = self._workloads.reset(self.state)
            if self.cfg.bgp:  # before the calculation, which changes nothing we announce
                await self._advertise(cluster.local_blocks(self.state, self.cfg.node))
            changed = self._rebuild(self._read_learned(), workloads)
        else:
            gone, appeared = self._workloads.update(self.state, changes.get("WorkloadEndpoint", ()))
            removed, added = self._learned_changes() if learned_changed else ((), ())
            changed = self.calc.update(workloads_removed=gone, workloads_added=appeared,
                                       learned_removed=removed, learned_added=added)
            if self.cfg.bgp and (gone or appeared):
                await self._advertise(self.calc.own_blocks)
        # Until BGP has re-synced after a restart, learned routes we no longer know are kept (the
        # speaker tells us when it is in sync: it notifies, and we come back here, for a full diff).
        full = (rebuild or self._full_apply or not bgp_in_sync
                or bool(causes & {"resync", "retry"}))  # a drift: the route table knows what moved
        self._full_apply = True
        waited = self._applying is not None
        if not await self._routes_written():  # the previous reconcile's apply, if it still runs
            full = True  # it failed (counted, logged, a retry is due): what it wrote is unknown
        elif waited and not full:
            changed = self._catch_up(changed)
        inline = full or len(changed) < PIPELINE_MIN
        with _gc_paused(inline):
            applying = self.routes.apply(self.calc.desired, delete_unknown_gateway_routes=bgp_in_sync,
                                         changed=None if full else changed)  # reads desired now
            if inline:
                result = await applying
        if full:  # the calculation and the route table's cache (a dump) are new: freeze them
            _freeze_long_lived()
        if not inline:  # written while the next reconcile takes and calculates what arrived meanwhile
            self._applying = asyncio.ensure_future(self._apply_in_background(applying))
        self._full_apply = not bgp_in_sync
        self._calc_ready = True
        if self._applying is None:
            self._schedule_route_retries(result)

    def _catch_up(self, changed: set) -> set:
        """``changed`` and the destinations of the learned routes that changed while this
        reconcile waited for the previous apply: they go out in this apply rather than after
        another reconcile and its wait (the last routes of a BGP burst arrive during that wait:
        bench.bgp_convergence's learn ended ~50 ms after ExaBGP's last write, ~15 ms with this)."""
        if not (self.cfg.bgp and self._learned_dirty):
            return changed
        self._learned_dirty = False  # a change from here on asks for another reconcile
        removed, added = self._learned_changes()
        more = self.calc.update(learned_removed=removed, learned_added=added)
        return changed | more if more else changed

    def _report_unhonoured(self) -> None:
        """Name the FelixConfiguration fields set here that have no effect on this agent, so an
        operator knows: at start and when the resource changes, once per distinct list."""
        res = cluster.felix_configuration(self.state, self.cfg.node)
        fields = cluster.unhonoured_felix_fields(res.spec) if res is not None else []
        said = (res.name, fields) if fields else None
        if said is not None and said != self._unhonoured_said:
            log.warning("FelixConfiguration %s: %s not honoured by pycalico (no effect)", res.name,
                        ", ".join(fields), extra={"fields": fields})
        self._unhonoured_said = said

    async def _routes_written(self) -> bool:
        """Wait for the route apply a previous reconcile left running, if any (its outcome is
        handled by ``_apply_in_background``); False if it failed."""
        if self._applying is None:
            return True
        await asyncio.wait({self._applying})
        applying, self._applying = self._applying, None
        return applying.result()

    async def _apply_in_background(self, applying) -> bool:
        """A failure counts and retries as a failed reconcile's would; the next reconcile
        rebuilds and diffs every route (or, if one is under way, diffs every route)."""
        try:
            result = await applying
        except Exception as exc:  # noqa: BLE001 - classified right here
            self._calc_ready, self._full_apply = False, True
            self._reconcile_failed(exc)
            return False
        self._schedule_route_retries(result)
        return True

    def _set_origins(self, speaker: Speaker) -> None:
        """The whole set to a speaker that has none yet, else what changed since."""
        changed = self._origins.take_changes()
        if speaker is self._origins_speaker:
            speaker.change_origins(*changed)
        else:
            speaker.set_origins(self._origins.blocks, self._origins.borrowed)
            self._origins_speaker = speaker

    async def _configure(self) -> bool:
        """BGP peers and import filter (advertisements follow the calculation), then tunnels and NAT;
        False while our own Node is not there yet."""
        node = self.cfg.node
        glob = cluster.bgp_global(self.state)
        infos = cluster.node_infos(self.state)
        me = next((n for n in infos if n.name == node), None)
        if me is None or me.ipv4 is None:
            log.warning("own Node resource missing or without ipv4Address; waiting",
                        extra={"node": node})
            if self.speaker is not None:  # BGP switched off for this node: peers drop our routes
                await self.speaker.drop_peers()
            return False
        if self.cfg.bgp:
            local_asn = me.asn if me.asn is not None else glob.asn
            speaker = self.speaker or await self._start_speaker(local_asn, glob.listen_port)
            speaker.set_local(local_asn, glob.listen_port)  # a change restarts ExaBGP, gracefully
            explicit = cluster.explicit_peers(self.state)
            await speaker.want_peers(bgp_peers(me, infos, glob, explicit, self._passwords(glob, explicit)),
                                    cluster_id=me.rr_cluster_id)  # set: we reflect (RFC 4456)
            speaker.set_import_filter(cluster.pool_cidrs(self.state),
                                      cluster.local_blocks(self.state, node))
            if origin_validation_from_env():  # see bgp.policy
                self._set_origins(speaker)
        # Tunnel devices and NAT first: a VXLAN route needs vxlan.calico to exist.
        encap = await self.encap.apply(self.state, me.ipv4)
        if encap.problems != self._encap_problems:
            for why in encap.problems.values():
                log.warning("encapsulation not ready: %s", why)
        self._encap_problems = encap.problems
        if encap.recheck_after:  # an unused tunnel waits out its grace before it goes
            self._retry_in(encap.recheck_after)
        return True

    def _passwords(self, glob, explicit) -> dict:
        """The BGP passwords' values; each one that cannot be used is logged when that changes."""
        found = self.secrets.resolve(secret_refs(glob, explicit)) if self.secrets else {}
        problems = password_problems(glob, explicit, found)
        if problems != self._password_problems and (self.secrets is None or self.secrets.settled()):
            for problem in problems:
                log.warning("BGP password: %s", problem)
            self._password_problems = problems
        return found

    def _read_learned(self) -> frozenset:
        """Every learned route, for a rebuild; the speaker's change record starts again from here
        (no await in between: both see the same RIB)."""
        if not self.cfg.bgp or self.speaker is None:
            return frozenset()
        self.speaker.learned_changes()
        return cluster.remote_routes(self.speaker.learned_routes())

    def _learned_changes(self) -> tuple[list, list]:
        """(removed, added) learned routes since the last read, as ``(key, via)`` pairs: work per
        changed route (a set difference of two 100k-route lists cost ~0.3 s per reconcile), no
        object per route (``cluster.learned_pairs``)."""
        if not self.cfg.bgp or self.speaker is None:
            return [], []
        return cluster.learned_pairs(self.speaker.learned_change_columns())

    async def _advertise(self, own: frozenset[ipaddress.IPv4Network]) -> None:
        """Our blocks (``own``: the datastore's before a rebuild's calculation, else the
        calculation's, the same set), and the /32s of local workloads borrowed from others'
        blocks: those come and go with pods, so they are set here, not only with the peers (a
        no-op if unchanged). Sent before the route apply, as BIRD announces a block from the
        datastore whatever Felix has written."""
        await self.speaker.set_advertisements(cluster.export_prefixes(
            self.state, self.cfg.node, self._workloads, own=own))

    def _rebuild(self, learned: frozenset, workloads: frozenset) -> set:
        """``workloads``: every local workload, as ``self._workloads.reset`` returned them."""
        inp = cluster.calc_input(self.state, self.cfg.node, (), bgp=self.cfg.bgp, workloads=workloads)
        changed = self.calc.rebuild(replace(inp, learned=learned))
        self._desired, self._unroutable = self.calc.desired, self.calc.problems
        return changed

    def _schedule_route_retries(self, result) -> None:
        self._error_backoff.reset()
        # by IPv4Network: health output names them (few, normally none)
        self._routes_applied = True
        self._route_failures = {key_network(k): why for k, why in result.failed.items()}
        if result.failed.keys() - result.awaiting_device:  # for those, the table wakes us
            delay = self._route_backoff.next_delay()
            log.debug("routes failed, retrying in %.1fs", delay,
                      extra={"failed": {key_text(k): v for k, v in result.failed.items()}})
            self._retry_in(delay)
        else:
            self._route_backoff.reset()
        if result.writes:
            log.info("routes applied", extra={"added": result.added, "replaced": result.replaced,
                                              "deleted": result.deleted})
        if result.recheck_after:  # unknown cali* routes in their grace period: look again
            self._retry_in(result.recheck_after)

    async def _start_speaker(self, asn: int, port: int) -> Speaker:
        # Started only once in sync: the AS number, port and peers come from the datastore
        # (later changes reach it through set_local and want_peers).
        speaker = Speaker(
            node_name=self.cfg.node, router_id=self.cfg.ipv4.ip, local_address=self.cfg.ipv4.ip,
            local_asn=asn, listen_port=port, run_dir=self.cfg.run_dir,
            on_change=self._on_speaker_change, max_prefixes=max_prefixes_from_env(),
        )
        try:
            await speaker.start()
        except BaseException:
            await speaker.stop()  # a half-started speaker (socket bound, no child) must not linger
            raise
        self.speaker = speaker
        return speaker

    def _on_cni_added(self, ifname: str, address: ipaddress.IPv4Address) -> None:
        """After a successful CNI ADD (in its worker thread, before kubelet hears of it): the pod's
        ``/32 dev cali*`` now, as Calico's CNI plugin does, rather than once its WorkloadEndpoint
        went round the datastore; the reconcile then finds it as desired (same bytes: no write).
        Not before our first apply: nothing is written before the datastore is in sync."""
        if self._aio is None or not self._routes_applied:
            return
        route = workload_route(address, ifname, "cni")
        asyncio.run_coroutine_threadsafe(self.routes.set_route(route), self._aio).result(CNI_ROUTE_WAIT)

    def _on_speaker_change(self) -> None:
        self._learned_dirty = True
        self._request("event")

    # -- health and metrics (felix/health.py reads this on every probe and scrape) --
    def _health(self) -> AgentHealth:
        sp = self.speaker
        return AgentHealth(
            loop_tick=self._tick, datastore_in_sync=self.state.in_sync,
            connection=self.state.connection, bgp_enabled=self.cfg.bgp,
            speaker=sp.status() if sp else None, peers=tuple(sp.peer_status()) if sp else (),
            routes_applied=self._routes_applied, route_failures=self._route_failures,
            reconcile_error=self.last_error[0] if self._error_backoff.failures else None,
            reconciles=dict(self.reconciles), reconcile_errors=self.reconcile_errors,
            routes_by_kind=self._route_kinds(),
            route_writes=self.routes.writes, route_dumps=self.routes.dumps,
            bgp_counters=sp.counters() if sp else {},
            prefixes_accepted=sp.learned_count() if sp else 0)

    def _route_kinds(self) -> dict[str, int]:
        """Desired routes by kind, for every probe and scrape: from the calculation's count per
        reason (a walk of 100k routes stalled the loop ~70 ms per probe)."""
        if self._desired is not self.calc.desired:  # not calculated here (set directly)
            return count_route_kinds(r.reason for r in self._desired.values())
        counts = count_route_kinds(())
        for reason, n in self.calc.other_reasons.items():
            kind = route_kind(reason)
            counts[kind] = counts.get(kind, 0) + n
        counts["learned"] += self.calc.learned_count  # each one's reason: "learned from <peer>"
        return counts

    # -- status endpoint topics --
    async def _status_topic(self) -> dict:
        sp = self.speaker
        peers = sp.peer_status() if sp is not None else []
        return {
            "node": self.cfg.node, "ipv4": str(self.cfg.ipv4), "pid": os.getpid(),
            "datastore_in_sync": self.state.in_sync,
            "datastore": _connection_dict(self.state.connection),
            "bgp_routes_in_sync": bool(sp and sp.check_routes_in_sync()),
            "bgp_speaker": _speaker_dict(sp.status() if sp is not None else None),
            "peers": [_peer_dict(p) for p in peers],
            "counters": sp.counters() if sp is not None else {},
            "reconciles": sum(self.reconciles.values()),
            "reconciles_by_cause": dict(self.reconciles),
            "networking_backend": "bird" if self.cfg.bgp else "none",
            "encap_problems": dict(self._encap_problems),
            "unroutable": {str(k): v for k, v in self._unroutable.items()},
            "reconcile_errors": self.reconcile_errors,
            "last_error": None if self.last_error is None else {
                "message": self.last_error[0], "since": self.last_error[1].isoformat()},
            "route_dumps": self.routes.dumps, "route_writes": self.routes.writes,
            "gc": self.gc_pauses.as_dict(),
        }

    async def _routes_topic(self) -> list[dict]:
        kernel = await self.routes.kernel_routes()
        return [_route_status_dict(s) for s in compare(self._desired, kernel)]


class GcPauses:
    """The cyclic GC's pauses (a ``gc.callbacks`` entry): how many, in total and the longest, and
    how many over 1 ms and 5 ms; ``node status`` shows them and bench.event_latency reports them
    over its events (a pause stalls the loop, and at 100k routes full collections once took 1 s)."""

    def __init__(self) -> None:
        self.collections = [0, 0, 0]  # by generation
        self.total = self.longest = 0.0
        self.over_1ms = self.over_5ms = 0
        self._started = 0.0

    def __call__(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        pause = time.perf_counter() - self._started
        self.collections[info["generation"]] += 1
        self.total += pause
        self.longest = max(self.longest, pause)
        self.over_1ms += pause > 0.001
        self.over_5ms += pause > 0.005

    def as_dict(self) -> dict:
        return {"collections": sum(self.collections), "by_generation": list(self.collections),
                "pause_total_ms": round(self.total * 1000, 2),
                "pause_max_ms": round(self.longest * 1000, 2),
                "pauses_over_1ms": self.over_1ms, "pauses_over_5ms": self.over_5ms}


@contextlib.contextmanager
def _gc_paused(pause: bool = True) -> Iterator[None]:
    """No cyclic GC pass while a route apply runs (``pause``): an apply that is to diff every
    route holds every desired route in a new list while it runs (100k items at 100k routes), and
    a pass that finds that list young walks all of it, 1-10 ms (the tail of the pod-event
    latency). What is allocated meanwhile is looked at by the first pass after."""
    if not pause or not gc.isenabled():  # off: the first load, or a caller's own pause
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _freeze_long_lived() -> None:
    """After a full route apply (a rebuilt calculation, the route table's cache refilled by a
    dump): collect the garbage, then move every live object into the permanent generation
    (``gc.freeze``), which no collection walks. At 100k routes the datastore view, the calculation
    and the route cache are millions of long-lived objects: full collections walked them all for
    0.6-1.5 s each (collecting nothing) and stalled the loop. After the apply, not before, so that
    what the apply made is frozen too. The cost of freezing: a cycle among frozen objects that
    becomes garbage later is not collected (a few objects per rebuild at most: our own
    structures hold no cycles). Turns the GC back on after the first load."""
    gc.collect()
    gc.freeze()
    gc.enable()


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _datastore_current(state: cluster.ClusterState) -> bool:
    """The agent's view is the datastore's: in sync, and the connection not lost since (a lost
    one is reported until the syncer has listed everything again)."""
    return state.in_sync and (state.connection is None or state.connection.state == "connected")


def _connection_dict(conn: Connection | None) -> dict:
    if conn is None:
        return {"state": "connecting", "since": None, "reason": "", "errors": 0}
    since = datetime.fromtimestamp(conn.since, timezone.utc).isoformat()
    return {"state": conn.state, "since": since, "reason": conn.reason, "errors": conn.errors}


def _speaker_dict(st) -> dict:
    if st is None:
        return {"state": "stopped", "since": None, "reason": "not started (waiting for sync)"}
    return {"state": st.state, "since": st.since.isoformat() if st.since else None,
            "reason": st.reason}


def _peer_dict(p) -> dict:
    """``state`` in BIRD's words, as the ``node status`` table (Established, Active, Connect,
    Idle, ...); ``exabgp_state`` as ExaBGP reports it."""
    return {"address": str(p.address), "name": p.name, "peer_type": p.peer_type,
            "state": p.bgp_state, "exabgp_state": p.state,
            "since": p.since.isoformat() if p.since else None, "info": p.info, "reason": p.reason}


def _route_status_dict(s) -> dict:
    route = s.desired or s.kernel
    return {
        "dst": str(s.dst), "reason": s.reason, "in_sync": s.in_sync, "state": s.state,
        "type": route.type, "dev": route.dev,
        "gateway": str(route.gateway) if route.gateway else None,
        "kernel": None if s.kernel is None else {
            "type": s.kernel.type, "dev": s.kernel.dev, "proto": s.kernel.proto,
            "gateway": str(s.kernel.gateway) if s.kernel.gateway else None},
    }


# -- start-up helpers --

def register_node(ds: Datastore, name: str, ipv4: ipaddress.IPv4Interface) -> Node:
    """Create or update our Node with its BGP address (CAS; a concurrent writer makes us re-read).

    On Kubernetes the Node is kubelet's to create, and our ClusterRole does not allow it: a missing
    Node there is "wait for kubelet" (an ``Unavailable``, retried by the caller, saying so), not a
    bare 403."""
    for _ in range(10):
        try:
            current = ds.get("Node", name)
        except NotFound:
            node = Node(metadata=ObjectMeta(name=name),
                        spec=NodeSpec(bgp=NodeBGPSpec(ipv4_address=str(ipv4))))
            try:
                return ds.create(node)
            except AlreadyExists:
                continue
            except Forbidden as exc:
                raise Unavailable(f"Node {name} does not exist yet and this service account may "
                                  f"not create Nodes (kubelet registers them): waiting ({exc})") from exc
        bgp = (current.spec.bgp or NodeBGPSpec()).model_copy(update={"ipv4_address": str(ipv4)})
        if current.spec.bgp == bgp:
            return current
        try:
            return ds.update(current.model_copy(
                update={"spec": current.spec.model_copy(update={"bgp": bgp})}))
        except Conflict:
            continue
    raise RuntimeError(f"Node {name}: could not register after repeated write conflicts")


def enable_forwarding() -> None:
    # A node routes between its pods and the fabric: forwarding is required, per namespace.
    Path("/proc/sys/net/ipv4/ip_forward").write_text("1\n")


def parse_args(argv: list[str] | None) -> AgentConfig:
    env = os.environ
    p = argparse.ArgumentParser(prog="pycalico-node", description=__doc__.splitlines()[0])
    p.add_argument("--name", default=env.get("NODENAME") or socket.gethostname(),
                   help="node name (env NODENAME; default: hostname)")
    p.add_argument("--ip", default=env.get("IP"),
                   help="IPv4 address/prefix, or autodetect (env IP, with IP_AUTODETECTION_METHOD: "
                        "first-found, interface=, skip-interface=, cidr=, can-reach=)")
    p.add_argument("--datastore-type", default=env.get("DATASTORE_TYPE"),
                   help="etcdv3 | kubernetes (env DATASTORE_TYPE; default: etcdv3 when etcd "
                        "endpoints are given, else kubernetes, as in a Calico manifest)")
    p.add_argument("--etcd-endpoints", default=env.get("ETCD_ENDPOINTS"))
    p.add_argument("--kubeconfig", default=env.get("KUBECONFIG"),
                   help="for --datastore-type kubernetes (env KUBECONFIG; default: in-cluster)")
    p.add_argument("--run-dir", default=None, help="default: /run/pycalico/<name>")
    p.add_argument("--health-host", default=env.get("FELIX_HEALTHHOST", "127.0.0.1"))
    p.add_argument("--health-port", type=int, default=int(env.get("FELIX_HEALTHPORT", HEALTH_PORT)),
                   help=f"/liveness and /readiness (env FELIX_HEALTHPORT; default {HEALTH_PORT}; 0: off)")
    p.add_argument("--metrics-port", type=int, default=int(env.get("FELIX_PROMETHEUSMETRICSPORT",
                                                                    METRICS_PORT)))
    p.add_argument("--metrics", action=argparse.BooleanOptionalAction,
                   default=env.get("FELIX_PROMETHEUSMETRICSENABLED", "").lower() == "true",
                   help="serve Prometheus /metrics (env FELIX_PROMETHEUSMETRICSENABLED; default off)")
    p.add_argument("--metrics-host", default=env.get("FELIX_PROMETHEUSMETRICSHOST", "0.0.0.0"))
    p.add_argument("--route-proto", type=int, default=PROTO)
    p.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    p.add_argument("--networking-backend", default=env.get("CALICO_NETWORKING_BACKEND") or "bird",
                   help="bird: BGP on (default); vxlan | none: no BGP, remote blocks routed from "
                        "their affinities (env CALICO_NETWORKING_BACKEND)")
    p.add_argument("--log-level", default=env.get("LOG_LEVEL", "INFO"))
    a = p.parse_args(argv)
    logs.setup(a.log_level)
    if a.networking_backend not in NETWORKING_BACKENDS:
        raise ValueError(f"CALICO_NETWORKING_BACKEND: {a.networking_backend!r} is not one of "
                         f"{', '.join(NETWORKING_BACKENDS)}")
    if a.ip in (None, "", "autodetect"):  # calico-node's IP=autodetect
        ipv4 = detect(env.get("IP_AUTODETECTION_METHOD") or "first-found")
    else:
        ipv4 = ipaddress.IPv4Interface(a.ip if "/" in a.ip else f"{a.ip}/32")
    run_dir = Path(a.run_dir) if a.run_dir else RUN_ROOT / a.name
    datastore_type = a.datastore_type or ("etcdv3" if a.etcd_endpoints else "kubernetes")
    return AgentConfig(node=a.name, ipv4=ipv4, datastore_type=datastore_type,
                       etcd_endpoints=a.etcd_endpoints, run_dir=run_dir, route_proto=a.route_proto,
                       kubeconfig=a.kubeconfig, health_host=a.health_host,
                       health_port=a.health_port or None, metrics_host=a.metrics_host,
                       metrics_port=a.metrics_port if a.metrics else None,
                       bgp=a.networking_backend == "bird")


def _version() -> str:
    import importlib.metadata  # here, not at the top: it loads email, csv, zipfile (2.8 MB RSS)

    try:
        return importlib.metadata.version("pycalico")
    except importlib.metadata.PackageNotFoundError:  # running from a source tree, not installed
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    # The agent forks (its ExaBGP child) while gRPC threads (etcd) run; gRPC's fork handlers only
    # warn about that and are not needed, since the child execs at once. Set before gRPC loads.
    os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
    try:
        cfg = parse_args(argv)
        # The agent sees only its own node's workloads (a field selector on the Kubernetes datastore).
        ds = datastore.connect(cfg.datastore_type, etcd_endpoints=cfg.etcd_endpoints,
                               kubeconfig=cfg.kubeconfig, node_name=cfg.node)
        default_pool(os.environ)  # a bad CALICO_IPV4POOL_* stops us here, naming it
        stops_for_good_from_env()  # and a bad PYCALICO_BGP_STOP
    except (ValueError, RuntimeError) as exc:
        print(f"pycalico-node: {exc}", file=sys.stderr)
        return 2
    try:
        if cfg.run_dir.parent == RUN_ROOT:
            hostio.private_dir(RUN_ROOT)  # 0700 even if an older version or a loose umask made it
        hostio.private_dir(cfg.run_dir)
    except OSError as exc:  # UnsafePath included: a symlink, or a directory of another user
        print(f"pycalico-node: --run-dir: {exc}", file=sys.stderr)
        return 2
    enable_forwarding()
    for attempt in itertools.count():
        try:
            register_node(ds, cfg.node, cfg.ipv4)
            ensure_default_pool(ds, os.environ)
            break
        except Unavailable as exc:  # transient: the datastore may come up after us
            delay = min(5.0, 0.2 * 2**attempt)
            log.warning("datastore unavailable, retrying", extra={"reason": str(exc), "delay": delay})
            time.sleep(delay)
    log.info("starting", extra={"node": cfg.node, "ipv4": str(cfg.ipv4)})
    agent = Agent(cfg, ds)
    asyncio.run(agent.run())
    if agent.fatal is not None:
        print(f"pycalico-node: fatal: {type(agent.fatal).__name__}: {agent.fatal} "
              "(kernel routes were left in place)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
