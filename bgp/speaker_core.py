"""The BGP speaker's decisions, sans I/O (h11's shape): inputs in, effects out.

Purely computational; no I/O. ``SpeakerCore`` holds the sessions (``core.PeerSession``), the RIB,
the reflector, what we advertise and the make-before-break state. Every input is a method call
with the current time passed in (``now``: monotonic seconds; ``wall``: the UTC time shown in
``node status``); each returns the effects the speaker executes in order: lines to send to
ExaBGP, timers to arm or cancel (by name, with a monotonic deadline; the speaker calls
``timer_fired`` when one fires), a config to write, a child to restart, ``on_change`` to call,
and log records. The speaker owns the ExaBGP child, the relay socket and the asyncio timers only.

Why things are the way they are:
- A session that comes up gets every prefix we advertise, then its Adj-RIB-Out of reflected
  routes, then End-of-RIB (``manual-eor true``): a graceful-restart helper drops our stale routes
  at End-of-RIB, so it comes last. A route reflector that has just started defers it
  (``core.eor_due``, RFC 4724 4.1) until the sessions whose routes it reflects to that peer sent
  theirs, or its sync deadline passed.
- A route reflector (a cluster id) sends each best path ``bgp.reflect`` picks to exactly its
  targets, next hop unchanged; without a relay nothing is sent (the next ExaBGP starts empty).
- A removed peer whose session is up gets a Cease, and the new peer set waits for its session to
  go down before the reload (``set_peers``).
- ``want_peers`` changes sessions make-before-break (``bgp.transition``): it re-plans on every
  session change and End-of-RIB while something drains, on a timer for the plan's deadlines,
  and after a Cease it waited for; ``set_peers`` underneath configures exactly what it is given.
- Peer changes reach ExaBGP as one debounced reload; a new AS number or listen port restarts it.
- A stop is a restart unless the node leaves for good (``stop``): a restart sends nothing, and
  ExaBGP's shutdown closes the TCP sessions without a NOTIFICATION, which a graceful-restart
  helper takes for a restart (RFC 4724: it keeps our routes as stale until our End-of-RIB or
  its restart time); a node leaving for good sends every session a Cease, on which the helper
  drops our routes at once.

>>> from ipaddress import IPv4Address
>>> from bgp.exabgp_conf import ExaBGPConfig
>>> from bgp.peers import PeerSpec
>>> base = ExaBGPConfig(router_id=IPv4Address("10.0.0.1"), local_address=IPv4Address("10.0.0.1"),
...                     relay_command=("socat",))
>>> sc = SpeakerCore(base=base, local_asn=64512, clock=lambda: 0.0)
>>> [type(e).__name__ for e in sc.start(now=0.0)]
['Arm', 'WriteConfig']
>>> peer = PeerSpec(IPv4Address("10.0.0.2"), 64512, 64512, False, "node-to-node mesh", "n2")
>>> sc.set_peers(frozenset({peer}), None, now=1.0)[0]
Arm(timer='reload', at=1.1)
"""
from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from ipaddress import IPv4Address, IPv4Network

from bgp import core, exabgp_conf, protocol, reflect, supervision, transition
from bgp.core import PeerStatus
from bgp.effects import (CEASE, EXPIRY, NOTIFY, RELOAD, SYNC, TRANSITION, Arm, Cancel, Effect, Log,
                         RestartChild, Send, WriteConfig, hold_down_peer, hold_down_timer)
from bgp.peers import PeerSpec
from bgp.rib import LearnedRoute, Rib

