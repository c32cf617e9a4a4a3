"""bgp.speaker_core without ExaBGP: inputs with the time passed in, effects out."""
from __future__ import annotations

import doctest
from dataclasses import replace
from datetime import datetime, timezone
from ipaddress import IPv4Address, IPv4Network

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bgp import core, effects as fx, protocol, speaker_core as sc
from bgp.exabgp_conf import ExaBGPConfig
from bgp.peers import PeerSpec
from bgp.rib import ORIGIN_HOLD
from bgp.speaker import stops_for_good_from_env

ME = IPv4Address("10.0.0.1")
A, B, RR = IPv4Address("10.0.0.2"), IPv4Address("10.0.0.3"), IPv4Address("10.0.0.9")
MESH_A = PeerSpec(A, 64512, 64512, False, "node-to-node mesh", "a")
MESH_B = PeerSpec(B, 64512, 64512, False, "node-to-node mesh", "b")
TO_RR = PeerSpec(RR, 64512, 64512, False, "global", "rr")
BLOCK_A, BLOCK_B = IPv4Network("10.244.2.0/26"), IPv4Network("10.244.3.0/26")
WALL = datetime(2026, 1, 1, tzinfo=timezone.utc)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Harness:
    """A SpeakerCore with a fake clock, started, with its relay connected; keeps armed timers."""

    def __init__(self, **kw) -> None:
        self.clock = Clock()
        base = ExaBGPConfig(router_id=ME, local_address=ME, relay_command=("socat",))
        self.core = sc.SpeakerCore(base=base, local_asn=64512, clock=self.clock, **kw)
        self.timers: dict[str, float] = {}
        self.config = ""  # the last config written
        self.run(self.core.start(0.0))
        self.core.spawned()
        self.run(self.core.relay_connected())
        self.core.set_import_filter(frozenset({IPv4Network("10.244.0.0/16")}), frozenset(), 0.0)

    def run(self, effects: list[fx.Effect]) -> list[fx.Effect]:
        for effect in effects:
            match effect:
                case fx.Arm(timer, at):
                    self.timers[timer] = at
                case fx.Cancel(timer):
                    self.timers.pop(timer, None)
                case fx.WriteConfig(text):
                    self.config = text
        return effects

    def at(self, now: float) -> None:
        self.clock.now = now

    def fire(self, timer: str) -> list[fx.Effect]:
        """Move the clock to ``timer``'s deadline and fire it."""
        at = self.timers.pop(timer)
        self.at(at)
        return self.run(self.core.timer_fired(timer, at, WALL))

    def feed(self, *events: protocol.Event) -> list[fx.Effect]:
        return self.run(self.core.feed(list(events), self.clock.now, WALL))

    def set_peers(self, *peers: PeerSpec, cluster=None) -> list[fx.Effect]:
        return self.run(self.core.set_peers(frozenset(peers), cluster, self.clock.now))

    def want_peers(self, *peers: PeerSpec) -> list[fx.Effect]:
        return self.run(self.core.want_peers(frozenset(peers), None, self.clock.now))

    def up(self, peer: PeerSpec, *prefixes: IPv4Network, restart_time: int | None = 120) -> list[fx.Effect]:
        effects = self.feed(protocol.PeerStateChanged(peer.address, "up"),
                            protocol.OpenReceived(peer.address, peer.address, 9, restart_time))
        if prefixes:
            effects += self.feed(protocol.RoutesAnnounced(peer.address, peer.address, prefixes))
        return effects

    def down(self, peer: PeerSpec, reason: str = "closed") -> list[fx.Effect]:
        return self.feed(protocol.PeerStateChanged(peer.address, "down", reason))

    def prefixes(self) -> set[IPv4Network]:
        return {r.prefix for r in self.core.learned_routes()}

    def status(self, address: IPv4Address) -> core.PeerStatus:
        return next(s for s in self.core.peer_status() if s.address == address)


def sent(effects: list[fx.Effect]) -> list[str]:
    return [line for e in effects if isinstance(e, fx.Send) for line in e.lines]


def of(kind: type, effects: list[fx.Effect]) -> list:
    return [e for e in effects if isinstance(e, kind)]


def test_the_module_docstring_runs():
    assert doctest.testmod(sc).failed == 0


# -- graceful restart (helper) ------------------------------------------------------------------

def test_a_restarting_peers_routes_stay_stale_until_its_end_of_rib():
    h = Harness()
    h.set_peers(MESH_A)
    h.up(MESH_A, BLOCK_A, BLOCK_B)
    h.at(10.0)
    effects = h.down(MESH_A)
    assert fx.Arm(fx.EXPIRY, 130.0) in effects, "expiry armed at the peer's restart time"
    assert h.prefixes() == {BLOCK_A, BLOCK_B}, "kept as stale while it restarts"
    h.at(20.0)
    h.up(MESH_A, BLOCK_A)
    assert h.prefixes() == {BLOCK_A, BLOCK_B}, "still stale until End-of-RIB: more may follow"
    effects = h.feed(protocol.EndOfRib(A, protocol.IPV4_UNICAST))
    assert h.prefixes() == {BLOCK_A}, "End-of-RIB: what was not re-announced goes"
    assert fx.Cancel(fx.EXPIRY) in effects and fx.EXPIRY not in h.timers
    assert fx.NOTIFY in effects


