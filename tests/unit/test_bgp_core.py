"""bgp.core, the speaker's decisions without ExaBGP: protocol events in, effects out."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from ipaddress import IPv4Address, IPv4Network

from bgp import core, protocol
from bgp.peers import PeerSpec

ADDR = IPv4Address("10.0.0.2")
SPEC = PeerSpec(ADDR, 64512, 64512, False, "node-to-node mesh", "n2")
T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
T1 = T0 + timedelta(seconds=5)


def up(peer: core.PeerSession, now: datetime = T0) -> list[core.Effect]:
    return peer.on_event(protocol.PeerStateChanged(ADDR, "up"), now)


def test_session_up_asks_for_the_announcements_and_clears_the_cause():
    peer = core.PeerSession(SPEC, state="idle", reason="down: x", cause="Received: Bad peer AS (2/2)")
    assert up(peer) == [core.StateChanged(ADDR), core.SessionUp(ADDR)]
    assert (peer.state, peer.since, peer.reason, peer.cause, peer.eor) == ("up", T0, "", "", False)
    assert peer.status().info == "Established"


def test_end_of_rib_counts_only_while_up_and_only_for_ipv4_unicast():
    peer = core.PeerSession(SPEC)
    assert peer.on_event(protocol.EndOfRib(ADDR, protocol.IPV4_UNICAST), T0) == []
    assert not peer.synced
    up(peer)
    peer.on_event(protocol.EndOfRib(ADDR, "ipv6 unicast"), T0)
    assert not peer.synced
    peer.on_event(protocol.EndOfRib(ADDR, protocol.IPV4_UNICAST), T0)
    assert peer.synced and peer.eor


def test_down_after_up_is_reported_with_exabgps_reason_and_since_moves():
    peer = core.PeerSession(SPEC)
    up(peer)
    effects = peer.on_event(protocol.PeerStateChanged(ADDR, "down", "hold timer expired"), T1)
    assert effects == [core.StateChanged(ADDR), core.SessionDown(ADDR, "hold timer expired")]
    assert (peer.state, peer.since, peer.reason) == ("idle", T1, "down: hold timer expired")


def test_a_failed_connect_keeps_birds_socket_words_and_is_no_session_down():
    peer = core.PeerSession(SPEC)
    effects = peer.on_event(protocol.PeerStateChanged(ADDR, "down", "Socket: Connection refused"), T0)
    assert effects == [core.StateChanged(ADDR)]
    assert peer.status().info == "Active Socket: Connection refused"


def test_a_notification_outranks_the_down_that_follows():
    peer = core.PeerSession(SPEC)
    up(peer)
    peer.on_event(protocol.NotificationReceived(ADDR, 6, 3, ""), T1)
    peer.on_event(protocol.PeerStateChanged(ADDR, "down", "closing"), T1)
    assert peer.status().reason == "Received: Peer de-configured (6/3)"


def test_a_notification_either_way_ends_graceful_restart_for_that_session_only():
    """RFC 4724 4.2: routes are kept as stale only when a session ends without a NOTIFICATION."""
    peer = core.PeerSession(SPEC)
    up(peer)
    peer.on_event(protocol.NotificationReceived(ADDR, 6, 2, ""), T1)
    down = peer.on_event(protocol.PeerStateChanged(ADDR, "down", "notification received (6,2)"), T1)
    assert core.SessionDown(ADDR, "notification received (6,2)", graceful=False) in down
    up(peer)
    down = peer.on_event(protocol.PeerStateChanged(ADDR, "down", "closing connection"), T1)
    assert core.SessionDown(ADDR, "closing connection", graceful=True) in down, "no leak into the next"
    up(peer)
    reason = "notification sent (4,0): Hold timer expired"  # ExaBGP's words for one it sent
    down = peer.on_event(protocol.PeerStateChanged(ADDR, "down", reason), T1)
    assert core.SessionDown(ADDR, reason, graceful=False) in down


def test_a_notification_before_the_session_is_up_ends_no_graceful_restart():
    """A NOTIFICATION on a connection that never got up (a collision's Cease, a rejected OPEN)
    says nothing about the session that holds stale routes, nor about the next one."""
    peer = core.PeerSession(SPEC)
    peer.on_event(protocol.NotificationReceived(ADDR, 6, 7, ""), T0)
    assert peer.on_event(protocol.PeerStateChanged(ADDR, "down", "x"), T0) == [core.StateChanged(ADDR)]
    peer.on_event(protocol.NotificationReceived(ADDR, 6, 7, ""), T0)
    up(peer)
    down = peer.on_event(protocol.PeerStateChanged(ADDR, "down", "closing connection"), T1)
    assert core.SessionDown(ADDR, "closing connection", graceful=True) in down


def test_our_max_prefix_cease_ends_graceful_restart():
    peer = core.PeerSession(SPEC)
    up(peer)
    core.tear_down_over_limit({ADDR: peer}, [ADDR])
    down = peer.on_event(protocol.PeerStateChanged(ADDR, "down", "closing"), T1)
    assert core.SessionDown(ADDR, "closing", graceful=False) in down


def test_losing_the_child_forgets_a_notification():
    peer = core.PeerSession(SPEC)
    up(peer)
    peer.on_event(protocol.NotificationReceived(ADDR, 6, 2, ""), T1)
    assert peer.child_lost("down: exabgp exited", T1)
    up(peer)
    down = peer.on_event(protocol.PeerStateChanged(ADDR, "down", "closing connection"), T1)
    assert core.SessionDown(ADDR, "closing connection", graceful=True) in down


def test_max_prefix_teardown_holds_the_peer_down_once():
    peer = core.PeerSession(SPEC)
    up(peer)
    peer.cause = core.MAX_PREFIX_REASON
    effects = peer.on_event(protocol.PeerStateChanged(ADDR, "down", "closing"), T1)
    assert core.HoldDown(ADDR) in effects and peer.held_down
    assert core.HoldDown(ADDR) not in peer.on_event(protocol.PeerStateChanged(ADDR, "down", "again"), T1)


def test_fsm_states_keep_since_while_not_up_and_established_is_not_a_state():
    peer = core.PeerSession(SPEC)
    peer.on_event(protocol.PeerStateChanged(ADDR, "connect"), T0)
    peer.on_event(protocol.PeerStateChanged(ADDR, "opensent"), T1)
    assert (peer.state, peer.since) == ("opensent", T0)
    peer.on_event(protocol.PeerStateChanged(ADDR, "established"), T1)
    assert peer.state == "opensent"


def test_session_up_lines_end_with_end_of_rib_after_reflected_routes():
    lines = core.session_up_lines(ADDR, frozenset({IPv4Network("10.244.0.0/26")}), ["reflected"])
    assert lines[-1] == protocol.eor_command(ADDR)
    assert lines[-2] == "reflected"
    assert lines[0].startswith(f"neighbor {ADDR} announce") and "10.244.0.0/26" in lines[0]


def test_in_sync_needs_every_peer_synced_or_the_deadline():
    a, b = core.PeerSession(SPEC), core.PeerSession(SPEC)
    assert not core.in_sync([], None, 100.0, 30.0), "not started: never in sync"
    assert core.in_sync([], 100.0, 100.0, 30.0), "no peers: nothing to wait for"
    a.synced = True
    assert not core.in_sync([a, b], 100.0, 129.9, 30.0)
    assert core.in_sync([a, b], 100.0, 130.0, 30.0)
    b.synced = True
    assert core.in_sync([a, b], 100.0, 100.0, 30.0)


def test_losing_the_child_downs_every_session_with_its_reason():
    peer = core.PeerSession(SPEC, state="idle", cause="Received: Bad peer AS (2/2)")
    assert not peer.child_lost("down: exabgp exited with code 1", T0)
    assert peer.status().reason == "down: exabgp exited with code 1"
    up(peer)
    assert peer.child_lost("down: relay lost", T1)
    assert (peer.state, peer.since) == ("idle", T1)


def test_over_the_limit_peers_get_a_max_prefix_cease_and_show_why():
    other = IPv4Address("10.0.0.9")  # no longer configured: still told, nothing to mark
    sessions = {ADDR: core.PeerSession(SPEC, state="up")}
    lines = core.tear_down_over_limit(sessions, [ADDR, other])
    assert lines == [protocol.teardown_command(a, protocol.CEASE_MAX_PREFIXES) for a in (ADDR, other)]
    assert sessions[ADDR].cause == core.MAX_PREFIX_REASON
    assert core.tear_down_over_limit(sessions, []) == []


def test_a_burst_of_peer_changes_reloads_after_the_quiet_but_within_the_max_delay():
    assert core.reload_at(first=10.0, now=10.0, debounce=0.1, max_delay=1.0) == 10.1
    assert core.reload_at(first=10.0, now=10.5, debounce=0.1, max_delay=1.0) == 10.6
    assert core.reload_at(first=10.0, now=10.95, debounce=0.1, max_delay=1.0) == 11.0


def test_a_session_kept_by_make_before_break_says_why():
    status = core.PeerSession(SPEC, state="up").status()
    assert core.draining_status(status, [], [ADDR]) is status
    assert core.draining_status(status, [ADDR], []).info == f"Established; {core.DRAINING_SESSION}"
    assert core.draining_status(status, [ADDR], [ADDR]).info == f"Established; {core.DRAINING_REFLECTION}"
