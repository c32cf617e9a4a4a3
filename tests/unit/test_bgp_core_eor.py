"""End-of-RIB deferral after a restart (RFC 4724 4.1), as ``bgp.core`` decides it: a route reflector
sends a peer End-of-RIB only once every session whose routes it reflects to that peer has sent its
own, or its deadline passed; nothing else waits."""
from __future__ import annotations

from datetime import datetime, timezone
from ipaddress import IPv4Address, IPv4Network

from bgp import core, protocol
from bgp.core import Deferral, PeerSession, eor_due, greeting, owed_eors
from bgp.peers import PeerSpec

NOW = datetime(2026, 1, 1, tzinfo=timezone.utc)
RESTARTED = Deferral(reflecting=True, waited=2.0, deadline=30.0)
BLOCK = IPv4Network("10.244.9.0/26")


def session(i: int, client: bool = True, asn: int = 64512, up: bool = True) -> PeerSession:
    s = PeerSession(PeerSpec(IPv4Address(f"10.0.0.{i}"), asn, 64512, passive=False, peer_type="global",
                             name=f"n{i}", rr_client=client))
    if up:
        s.on_event(protocol.PeerStateChanged(s.spec.address, "up", ""), NOW)
    return s


def eor_from(s: PeerSession) -> None:
    s.on_event(protocol.EndOfRib(s.spec.address, protocol.IPV4_UNICAST), NOW)


def eor_line(s: PeerSession) -> str:
    return protocol.eor_command(s.spec.address)


def test_a_restarted_reflector_owes_a_client_eor_until_the_other_clients_sent_theirs():
    a, b, c = session(1), session(2), session(3)
    lines = greeting(a, [a, b, c], frozenset({BLOCK}), ["reflected"], RESTARTED)
    assert lines[-1] == "reflected" and eor_line(a) not in lines and a.eor_owed
    eor_from(b)
    assert owed_eors([a, b, c], RESTARTED) == []
    eor_from(c)
    assert owed_eors([a, b, c], RESTARTED) == [eor_line(a)]
    assert not a.eor_owed and owed_eors([a, b, c], RESTARTED) == [], "sent once"


def test_a_source_not_up_yet_is_waited_for_until_the_deadline():
    a, b = session(1), session(2, up=False)
    greeting(a, [a, b], frozenset(), [], RESTARTED)
    assert owed_eors([a, b], RESTARTED) == []
    assert owed_eors([a, b], Deferral(reflecting=True, waited=30.0, deadline=30.0)) == [eor_line(a)]


def test_a_session_that_goes_down_is_owed_nothing():
    a, b = session(1), session(2)
    greeting(a, [a, b], frozenset(), [], RESTARTED)
    a.on_event(protocol.PeerStateChanged(a.spec.address, "down", "gone"), NOW)
    assert not a.eor_owed
    eor_from(b)
    assert owed_eors([a, b], RESTARTED) == []


def test_a_peer_held_down_for_max_prefix_is_not_waited_for():
    a, b = session(1), session(2, up=False)
    b.held_down = True
    assert greeting(a, [a, b], frozenset(), [], RESTARTED)[-1] == eor_line(a)


def test_who_feeds_whom_follows_rfc_4456():
    client_a, client_b, non_client = session(1), session(2), session(3, client=False)
    # A non-client's End-of-RIB is what a client waits for; a non-client waits for clients only.
    eor_from(client_b)
    assert not eor_due(client_a, [client_a, client_b, non_client], RESTARTED)
    assert not eor_due(non_client, [client_a, client_b, non_client], RESTARTED)
    eor_from(client_a)
    assert eor_due(non_client, [client_a, client_b, non_client], RESTARTED)
    # Two reflectors (non-clients to each other) restarting together never wait for each other.
    other_rr = session(4, client=False)
    assert eor_due(other_rr, [client_a, client_b, non_client, other_rr], RESTARTED)


def test_nothing_waits_without_reflection_or_towards_ebgp():
    a, b = session(1), session(2)
    mesh = Deferral(reflecting=False, waited=0.0, deadline=30.0)
    assert greeting(a, [a, b], frozenset({BLOCK}), [], mesh) == [
        *protocol.announce_commands(frozenset({BLOCK}), a.spec.address), eor_line(a)]
    external = session(5, asn=64999)
    assert greeting(external, [a, b, external], frozenset(), [], RESTARTED) == [eor_line(external)]


def test_session_up_lines_end_with_eor_by_default():
    address = IPv4Address("10.0.0.1")
    assert core.session_up_lines(address, frozenset(), ["x"]) == ["x", protocol.eor_command(address)]
    assert core.session_up_lines(address, frozenset(), ["x"], end_of_rib=False) == ["x"]