def test_a_peer_that_does_not_come_back_loses_its_routes_at_the_restart_time():
    h = Harness()
    h.set_peers(replace(MESH_A, max_restart_time=60))
    h.up(MESH_A, BLOCK_A, restart_time=120)
    h.at(5.0)
    h.down(MESH_A)
    assert h.timers[fx.EXPIRY] == 65.0, "the configured maxRestartTime caps what the peer offered"
    h.at(64.9)
    assert h.prefixes() == {BLOCK_A}
    effects = h.fire(fx.EXPIRY)
    assert h.prefixes() == set() and fx.NOTIFY in effects
    assert fx.EXPIRY not in h.timers, "nothing stale left: no timer"


def test_the_child_lost_keeps_every_up_sessions_routes_stale():
    h = Harness()
    h.set_peers(MESH_A, MESH_B)
    h.up(MESH_A, BLOCK_A)
    h.at(3.0)
    effects = h.run(h.core.child_lost("down: exabgp exited with code 1", 3.0, WALL))
    assert h.prefixes() == {BLOCK_A} and h.timers[fx.EXPIRY] == 123.0
    assert fx.NOTIFY in effects
    assert {s.reason for s in h.core.peer_status()} == {"down: exabgp exited with code 1"}


def test_a_peer_without_graceful_restart_loses_its_routes_at_once():
    h = Harness()
    h.set_peers(MESH_A)
    h.up(MESH_A, BLOCK_A, restart_time=None)
    h.down(MESH_A)
    assert h.prefixes() == set() and fx.EXPIRY not in h.timers


def test_a_peer_that_ends_its_session_with_a_notification_loses_its_routes_at_once():
    """RFC 4724 4.2: a NOTIFICATION ends graceful restart, as BIRD does: a node leaving for good
    (Cease, Administrative Shutdown) must not stay routed to for its restart time."""
    h = Harness()
    h.set_peers(MESH_A)
    h.up(MESH_A, BLOCK_A)
    h.feed(protocol.NotificationReceived(A, 6, 2, ""))
    assert h.prefixes() == {BLOCK_A}, "the NOTIFICATION alone changes nothing: the down does"
    effects = h.down(MESH_A, "notification received (6,2): Cease / Administrative Shutdown")
    assert h.prefixes() == set() and fx.EXPIRY not in h.timers
    assert fx.NOTIFY in effects
    assert h.status(A).reason == "Received: Administrative shutdown (6/2)"


def test_a_notification_drops_the_stale_routes_of_an_earlier_session_too():
    h = Harness()
    h.set_peers(MESH_A)
    h.up(MESH_A, BLOCK_A, BLOCK_B)
    h.down(MESH_A)  # a plain TCP loss: kept as stale
    h.up(MESH_A, BLOCK_A)
    assert h.prefixes() == {BLOCK_A, BLOCK_B}
    h.down(MESH_A, "notification sent (4,0): Hold timer expired")
    assert h.prefixes() == set() and fx.EXPIRY not in h.timers


def test_after_a_notification_the_next_session_still_restarts_gracefully():
    h = Harness()
    h.set_peers(MESH_A)
    h.up(MESH_A, BLOCK_A)
    h.feed(protocol.NotificationReceived(A, 6, 4, ""))
    h.down(MESH_A, "notification received (6,4)")
    h.up(MESH_A, BLOCK_B)
    h.at(10.0)
    h.down(MESH_A, "closing connection: peer closed the connection")
    assert h.prefixes() == {BLOCK_B} and h.timers[fx.EXPIRY] == 130.0


# -- max-prefix ---------------------------------------------------------------------------------

def test_over_max_prefix_a_peer_gets_a_cease_then_is_held_down_and_released():
    h = Harness(max_prefixes=2, max_prefix_hold_down=60.0)
    h.set_peers(MESH_A, MESH_B)
    h.fire(fx.RELOAD)
    h.up(MESH_A)
    effects = h.feed(protocol.RoutesAnnounced(A, A, tuple(IPv4Network(f"10.244.{i}.0/26") for i in range(3))))
    assert sent(effects) == [protocol.teardown_command(A, protocol.CEASE_MAX_PREFIXES)]
    assert h.prefixes() == set()
    assert h.status(A).info == "Established", "up until ExaBGP says it is down"
    h.at(1.0)
    h.down(MESH_A)
    assert h.status(A).reason == core.MAX_PREFIX_REASON
    assert h.timers[fx.hold_down_timer(A)] == 61.0 and fx.RELOAD in h.timers
    config = of(fx.WriteConfig, h.fire(fx.RELOAD))[0].text
    assert str(A) not in config and str(B) in config, "held down: out of ExaBGP's config"
    h.fire(fx.hold_down_timer(A))
    assert fx.RELOAD in h.timers, "released: a reload brings it back"
    effects = h.fire(fx.RELOAD)
    assert str(A) in of(fx.WriteConfig, effects)[0].text
    assert sent(effects) == [protocol.reload_command()]