# Per-peer max-prefix (Calico's BGPPeer has no such field): one limit for every session, set by
# the agent (env PYCALICO_BGP_MAX_PREFIXES; 0: none). A route reflector legitimately sends every
# block of the cluster, so the default is far above any cluster's block count (5,000 nodes x 20
# blocks) and the 100k-prefix benchmark; it stops a peer that floods us, not a big cluster.
DEFAULT_MAX_PREFIXES = 200_000
# A peer torn down for max-prefix stays out of ExaBGP's config this long once its session is down
# (else ExaBGP reconnects at once, and the peer floods us again every few seconds); then it may
# try again (BIRD's "receive limit ... action restart", Cisco's "maximum-prefix ... restart").
MAX_PREFIX_HOLD_DOWN = 60.0
RELOAD_DEBOUNCE = 0.1  # seconds of quiet after a peer change before ExaBGP reloads its config
RELOAD_MAX_DELAY = 1.0  # ... but at most this long after the first change of a burst
CEASE_TIMEOUT = 3.0  # a removed peer's Cease: how long to wait for its session to go down


@dataclass(frozen=True)
class _Ceasing:
    """A peer set waiting for the removed peers' sessions to go down after their Cease."""
    wanted: dict[IPv4Address, PeerSpec]
    cluster: IPv4Address | None
    addresses: frozenset[IPv4Address]  # told to Cease
    deadline: float