def test_a_hold_down_that_ends_after_the_peer_was_removed_changes_nothing():
    h = Harness(max_prefixes=1)
    h.set_peers(MESH_A)
    h.up(MESH_A)
    h.feed(protocol.RoutesAnnounced(A, A, (BLOCK_A, BLOCK_B)))
    h.down(MESH_A)
    h.set_peers()
    assert h.core.timer_fired(fx.hold_down_timer(A), 60.0, WALL) == []


# -- Cease before reload ------------------------------------------------------------------------

def test_a_removed_peer_that_is_up_gets_a_cease_before_the_reload_drops_it():
    h = Harness()
    h.set_peers(MESH_A, MESH_B)
    h.fire(fx.RELOAD)
    h.up(MESH_A)
    h.at(5.0)
    effects = h.set_peers(MESH_B)
    assert sent(effects) == [protocol.teardown_command(A)], "Cease (Peer De-configured) first"
    assert h.core.ceasing and h.timers[fx.CEASE] == 5.0 + sc.CEASE_TIMEOUT
    assert fx.RELOAD not in h.timers, "no reload while the Cease is under way"
    assert [s.address for s in h.core.peer_status()] == [A, B]
    assert h.set_peers(MESH_B) == [], "asked again for the same: nothing more"
    h.at(5.2)
    effects = h.down(MESH_A)
    assert not h.core.ceasing and fx.CEASE not in h.timers
    assert [s.address for s in h.core.peer_status()] == [B]
    assert h.timers[fx.RELOAD] == pytest.approx(5.3)
    assert str(A) not in of(fx.WriteConfig, h.fire(fx.RELOAD))[0].text


def test_a_peer_wanted_again_before_its_removal_reached_exabgp_is_removed_there_first():
    """Removed, then wanted again within one debounced reload (the lab's mesh password Secret
    deleted and re-created): the config came out the same, no reload went to ExaBGP, and the
    session ExaBGP ran meanwhile stayed, its ``up`` ignored while the peer was not configured.
    The peer showed Idle for good (the lab's "mesh back with the Secret" timed out). Now the
    removal is written and reloaded first, and the peer comes back with the next reload."""
    h = Harness()
    h.set_peers(MESH_A, MESH_B)
    h.fire(fx.RELOAD)
    h.up(MESH_A)
    h.set_peers(MESH_B)
    h.down(MESH_A, "notification sent (6,3)")  # the Cease's down: removed, reload pending
    h.up(MESH_A)  # ExaBGP connected again: nobody configured to tell
    effects = h.set_peers(MESH_A, MESH_B)
    assert str(A) not in of(fx.WriteConfig, effects)[0].text and sent(effects) == ["reload"]
    assert str(A) in of(fx.WriteConfig, h.fire(fx.RELOAD))[0].text, "back with the next reload"
    assert h.status(A).state == "start", "a new session in ExaBGP: its up is still to come"
    h.up(MESH_A)
    assert h.status(A).state == "up"


def test_a_cease_nobody_answers_applies_the_new_peers_at_the_timeout():
    h = Harness()
    h.set_peers(MESH_A)
    h.up(MESH_A)
    h.set_peers()
    effects = h.fire(fx.CEASE)
    assert not h.core.ceasing and h.core.peer_status() == []
    assert [e.message for e in of(fx.Log, effects)] == ["peers did not go down after Cease; reloading anyway"]
    assert fx.RELOAD in h.timers


def test_a_removed_peer_that_is_not_up_or_without_a_relay_goes_at_once():
    h = Harness()
    h.set_peers(MESH_A, MESH_B)
    assert sent(h.set_peers(MESH_B)) == [] and not h.core.ceasing
    h.up(MESH_B)
    h.core.relay_lost()
    assert sent(h.set_peers()) == [] and not h.core.ceasing


def test_losing_the_child_ends_a_pending_cease():
    h = Harness()
    h.set_peers(MESH_A)
    h.up(MESH_A)
    h.set_peers()
    h.core.relay_lost()
    h.run(h.core.child_lost("down: relay lost", 1.0, WALL))
    assert not h.core.ceasing and h.core.peer_status() == []


def test_a_stop_for_a_restart_sends_no_cease():
    """A rolling update's SIGTERM: ExaBGP's shutdown closes the sessions without a NOTIFICATION,
    and graceful-restart helpers keep our routes (a Cease would make them flush)."""
    h = Harness()
    h.set_peers(MESH_A)
    h.fire(fx.RELOAD)
    h.up(MESH_A)
    effects = h.run(h.core.stop(for_good=False))
    assert sent(effects) == []
    assert h.core.sessions_up, "nothing was asked of the session: ExaBGP's shutdown closes it"


def test_a_stop_for_good_ceases_every_session_that_is_up_and_waits_for_them():
    h = Harness()
    h.set_peers(MESH_A, MESH_B, TO_RR)
    h.fire(fx.RELOAD)
    h.up(MESH_A)
    h.up(TO_RR)
    effects = h.run(h.core.stop(for_good=True))
    assert sent(effects) == [protocol.teardown_command(a, protocol.CEASE_ADMIN_SHUTDOWN) for a in (A, RR)]
    assert h.core.sessions_up
    h.down(MESH_A)
    assert h.core.sessions_up
    h.down(TO_RR)
    assert not h.core.sessions_up


def test_a_stop_for_good_without_a_relay_sends_nothing_and_waits_for_nothing():
    h = Harness()
    h.set_peers(MESH_A)
    h.fire(fx.RELOAD)
    h.up(MESH_A)
    h.core.relay_lost()
    assert sent(h.run(h.core.stop(for_good=True))) == []
    assert not h.core.sessions_up


def test_stops_for_good_from_env_is_graceful_unless_told_cease_and_names_a_bad_value():
    assert stops_for_good_from_env({}) is False
    assert stops_for_good_from_env({"PYCALICO_BGP_STOP": "graceful"}) is False
    assert stops_for_good_from_env({"PYCALICO_BGP_STOP": " Cease "}) is True
    with pytest.raises(ValueError, match="PYCALICO_BGP_STOP: 'notify' is not graceful or cease"):
        stops_for_good_from_env({"PYCALICO_BGP_STOP": "notify"})


# -- make-before-break ----------------------------------------------------------------------------

def test_bgp_switched_off_drops_every_session_at_once_even_one_kept_for_make_before_break():
    h = Harness(drain_deadline=30.0)
    h.want_peers(MESH_A)
    h.up(MESH_A, BLOCK_A)
    h.feed(protocol.EndOfRib(A, protocol.IPV4_UNICAST))
    h.want_peers(TO_RR)  # A is kept until RR covers BLOCK_A
    h.fire(fx.RELOAD)
    assert fx.TRANSITION in h.timers
    effects = h.run(h.core.drop_peers(h.clock.now))
    assert sent(effects) == [protocol.teardown_command(A)], "Cease (Peer De-configured) to the up one"
    assert fx.TRANSITION not in h.timers
    h.down(MESH_A)
    assert h.core.peer_status() == [] and not h.core.ceasing
    h.fire(fx.RELOAD)
    assert h.run(h.core.drop_peers(h.clock.now)) == [], "again: nothing to do, nothing said"
    h.up(TO_RR)  # a late event of a session no longer configured brings nothing back
    assert h.core.peer_status() == []


def test_mesh_to_reflector_keeps_the_old_session_until_the_new_one_covers_it():
    h = Harness(drain_deadline=30.0)
    h.want_peers(MESH_A)
    h.up(MESH_A, BLOCK_A)
    h.feed(protocol.EndOfRib(A, protocol.IPV4_UNICAST))
    h.at(10.0)
    effects = h.want_peers(TO_RR)
    assert [s.address for s in h.core.peer_status()] == [A, RR], "both configured"
    assert h.status(A).info.endswith(core.DRAINING_SESSION)
    assert h.timers[fx.TRANSITION] == 40.0, "the deadline, until something covers it"
    assert sent(effects) == [], "no Cease yet"
    h.at(11.0)
    h.up(TO_RR, BLOCK_A)
    assert [s.address for s in h.core.peer_status()] == [A, RR], "no End-of-RIB yet: not covered"
    effects = h.feed(protocol.EndOfRib(RR, protocol.IPV4_UNICAST))
    assert h.timers[fx.TRANSITION] == 11.0 + 2.0, "covered: settles first"
    effects = h.fire(fx.TRANSITION)
    assert sent(effects) == [protocol.teardown_command(A)], "then Cease to the old session"
    h.down(MESH_A)
    assert [s.address for s in h.core.peer_status()] == [RR]
    assert h.prefixes() == {BLOCK_A}


def test_an_uncovered_session_goes_at_the_deadline():
    h = Harness(drain_deadline=30.0)
    h.want_peers(MESH_A)
    h.up(MESH_A, BLOCK_A)
    h.want_peers(MESH_B)
    assert h.timers[fx.TRANSITION] == 30.0
    effects = h.fire(fx.TRANSITION)
    assert sent(effects) == [protocol.teardown_command(A)]


def test_a_plan_during_a_cease_waits_for_the_cease():
    """Planning against the set a Cease is still taking down would keep the ceased session as a
    new draining one: the plan waits, then runs against the applied set."""
    h = Harness(drain_deadline=30.0)
    h.want_peers(MESH_A, MESH_B)
    h.up(MESH_A)
    h.up(MESH_B, BLOCK_B)
    h.want_peers(MESH_B)  # A provides nothing: covered at once, it goes after SETTLE
    assert sent(h.fire(fx.TRANSITION)) == [protocol.teardown_command(A)]
    assert h.core.ceasing
    assert h.want_peers(TO_RR) == [], "waits for the Cease"
    effects = h.down(MESH_A)
    assert not h.core.ceasing
    assert [s.address for s in h.core.peer_status()] == [B, RR], "B drains, A stays gone"
    assert sent(effects) == []