class SpeakerCore:
    def __init__(self, *, base: exabgp_conf.ExaBGPConfig, local_asn: int,
                 gr_restart_time: int = 120, sync_deadline: float = 30.0,
                 drain_deadline: float = transition.DEADLINE,
                 max_prefixes: int | None = DEFAULT_MAX_PREFIXES,
                 max_prefix_hold_down: float = MAX_PREFIX_HOLD_DOWN,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._base = base
        self._local_asn = local_asn
        self._sync_deadline = sync_deadline
        self._drain_deadline = drain_deadline
        self._max_prefixes, self._hold_down_time = max_prefixes, max_prefix_hold_down
        self._rib = Rib(clock=clock, restart_time=gr_restart_time, router_id=base.router_id)
        self._reflector = reflect.Reflector()
        self._cluster_id: IPv4Address | None = None
        self._peers: dict[IPv4Address, core.PeerSession] = {}
        self._advertised: frozenset[IPv4Network] = frozenset()
        self._connected = False  # the relay to ExaBGP is connected: lines sent now reach it
        self._started_at: float | None = None
        self._in_sync = False
        self._sync_deadline_passed = False
        self._reload_first: float | None = None  # when the first peer change not reloaded came
        self._restart_for: str | None = None  # set_local changes the next reload restarts ExaBGP for
        self._config_text: str | None = None
        self._spawned_text: str | None = None
        self._ceasing: _Ceasing | None = None
        # Peers removed since the config was last written: ExaBGP still runs their sessions.
        self._unwritten_removals: set[IPv4Address] = set()
        # Make-before-break (want_peers): the sessions wanted, and the unwanted ones still kept.
        self._wanted: tuple[frozenset[PeerSpec], IPv4Address | None] | None = None
        self._draining: dict[IPv4Address, transition.Drain] = {}
        self._advance_pending = False  # want_peers or an event came while a Cease was pending
        # Peers sent a Cease through the API that this ExaBGP may still hold down: it keeps such
        # a peer from connecting until a reload changes or removes it (exabgp_main TEARDOWN_HOLD).
        # Not one over max-prefix: held down here too once down, and out of the config (a reload
        # naming it while its session is still up would end ExaBGP's hold).
        self._torn: set[IPv4Address] = set()
        # Peers over max-prefix that got our Cease -> until when a reload waits for their down.
        self._max_prefix_ceases: dict[IPv4Address, float] = {}
        self._md5 = supervision.Md5Watch()  # why a passive session is down: the kernel's MD5 drops

    # -- the child and its relay ----------------------------------------------------------------

    def start(self, now: float) -> list[Effect]:
        self._started_at = now
        return [Arm(SYNC, now + self._sync_deadline), *self._write_config()]

    def spawned(self) -> None:
        """A child was started with the config last written (it holds no peer down)."""
        self._spawned_text = self._config_text
        self._torn.clear()

    def config_not_written(self) -> None:
        self._config_text = None  # the next reload writes it again

    def relay_connected(self) -> list[Effect]:
        self._connected = True
        if self._config_text != self._spawned_text:  # the config changed while ExaBGP was starting
            return [Send((protocol.reload_command(),))]
        return []

    def relay_lost(self) -> None:
        self._connected = False

    def child_lost(self, reason: str, now: float, wall: datetime) -> list[Effect]:
        """The ExaBGP child is gone or being replaced: every session is down for ``reason``; the
        routes of those that were up stay as stale (graceful restart) until the restart time."""
        for peer in self._peers.values():
            if peer.child_lost(reason, wall):
                self._rib.peer_down(peer.spec.address)
        return [*self._reflect(now), *self._schedule_expiry(), NOTIFY, *self._after_session_change(now)]

    def stop(self, for_good: bool) -> list[Effect]:
        """The agent is stopping. A restart (``for_good`` False: SIGTERM of a rolling update, an
        upgrade) sends nothing: the speaker ends ExaBGP, whose shutdown closes every session
        without a NOTIFICATION, so graceful-restart helpers keep our routes as stale and the next
        speaker re-announces them, then End-of-RIB. A Cease would make them flush at once: RFC
        4724 ends graceful restart on any NOTIFICATION, and RFC 8538 (a Cease that keeps it, the
        N bit) is implemented by neither ExaBGP 5.0.15 nor BIRD 2.0.12. Leaving for good, every
        session that is up gets a Cease (Administrative Shutdown) and the speaker waits until
        none is up (``sessions_up``) before it ends ExaBGP."""
        up = sorted(a for a, p in self._peers.items() if p.state == "up")
        if not for_good:
            return [Log("info", "stopping for a restart: sessions close without a Cease, peers keep "
                            "our routes (graceful restart)", {"peers": [str(a) for a in up]})]
        effects: list[Effect] = [Log("info", "stopping for good: Cease to every session",
                                     {"peers": [str(a) for a in up]})]
        if up and self._connected:
            self._torn.update(up)
            effects.append(Send(tuple(protocol.teardown_command(a, protocol.CEASE_ADMIN_SHUTDOWN)
                                      for a in up)))
        return effects

    @property
    def sessions_up(self) -> bool:
        """Some session is up (a stop for good waits for its Cease to take them down)."""
        return self._connected and any(p.state == "up" for p in self._peers.values())

    # -- what ExaBGP tells us -------------------------------------------------------------------

    def feed(self, events: Iterable[protocol.Event], now: float, wall: datetime) -> list[Effect]:
        """Protocol events about sessions and routes (acks and text are the speaker's)."""
        effects: list[Effect] = []
        changed = False
        for event in events:
            if isinstance(event, protocol.Malformed):
                changed |= self._rib.apply(event)
                continue
            peer = self._peers.get(getattr(event, "peer", None))
            if peer is None:
                continue  # a neighbor we no longer configure (reload still in flight)
            effects += self._peer_event(peer, event, now, wall)
            changed = True
        if changed:
            effects += self._tear_down_over_limit(now)
            effects += self._reflect(now)
            effects += self._schedule_expiry()
            effects.append(NOTIFY)
            effects += self._after_session_change(now)
        self._update_sync(now)
        return effects

    def _peer_event(self, peer: core.PeerSession, event: protocol.Event, now: float,
                    wall: datetime) -> list[Effect]:
        effects: list[Effect] = []
        graceful = True
        for effect in peer.on_event(event, wall):
            match effect:
                case core.SessionUp(address):
                    effects.append(Log("info", "bgp session up", {"peer": str(address)}))
                    effects.append(Send(tuple(core.greeting(
                        peer, self._peers.values(), self._advertised,
                        self._reflector.out(address).commands(), self._deferral(now)))))
                case core.SessionDown(address, reason, graceful):  # binds ``graceful``
                    effects.append(Log("warning", "bgp session down",
                                       {"peer": str(address), "reason": reason,
                                        "graceful": graceful}))
                case core.HoldDown(address):
                    effects += self._hold_down(address, now)
        if graceful:
            self._rib.apply(event)
        else:  # a NOTIFICATION ended it: no graceful restart
            self._rib.peer_down(peer.spec.address, graceful=False)
        return effects

    def _tear_down_over_limit(self, now: float) -> list[Effect]:
        """The RIB already dropped the routes of each peer over its limit and ignores it until
        the session is down; it gets a Cease (Maximum Number of Prefixes Reached)."""
        exceeded = self._rib.take_exceeded()
        lines = core.tear_down_over_limit(self._peers, exceeded)
        self._max_prefix_ceases.update(dict.fromkeys(exceeded, now + CEASE_TIMEOUT))
        return [Send(tuple(lines))] if lines else []

    def _max_prefix_ceasing(self, now: float) -> float | None:
        """Until when a reload waits for a session over max-prefix that got our Cease to go
        down (at most CEASE_TIMEOUT after that Cease); None: none is left up."""
        peers = self._peers
        self._max_prefix_ceases = {a: until for a, until in self._max_prefix_ceases.items()
                                   if a in peers and peers[a].state == "up"
                                   and peers[a].cause == core.MAX_PREFIX_REASON and until > now}
        return max(self._max_prefix_ceases.values(), default=None)

    def _hold_down(self, address: IPv4Address, now: float) -> list[Effect]:
        """Keep a peer torn down for max-prefix out of ExaBGP's config for the hold-down."""
        return [Log("warning", "peer held down after exceeding max-prefix",
                    {"peer": str(address), "seconds": self._hold_down_time}),
                *self._reload_soon(now), Arm(hold_down_timer(address), now + self._hold_down_time)]

    def _release_hold(self, address: IPv4Address, now: float) -> list[Effect]:
        peer = self._peers.get(address)
        if peer is None or not peer.held_down:
            return []
        peer.held_down = False
        return self._reload_soon(now)

    def _after_session_change(self, now: float) -> list[Effect]:
        """A session's state or routes changed: a pending Cease may be done, a transition may move."""
        effects = self._cease_done(now)
        if self._draining:
            effects += self._advance(now)
        return effects

    # -- timers ---------------------------------------------------------------------------------

    def timer_fired(self, timer: str, now: float, wall: datetime) -> list[Effect]:
        if timer == SYNC:  # learned routes count as complete, End-of-RIB is deferred no longer
            self._in_sync = self._sync_deadline_passed = True
            return [*self._reflect(now), NOTIFY]
        if timer == EXPIRY:
            effects = [*self._reflect(now), NOTIFY] if self._rib.expire() else []
            return effects + self._schedule_expiry()
        if timer == RELOAD:
            # A config naming a peer under our Cease would make ExaBGP re-establish it. The end
            # of a pending Cease reloads (``_apply_peers``); a max-prefix one too once down (the
            # hold-down, ``_hold_down``), else the reload comes when it may.
            if self._ceasing is not None:
                return []
            if (until := self._max_prefix_ceasing(now)) is not None:
                return [Arm(RELOAD, until)]
            return self._reload_now()
        if timer == TRANSITION:
            return self._advance(now)
        if timer == CEASE:
            return self._cease_done(now, timed_out=True)
        if (address := hold_down_peer(timer)) is not None:
            return self._release_hold(address, now)
        raise AssertionError(f"Bug: no timer {timer!r}")

    def _schedule_expiry(self) -> list[Effect]:
        deadline = self._rib.next_deadline()
        return [Cancel(EXPIRY)] if deadline is None else [Arm(EXPIRY, deadline)]

    # -- peers ----------------------------------------------------------------------------------

    def set_peers(self, peers: frozenset[PeerSpec], cluster_id: IPv4Address | str | None,
                  now: float) -> list[Effect]:
        """Configure exactly ``peers`` (see ``Speaker.set_peers``). A removed peer whose session is
        up gets a NOTIFICATION Cease (Peer De-configured), and the new set waits until those
        sessions are down, at most ``CEASE_TIMEOUT``: a reload alone closes the TCP session without
        a word, and a graceful-restart helper (BIRD) then keeps our routes as stale for its whole
        restart time. Given what it already has, it does nothing and tells no one."""
        cluster = IPv4Address(cluster_id) if cluster_id is not None else None
        wanted = {p.address: p for p in peers}
        pending = self._ceasing
        if pending is not None:
            if (wanted, cluster) == (pending.wanted, pending.cluster):
                return []
        elif wanted == {a: p.spec for a, p in self._peers.items()} and cluster == self._cluster_id:
            return []
        going = frozenset(a for a, p in self._peers.items() if a not in wanted and p.state == "up")
        if going and self._connected:
            told = pending.addresses if pending is not None else frozenset()
            new = sorted(going - told)
            deadline = now + CEASE_TIMEOUT if new or pending is None else pending.deadline
            self._ceasing = _Ceasing(wanted, cluster, going | told, deadline)
            self._torn.update(new)
            effects: list[Effect] = [Send(tuple(protocol.teardown_command(a) for a in new))] if new else []
            return [*effects, Arm(CEASE, deadline)]
        self._ceasing = None
        return [*([Cancel(CEASE)] if pending is not None else []), *self._apply_peers(wanted, cluster, now)]

    @property
    def ceasing(self) -> bool:
        """A peer set waits for removed sessions to go down after their Cease."""
        return self._ceasing is not None

    def _cease_done(self, now: float, *, timed_out: bool = False) -> list[Effect]:
        pending = self._ceasing
        if pending is None:
            return []
        up = sorted(a for a in pending.addresses if a in self._peers and self._peers[a].state == "up")
        if up and not timed_out:
            return []
        self._ceasing = None
        effects: list[Effect] = []
        if up:
            effects.append(Log("warning", "peers did not go down after Cease; reloading anyway",
                               {"peers": [str(a) for a in up]}))
        else:
            effects.append(Cancel(CEASE))
        effects += self._apply_peers(pending.wanted, pending.cluster, now)
        if self._advance_pending:
            effects += self._advance(now)
        return effects

    def _apply_peers(self, wanted: dict[IPv4Address, PeerSpec], cluster: IPv4Address | None,
                     now: float) -> list[Effect]:
        # A peer removed and wanted again within one debounced reload would make no change to the
        # config, and ExaBGP would keep the session it ran meanwhile: one that came up while we
        # did not configure it (its ``up`` ignored) would show here as never up, for good. The
        # removal is written and reloaded first, so ExaBGP ends that session and starts anew.
        effects: list[Effect] = self._reload_now() if wanted.keys() & self._unwritten_removals else []
        self._cluster_id = cluster
        for address in set(self._peers) - set(wanted):
            del self._peers[address]
            self._rib.remove_peer(address)
            self._unwritten_removals.add(address)
        for address, spec in wanted.items():
            if address in self._peers:
                self._peers[address].spec = spec
            else:
                self._peers[address] = core.PeerSession(spec)
            self._rib.set_restart_cap(address, spec.max_restart_time)
            self._rib.set_peer_as(address, spec.asn, spec.local_asn)
            self._rib.set_max_prefixes(address, self._max_prefixes)
        effects += [*self._reload_soon(now), *self._configure_reflection(now), NOTIFY]
        self._update_sync(now)
        return effects

    def want_peers(self, peers: frozenset[PeerSpec], cluster_id: IPv4Address | str | None,
                   now: float) -> list[Effect]:
        """Move to exactly ``peers`` without losing routes (``bgp.transition``): new sessions are
        configured at once; a session no longer wanted stays until wanted sessions that are up and
        sent End-of-RIB provide every prefix it provides, or the drain deadline passes. Session
        changes and End-of-RIB re-evaluate it."""
        cluster = IPv4Address(cluster_id) if cluster_id is not None else None
        self._wanted = (frozenset(peers), cluster)
        return self._advance(now)

    def drop_peers(self, now: float) -> list[Effect]:
        """BGP switched off for this node (its Node deleted, or without a BGP address): every
        session goes at once, each that is up with a Cease (Peer De-configured, as ``set_peers``),
        on which peers drop our routes; no make-before-break (there is nothing to move to), and
        what was wanted before is forgotten."""
        effects: list[Effect] = [Cancel(TRANSITION)] if self._draining else []
        self._wanted, self._draining, self._advance_pending = None, {}, False
        return effects + self.set_peers(frozenset(), None, now)

    def _advance(self, now: float) -> list[Effect]:
        if self._wanted is None:
            return []
        if self._ceasing is not None:  # plan against the peer set the Cease leads to
            self._advance_pending = True
            return []
        self._advance_pending = False
        wanted, cluster = self._wanted
        by_address = {p.address: p for p in wanted}
        if not self._draining and all(a in by_address and (by_address[a].rr_client or not p.spec.rr_client)
                                      for a, p in self._peers.items()):
            return self.set_peers(wanted, cluster, now)  # nothing to drain: the common case, no RIB walk
        plan = transition.plan(wanted, {a: p.spec for a, p in self._peers.items()},
                               self._sessions(), self._draining, now, deadline=self._drain_deadline)
        effects: list[Effect] = [
            Log("info", "keeping a session no longer wanted until its routes are covered", {"peer": str(a)})
            for a in plan.draining.keys() - self._draining.keys()]
        self._draining = dict(plan.draining)
        effects.append(Cancel(TRANSITION) if plan.recheck_at is None else Arm(TRANSITION, plan.recheck_at))
        if cluster is None and any(p.rr_client for p in plan.configure):
            cluster = self._cluster_id  # still reflecting to former clients (bgp.transition)
        return effects + self.set_peers(plan.configure, cluster, now)

    def _sessions(self) -> dict[IPv4Address, transition.Session]:
        return {a: transition.Session(p.state == "up", p.state == "up" and p.eor, self._rib.provided(a))
                for a, p in self._peers.items()}

    # -- local settings and ExaBGP's config -----------------------------------------------------

    def set_local(self, asn: int, listen_port: int, now: float) -> list[Effect]:
        """Our AS number and listen port, changed live. ExaBGP reads its listen port only when it
        starts, and changes a session's AS number only by closing it with a Cease, on which a
        graceful-restart helper (BIRD) drops our routes at once. Either change therefore restarts
        the child instead, as a crash would: peers keep our routes as stale and we keep theirs
        (graceful restart) until the sessions are back with the new settings (a peer configured
        for the old AS refuses our OPEN, and BIRD, for one, ends its graceful restart then). The
        sessions' own ``local_asn`` comes with ``set_peers``; a burst of both is one restart
        (debounced). Before ``start`` the first child gets them anyway."""
        if not 1 <= asn <= 2**32 - 1:
            raise ValueError(f"asn: {asn} is outside 1..{2**32 - 1}")
        changes = []
        if asn != self._local_asn:
            changes.append(f"local AS number {self._local_asn} -> {asn}")
        if listen_port != self._base.port:
            changes.append(f"listen port {self._base.port} -> {listen_port}")
        if not changes:
            return []
        self._base = dataclasses.replace(self._base, port=listen_port)  # validates the port
        self._local_asn = asn
        effects: list[Effect] = [Log("info", "bgp settings changed", {"changes": changes})]
        if self._started_at is not None:  # one restart says every change of its burst
            self._restart_for = ", ".join(filter(None, [self._restart_for, *changes]))
            effects += self._reload_soon(now)
        return effects

    def _reload_soon(self, now: float) -> list[Effect]:
        """One ExaBGP reload for a burst of peer changes (50 nodes joining is one reload, not 50:
        each reload re-reads the whole config and re-evaluates every neighbor)."""
        if self._started_at is None:
            return []
        if self._reload_first is None:
            self._reload_first = now
        return [Arm(RELOAD, core.reload_at(self._reload_first, now, RELOAD_DEBOUNCE, RELOAD_MAX_DELAY))]

    def _reload_now(self) -> list[Effect]:
        self._reload_first = None
        effects = self._write_config()
        restart_for, self._restart_for = self._restart_for, None
        if restart_for:
            effects.append(RestartChild(f"{restart_for}: exabgp restarted to apply it"))
        elif effects and self._connected:
            effects.append(Send((protocol.reload_command(),)))
        return effects

    def _write_config(self) -> list[Effect]:
        """The config for the sessions not held down, if it differs from the last one written or
        names a peer ExaBGP holds down after our Cease that is wanted again: the reload that
        follows ends that hold (ExaBGP finds the neighbor changed, since its teardown turned
        graceful restart off), where an unchanged config would leave the peer down for the rest
        of TEARDOWN_HOLD. A peer whose Cease is still pending stays held."""
        cfg = dataclasses.replace(self._base, peers=frozenset(
            p.spec for p in self._peers.values() if not p.held_down))
        text = exabgp_conf.render(cfg)
        configured = {p.address for p in cfg.peers}
        ceasing = self._ceasing.addresses if self._ceasing is not None else frozenset()
        if text == self._config_text and not (self._torn & configured) - ceasing:
            return []
        self._config_text = text
        self._torn &= configured & ceasing  # the rest are removed by this reload, or held no longer
        self._unwritten_removals.clear()
        return [WriteConfig(text, len(self._peers))]

    # -- what we advertise and accept -----------------------------------------------------------

    def set_advertisements(self, prefixes: frozenset[IPv4Network]) -> list[Effect]:
        for prefix in prefixes:
            if not isinstance(prefix, IPv4Network):
                raise TypeError(f"prefixes: {prefix!r} is not an IPv4Network")
        removed, added = self._advertised - prefixes, prefixes - self._advertised
        self._advertised = frozenset(prefixes)
        if self._connected and self._peers and (removed or added):
            return [Send(tuple(protocol.withdraw_commands(removed) + protocol.announce_commands(added)))]
        return []

    def set_import_filter(self, pools: frozenset[IPv4Network], own_blocks: frozenset[IPv4Network],
                          now: float) -> list[Effect]:
        return [*self._reflect(now), NOTIFY] if self._rib.set_import_filter(pools, own_blocks) else []

    def set_origins(self, blocks: dict[IPv4Network, IPv4Address] | None,
                    borrowed: dict[IPv4Address, IPv4Address], now: float) -> list[Effect]:
        return [*self._reflect(now), NOTIFY] if self._rib.set_origins(blocks, borrowed) else []

    def set_origins_current(self, current: bool) -> list[Effect]:
        """Whether the origins are the datastore's current view (``Rib.set_origins_current``)."""
        return self._schedule_expiry() if self._rib.set_origins_current(current) else []

    def change_origins(self, blocks: dict[IPv4Network, IPv4Address | None],
                       borrowed: dict[IPv4Address, IPv4Address | None], now: float) -> list[Effect]:
        return [*self._reflect(now), NOTIFY] if self._rib.change_origins(blocks, borrowed) else []

    # -- reflection -----------------------------------------------------------------------------

    def _configure_reflection(self, now: float) -> list[Effect]:
        """After a change of peers or cluster id: every best path's targets again."""
        rib, cluster = self._rib, self._rib.cluster_id
        effects: list[Effect] = []
        if rib.set_cluster_id(self._cluster_id) or cluster is not None or self._cluster_id is not None:
            rib.track_dirty(self._cluster_id is not None)
            ibgp = {a: p.spec.rr_client for a, p in self._peers.items() if p.spec.asn == p.spec.local_asn}
            effects += self._send_reflected(self._reflector.configure(
                self._cluster_id, ibgp, rib.best_routes(), rib.router_ids))
        return effects + self._reflect(now)

    def _reflect(self, now: float) -> list[Effect]:
        """What the best paths that changed mean for each reflection target, then the
        End-of-RIBs that became due (``core.eor_due``): after the routes they close."""
        effects: list[Effect] = []
        dirty = self._rib.take_dirty()
        if dirty:
            rib = self._rib
            effects += self._send_reflected(self._reflector.update(
                ((p, rib.best_route(p)) for p in dirty), rib.router_ids))
        if self._connected:
            eors = core.owed_eors(self._peers.values(), self._deferral(now))
            if eors:
                effects.append(Send(tuple(eors)))
        return effects

    def _deferral(self, now: float) -> core.Deferral:
        waited = 0.0 if self._started_at is None else now - self._started_at
        if self._sync_deadline_passed:  # its timer fired: never a hair short of the deadline
            waited = max(waited, self._sync_deadline)
        return core.Deferral(self._cluster_id is not None, waited, self._sync_deadline)

    def _send_reflected(self, changes: reflect.Changes) -> list[Effect]:
        # Without a relay nothing is sent: the next ExaBGP starts empty, and each session that
        # comes up gets its whole Adj-RIB-Out then.
        return [Send(tuple(changes.commands()))] if changes and self._connected else []

    # -- reading (no effects, no state change) --------------------------------------------------

    def _update_sync(self, now: float) -> None:
        """Latch: once in sync, a session added later does not make learned routes incomplete."""
        if not self._in_sync:
            self._in_sync = core.in_sync(list(self._peers.values()), self._started_at, now,
                                         self._sync_deadline)

    @property
    def routes_in_sync(self) -> bool:
        """Learned routes are complete: since started, every configured session was up and sent
        End-of-RIB, or the sync deadline passed (``core.in_sync``). It latches on input (events,
        peer sets, the deadline's timer), never on reading: a speaker started without peers is
        in sync, and stops being so if peers come before anything latched it."""
        return self._in_sync or (self._started_at is not None and all(p.synced for p in self._peers.values()))

    def learned_routes(self) -> frozenset[LearnedRoute]:
        return self._rib.best()

    def learned_count(self) -> int:
        return self._rib.best_count()

    def learned_changes(self) -> tuple[list[LearnedRoute], list[LearnedRoute]]:
        return self._rib.take_changes()

    def learned_change_columns(self) -> tuple[tuple[list[int], list], tuple[list[int], list]]:
        return self._rib.take_change_columns()

    def reflected(self) -> dict[IPv4Address, dict[IPv4Network, reflect.Reflected]]:
        return self._reflector.sent()

    def peer_status(self) -> list[PeerStatus]:
        """Each configured session; a passive one that is down with TCP MD5 drops counted since
        its last state change says so (``supervision.Md5Watch``); one kept by make-before-break
        says so after its state."""
        wanted = frozenset(p.address for p in self._wanted[0]) if self._wanted is not None else frozenset()
        md5 = self._md5.reasons(self._md5_sessions())
        return [core.draining_status(_with_reason(self._peers[a].status(), md5.get(a)),
                                     self._draining.keys(), wanted)
                for a in sorted(self._peers)]

    @property
    def md5_wanted(self) -> bool:
        """Some passive session is down: the speaker should sample the TCP MD5 counters."""
        return self._md5.wanted(self._md5_sessions())

    def md5_counters(self, counts: supervision.Md5Counts | None) -> None:
        """The namespace's TCP MD5 drop counters now (read by the speaker from /proc)."""
        self._md5.sample(counts, self._md5_sessions())

    def _md5_sessions(self) -> list[supervision.Md5Session]:
        return [supervision.Md5Session(a, (p.spec, p.state, p.since), p.state == "up", p.spec.passive,
                                       p.spec.password is not None)
                for a, p in self._peers.items() if not p.held_down]

    def counters(self) -> dict[str, int]:
        return dict(self._rib.counters)


def _with_reason(status: PeerStatus, more: str | None) -> PeerStatus:
    """``status`` with ``more`` after its own reason."""
    if not more:
        return status
    reason = f"{status.reason}; {more}" if status.reason else more
    return dataclasses.replace(status, reason=reason, info=f"{status.bgp_state} {reason}")