def test_nothing_to_drain_is_plain_set_peers():
    h = Harness()
    h.want_peers(MESH_A)
    assert h.want_peers(MESH_A) == [], "unchanged: nothing, no notification"
    effects = h.want_peers(MESH_A, MESH_B)
    assert fx.NOTIFY in effects and fx.TRANSITION not in h.timers


# -- local settings, reloads, sync ----------------------------------------------------------------

def test_set_local_restarts_exabgp_once_for_a_burst_after_the_debounce():
    h = Harness()
    assert h.run(h.core.set_local(64512, 179, 1.0)) == [], "unchanged: nothing"
    h.at(1.0)
    h.run(h.core.set_local(64600, 179, 1.0))
    h.at(1.05)
    h.set_peers(replace(MESH_A, local_asn=64600))
    h.run(h.core.set_local(64600, 1791, 1.05))
    assert h.timers[fx.RELOAD] == pytest.approx(1.15), "debounced: one reload for the burst"
    effects = h.fire(fx.RELOAD)
    [restart] = of(fx.RestartChild, effects)
    assert restart.reason == ("local AS number 64512 -> 64600, listen port 179 -> 1791: "
                              "exabgp restarted to apply it"), "every change of the burst"
    assert "local-as 64600" in of(fx.WriteConfig, effects)[0].text
    assert sent(effects) == [], "a restart, not a reload"
    h.set_peers(MESH_A)
    assert of(fx.RestartChild, h.fire(fx.RELOAD)) == [], "the next reload is a reload again"


def test_set_local_rejects_a_bad_asn_naming_the_field():
    with pytest.raises(ValueError, match="asn: 0 is outside"):
        Harness().core.set_local(0, 179, 0.0)


def test_a_burst_of_peer_changes_is_one_reload_within_the_max_delay():
    h = Harness()
    for i in range(20):
        h.at(i * 0.09)
        h.set_peers(*[PeerSpec(IPv4Address(f"10.0.1.{n}"), 64512, 64512, False, "global", f"p{n}")
                      for n in range(1, i + 2)])
    assert h.timers[fx.RELOAD] == pytest.approx(1.0), "at most RELOAD_MAX_DELAY after the first"
    effects = h.fire(fx.RELOAD)
    assert len(of(fx.WriteConfig, effects)) == 1
    assert sent(effects) == [protocol.reload_command()]


def test_a_config_changed_while_exabgp_started_is_reloaded_when_its_relay_connects():
    h = Harness()
    h.core.relay_lost()
    h.set_peers(MESH_A)
    h.fire(fx.RELOAD)
    assert h.core.relay_connected() == [fx.Send((protocol.reload_command(),))]
    h.core.spawned()
    assert h.core.relay_connected() == []


def fresh_core() -> sc.SpeakerCore:
    base = ExaBGPConfig(router_id=ME, local_address=ME, relay_command=("socat",))
    return sc.SpeakerCore(base=base, local_asn=64512, sync_deadline=30.0)


def test_routes_in_sync_changes_on_input_only_never_when_read():
    assert Harness().core.routes_in_sync, "started without peers: nothing to wait for"
    c = fresh_core()
    c.set_peers(frozenset({MESH_A}), None, 0.0)
    assert not c.routes_in_sync, "not started"
    c.start(0.0)
    c.relay_connected()
    c.feed([protocol.PeerStateChanged(A, "up")], 1.0, WALL)
    assert not c.routes_in_sync and not c.routes_in_sync, "reading twice changes nothing"
    assert c.feed([protocol.EndOfRib(A, protocol.IPV4_UNICAST)], 2.0, WALL).count(fx.NOTIFY) == 1
    assert c.routes_in_sync, "every peer sent End-of-RIB"
    c.child_lost("down: x", 3.0, WALL)
    assert c.routes_in_sync, "stays True"


def test_routes_are_in_sync_at_the_deadline_whatever_the_peers_say():
    c = fresh_core()
    c.set_peers(frozenset({MESH_A}), None, 0.0)
    assert c.start(0.0)[0] == fx.Arm(fx.SYNC, 30.0)
    assert not c.routes_in_sync
    assert c.timer_fired(fx.SYNC, 30.0, WALL) == [fx.NOTIFY] and c.routes_in_sync


def test_peers_set_right_after_start_are_waited_for():
    """The agent starts the speaker and sets its peers before it first asks."""
    c = fresh_core()
    c.start(0.0)
    assert c.routes_in_sync, "no peers"
    c.set_peers(frozenset({MESH_A}), None, 0.0)
    assert not c.routes_in_sync


def test_removing_the_last_peer_not_synced_makes_routes_in_sync():
    c = fresh_core()
    c.start(0.0)
    c.set_peers(frozenset({MESH_A}), None, 0.0)
    assert not c.routes_in_sync
    assert fx.NOTIFY in c.set_peers(frozenset(), None, 1.0) and c.routes_in_sync


def test_session_up_gets_advertisements_then_end_of_rib_and_changes_go_as_a_diff():
    h = Harness()
    h.run(h.core.set_advertisements(frozenset({BLOCK_A})))
    h.set_peers(MESH_A)
    effects = h.up(MESH_A)
    assert sent(effects) == core.session_up_lines(A, frozenset({BLOCK_A}), [])
    effects = h.run(h.core.set_advertisements(frozenset({BLOCK_B})))
    assert sent(effects) == protocol.withdraw_commands({BLOCK_A}) + protocol.announce_commands({BLOCK_B})
    assert h.run(h.core.set_advertisements(frozenset({BLOCK_B}))) == []
    with pytest.raises(TypeError, match="prefixes: '10.0.0.0/8' is not an IPv4Network"):
        h.core.set_advertisements(frozenset({"10.0.0.0/8"}))


def test_an_unknown_timer_is_a_bug():
    with pytest.raises(AssertionError, match="Bug: no timer 'nope'"):
        Harness().core.timer_fired("nope", 0.0, WALL)


def test_a_started_reflector_owes_end_of_rib_until_its_feeders_synced_or_the_sync_deadline():
    h = Harness(sync_deadline=30.0)
    client_a, client_b = replace(MESH_A, rr_client=True), replace(MESH_B, rr_client=True)
    h.set_peers(client_a, client_b, cluster=IPv4Address("244.0.0.1"))
    assert protocol.eor_command(A) not in sent(h.up(client_a)), "b feeds a and has not synced"
    h.up(client_b, BLOCK_B)
    effects = h.feed(protocol.EndOfRib(B, protocol.IPV4_UNICAST))
    assert sent(effects)[-1] == protocol.eor_command(A), "owed, now due: after b's routes"
    h2 = Harness(sync_deadline=30.0)
    h2.set_peers(client_a, client_b, cluster=IPv4Address("244.0.0.1"))
    h2.up(client_a)
    assert sent(h2.fire(fx.SYNC)) == [protocol.eor_command(A)], "the deadline ends the deferral"


def test_origins_set_then_changed_by_difference_rechoose_and_notify():
    h = Harness()
    h.set_peers(MESH_A)
    h.up(MESH_A, BLOCK_A)
    assert fx.NOTIFY in h.run(h.core.set_origins({BLOCK_A: B}, {}, 0.0))
    assert h.prefixes() == set(), "a's claim to b's block is dropped"
    assert fx.NOTIFY in h.run(h.core.change_origins({BLOCK_A: A}, {}, 0.0))
    assert h.prefixes() == {BLOCK_A}
    assert h.core.change_origins({BLOCK_A: A}, {}, 0.0) == [], "unchanged: nothing"


def test_no_origin_hold_expires_while_the_datastore_is_away():
    """A route ahead of its block's affinity is held: its timer goes while the origins are not
    current, and comes back for the whole hold once they are (``Rib.set_origins_current``)."""
    h = Harness()
    h.set_peers(MESH_A)
    h.run(h.core.set_origins({}, {}, 0.0))
    h.up(MESH_A, BLOCK_A)  # nobody owns BLOCK_A yet: held
    assert h.timers[fx.EXPIRY] == h.clock.now + ORIGIN_HOLD
    assert fx.Cancel(fx.EXPIRY) in h.run(h.core.set_origins_current(False))
    assert fx.EXPIRY not in h.timers
    assert h.core.set_origins_current(False) == [], "unchanged: nothing"
    h.at(h.clock.now + 5 * ORIGIN_HOLD)
    h.run(h.core.set_origins_current(True))
    assert h.timers[fx.EXPIRY] == h.clock.now + ORIGIN_HOLD
    assert h.core.counters().get("rejected_origin_unknown", 0) == 0
    h.fire(fx.EXPIRY)
    assert h.core.counters()["rejected_origin_unknown"] == 1


def test_the_speaker_passes_origin_changes_to_its_core(tmp_path):
    """Speaker.change_origins reached for a RIB the speaker no longer holds (AttributeError on
    every agent reconcile that changed a block)."""
    from bgp.speaker import Speaker
    speaker = Speaker(node_name="n1", router_id=ME, local_address=ME, local_asn=64512,
                      run_dir=tmp_path, on_change=lambda: None)
    speaker.set_origins({BLOCK_A: B}, {})
    speaker.change_origins({BLOCK_A: A}, {})
    assert speaker.counters() == {}


def test_the_speaker_executes_every_kind_of_effect_and_refuses_others(tmp_path):
    """Every effect type the core can return has a case in Speaker._run (a new one without
    would be dropped silently)."""
    import typing
    from bgp.speaker import Speaker
    speaker = Speaker(node_name="n1", router_id=ME, local_address=ME, local_asn=64512,
                      run_dir=tmp_path, on_change=lambda: None)
    with pytest.raises(AssertionError, match="Bug: the speaker does not know the effect"):
        speaker._run([object()])
    source = Speaker._run.__code__.co_names
    for kind in typing.get_args(fx.Effect):
        assert kind.__name__ in source, kind


SPECS = {s.address: s for s in (MESH_A, MESH_B, TO_RR)}
_peer_sets = st.frozensets(st.sampled_from(sorted(SPECS)))
_ops = st.lists(st.one_of(
    st.tuples(st.just("want"), _peer_sets),
    st.tuples(st.just("up"), st.sampled_from(sorted(SPECS)), st.frozensets(st.sampled_from([BLOCK_A, BLOCK_B]))),
    st.tuples(st.just("eor"), st.sampled_from(sorted(SPECS))),
    st.tuples(st.just("down"), st.sampled_from(sorted(SPECS))),
    st.tuples(st.just("tick"), st.floats(0.0, 5.0)),
    st.tuples(st.just("child_lost"),)), max_size=30)


def _tick(h: Harness, until: float) -> None:
    """Fire every timer due by ``until``, in deadline order, as the event loop would."""
    for _ in range(1000):
        due = [(at, name) for name, at in h.timers.items() if at <= until]
        if not due:
            break
        at, name = min(due)
        h.timers.pop(name)
        h.at(max(at, h.clock.now))
        h.run(h.core.timer_fired(name, h.clock.now, WALL))
    h.at(max(until, h.clock.now))


@settings(max_examples=1000, deadline=None, database=None)
@given(_ops)
def test_whatever_happens_meanwhile_the_last_wanted_peer_set_is_what_ends_up_configured(ops):
    """want_peers (the agent's call) with session events, Ceases, make-before-break plans and
    timers interleaved in any order: once the timers have run out, exactly the last wanted
    sessions are configured, in ExaBGP's config too, and no peer set waits for a Cease."""
    h = Harness(drain_deadline=30.0)
    wanted: frozenset[IPv4Address] = frozenset()
    for op in ops:
        match op:
            case ("want", addresses):
                wanted = addresses
                h.want_peers(*(SPECS[a] for a in addresses))
            case ("up", address, prefixes):
                h.up(SPECS[address], *sorted(prefixes))
            case ("eor", address):
                h.feed(protocol.EndOfRib(address, protocol.IPV4_UNICAST))
            case ("down", address):
                h.down(SPECS[address])
            case ("tick", seconds):
                _tick(h, h.clock.now + seconds)
            case ("child_lost",):
                h.run(h.core.child_lost("down: exabgp exited with code 1", h.clock.now, WALL))
    _tick(h, h.clock.now + 1000.0)
    assert not h.core.ceasing
    assert {s.address for s in h.core.peer_status()} == wanted
    assert {a for a in SPECS if f"neighbor {a} " in h.config} == wanted


# -- a peer wanted again after its Cease ----------------------------------------------------------
# ExaBGP keeps a peer torn down through the API down until a reload changes or removes it
# (bgp/exabgp_main TEARDOWN_HOLD): a peer the agent wants again before the reload that removes it
# needs a reload even when the config text is the one already written.

def test_a_peer_wanted_again_after_its_cease_but_before_the_removal_reload_gets_a_reload():
    h = Harness()
    h.set_peers(MESH_A, MESH_B)
    h.fire(fx.RELOAD)
    h.up(MESH_A)
    assert sent(h.set_peers(MESH_B)) == [protocol.teardown_command(A)]
    h.down(MESH_A)  # the Cease took it down; the reload that removes A is armed
    h.set_peers(MESH_A, MESH_B)  # the BGPPeer is back before that reload
    effects = h.fire(fx.RELOAD)
    assert str(A) in h.config
    assert sent(effects) == [protocol.reload_command()], "ExaBGP must be told: it holds A down"
    h.set_peers(MESH_B)  # not up: removed without a Cease
    h.fire(fx.RELOAD)
    h.set_peers(MESH_A, MESH_B)
    assert sent(h.fire(fx.RELOAD)) == [protocol.reload_command()], "a plain re-add (config changed)"


def test_a_peer_wanted_again_while_its_cease_is_pending_gets_a_reload():
    h = Harness()
    h.set_peers(MESH_A, MESH_B)
    h.fire(fx.RELOAD)
    h.up(MESH_A)
    h.set_peers(MESH_B)
    h.set_peers(MESH_A, MESH_B)  # wanted again before its session went down
    assert not h.core.ceasing
    h.down(MESH_A)
    assert sent(h.fire(fx.RELOAD)) == [protocol.reload_command()]
    assert fx.RELOAD not in h.timers
    h.up(MESH_B)
    assert fx.RELOAD not in h.timers, "once told, nothing more"


def test_a_peer_wanted_again_after_a_child_restart_is_removed_from_that_child_first():
    """Nothing is held in a new child, but it started with the config last written, which still
    names A (its removal was not written yet): it runs A's session, whose ``up`` we ignore while A
    is not configured here. Wanted again, A is removed from that child and added back, so its
    ``up`` comes again; without that it showed Idle for good."""
    h = Harness()
    h.set_peers(MESH_A)
    h.fire(fx.RELOAD)
    h.up(MESH_A)
    h.set_peers()
    h.down(MESH_A)
    h.core.relay_lost()
    h.run(h.core.child_lost("down: restarted", 1.0, WALL))
    h.core.spawned()  # a new ExaBGP, started with the config last written: nothing held
    h.run(h.core.relay_connected())
    h.up(MESH_A)  # the new child's session to A: A is not configured here
    effects = h.set_peers(MESH_A)
    assert str(A) not in of(fx.WriteConfig, effects)[0].text and sent(effects) == ["reload"]
    assert sent(h.fire(fx.RELOAD)) == ["reload"] and str(A) in h.config
    assert h.status(A).state == "start"


def test_a_reload_due_while_a_cease_is_pending_waits_for_it():
    """A reload armed by an earlier change (here a new peer C) that fell due while A's Cease was
    under way wrote a config still naming A: ExaBGP took A's neighbor as changed (its teardown
    turned graceful restart off), re-established it and ended the hold that keeps it from
    connecting again before the reload that removes it."""
    h = Harness()
    h.set_peers(MESH_A, MESH_B)
    h.fire(fx.RELOAD)
    h.up(MESH_A)
    h.set_peers(MESH_A, MESH_B, TO_RR)  # a reload is armed
    assert sent(h.set_peers(MESH_B, TO_RR)) == [protocol.teardown_command(A)]
    assert h.core.ceasing and fx.RELOAD in h.timers
    assert sent(h.fire(fx.RELOAD)) == [], "no config naming A while its Cease is under way"
    h.down(MESH_A)
    effects = h.fire(fx.RELOAD)
    assert sent(effects) == [protocol.reload_command()]
    assert str(A) not in h.config and str(RR) in h.config


def test_a_reload_that_changes_nothing_does_not_name_a_peer_still_up_after_its_max_prefix_cease():
    """A peer over max-prefix got a Cease and is still up: a reload due for an unrelated change
    that left the config as it was must not name it as wanted again (ExaBGP would re-establish
    it); once down it is held down and out of the config."""
    h = Harness(max_prefixes=1)
    h.set_peers(MESH_A)
    h.fire(fx.RELOAD)
    h.up(MESH_A)
    h.set_peers(MESH_A, MESH_B)  # a reload is armed ...
    h.set_peers(MESH_A)  # ... and the config is back to what ExaBGP has
    effects = h.feed(protocol.RoutesAnnounced(A, A, (BLOCK_A, BLOCK_B)))
    assert sent(effects) == [protocol.teardown_command(A, protocol.CEASE_MAX_PREFIXES)]
    assert sent(h.fire(fx.RELOAD)) == []
    h.down(MESH_A)
    h.fire(fx.RELOAD)
    assert str(A) not in h.config


def test_a_reload_due_while_a_max_prefix_cease_is_under_way_waits_for_that_session_to_go_down():
    """A reload armed by another change (a new peer B) that fell due between a peer's max-prefix
    Cease and its down named that peer: ExaBGP took its neighbor as changed (its teardown turned
    graceful restart off), re-established it and it connected again before the hold-down took it
    out of the config."""
    h = Harness(max_prefixes=1)
    h.set_peers(MESH_A)
    h.fire(fx.RELOAD)
    h.up(MESH_A)
    h.set_peers(MESH_A, MESH_B)  # a reload is armed, the config changes
    effects = h.feed(protocol.RoutesAnnounced(A, A, (BLOCK_A, BLOCK_B)))
    assert sent(effects) == [protocol.teardown_command(A, protocol.CEASE_MAX_PREFIXES)]
    assert sent(h.fire(fx.RELOAD)) == [], "no config naming A while its Cease is under way"
    h.down(MESH_A)
    assert sent(h.fire(fx.RELOAD)) == [protocol.reload_command()]
    assert str(A) not in h.config and str(B) in h.config


def test_a_max_prefix_cease_that_never_takes_the_session_down_delays_a_reload_by_cease_timeout_only():
    h = Harness(max_prefixes=1)
    h.set_peers(MESH_A)
    h.fire(fx.RELOAD)
    h.up(MESH_A)
    h.set_peers(MESH_A, MESH_B)
    h.at(1.0)
    h.feed(protocol.RoutesAnnounced(A, A, (BLOCK_A, BLOCK_B)))
    assert sent(h.fire(fx.RELOAD)) == []
    assert h.timers[fx.RELOAD] == 1.0 + sc.CEASE_TIMEOUT
    assert sent(h.fire(fx.RELOAD)) == [protocol.reload_command()] and str(B) in h.config
