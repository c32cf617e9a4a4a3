"""Make-before-break (bgp/transition.py): examples of the rules, then hypothesis for the properties
(new sessions at once; a session is never dropped before the deadline while it alone provides a
prefix; everything converges to exactly the wanted set)."""
from dataclasses import replace
from ipaddress import IPv4Address, IPv4Network

from hypothesis import given, settings
from hypothesis import strategies as st

from bgp.peers import PeerSpec
from bgp.transition import DEADLINE, SETTLE, Drain, Session, plan

BLOCKS = [IPv4Network(f"10.244.{i}.0/26") for i in range(6)]


def spec(i: int, kind: str = "node-to-node mesh", rr_client: bool = False) -> PeerSpec:
    return PeerSpec(IPv4Address(f"10.0.0.{i}"), 64512, 64512, False, kind, f"n{i}", rr_client=rr_client)


def up(*blocks: int, eor: bool = True) -> Session:
    return Session(True, eor, frozenset(BLOCKS[b] for b in blocks))


def addrs(p) -> set[int]:
    return {int(s.address) & 0xFF for s in p.configure}


def test_new_sessions_are_configured_at_once_and_old_ones_kept_while_they_alone_provide():
    old, new = spec(2), spec(9, "global")
    p = plan(frozenset({new}), {old.address: old}, {old.address: up(2)}, {}, 100.0)
    assert addrs(p) == {2, 9}
    assert p.draining == {old.address: Drain(100.0, None)}
    assert p.recheck_at == 100.0 + DEADLINE


def test_an_old_session_goes_settle_seconds_after_a_new_one_covers_it():
    old, new = spec(2), spec(9, "global")
    configured = {old.address: old, new.address: new}
    sessions = {old.address: up(2), new.address: up(2, 3)}
    p = plan(frozenset({new}), configured, sessions, {old.address: Drain(100.0)}, 101.0)
    assert addrs(p) == {2, 9} and p.draining[old.address] == Drain(100.0, 101.0)
    assert p.recheck_at == 101.0 + SETTLE
    p = plan(frozenset({new}), configured, sessions, p.draining, 101.0 + SETTLE)
    assert addrs(p) == {9} and p.draining == {} and p.recheck_at is None


def test_cover_needs_end_of_rib_from_an_established_wanted_session():
    old, new, other_old = spec(2), spec(9, "global"), spec(3)
    configured = {old.address: old, new.address: new, other_old.address: other_old}
    for covering in (up(2, eor=False), Session(False, True, frozenset({BLOCKS[2]}))):
        p = plan(frozenset({new}), configured, {old.address: up(2), new.address: covering,
                                                other_old.address: up(3)}, {}, 0.0)
        assert p.draining[old.address].covered_since is None
    # another draining session does not count: both would go
    p = plan(frozenset({new}), configured, {old.address: up(2), other_old.address: up(2)}, {}, 0.0)
    assert all(d.covered_since is None for d in p.draining.values())


def test_cover_lost_again_restarts_the_settle_time():
    old, new = spec(2), spec(9, "global")
    configured = {old.address: old, new.address: new}
    p = plan(frozenset({new}), configured, {old.address: up(2), new.address: up(2)}, {}, 0.0)
    assert p.draining[old.address].covered_since == 0.0
    p = plan(frozenset({new}), configured, {old.address: up(2), new.address: up()}, p.draining, 1.0)
    assert p.draining[old.address].covered_since is None
    p = plan(frozenset({new}), configured, {old.address: up(2), new.address: up(2)}, p.draining, 1.5)
    assert p.draining[old.address].covered_since == 1.5 and addrs(p) == {2, 9}


def test_the_deadline_drops_an_uncovered_session():
    old = spec(2)
    p = plan(frozenset(), {old.address: old}, {old.address: up(2)}, {old.address: Drain(0.0)}, DEADLINE)
    assert p.configure == frozenset() and p.recheck_at is None


def test_a_session_that_carries_nothing_goes_at_once():
    old = spec(2)
    assert plan(frozenset(), {old.address: old}, {}, {}, 0.0).configure == frozenset()
    assert plan(frozenset(), {old.address: old}, {old.address: Session(False, False, frozenset())},
                {}, 0.0).configure == frozenset()
    # but a down session's graceful-restart stale routes are still traffic
    stale = Session(False, False, frozenset({BLOCKS[2]}))
    assert addrs(plan(frozenset(), {old.address: old}, {old.address: stale}, {}, 0.0)) == {2}


def test_a_draining_address_wanted_again_takes_the_wanted_spec_and_stops_draining():
    """Mesh to route reflector: the reflector's mesh session becomes its BGPPeer session."""
    mesh, rr = spec(3), spec(3, "global")
    p = plan(frozenset({rr}), {mesh.address: mesh}, {mesh.address: up(3)}, {mesh.address: Drain(0.0)}, 1.0)
    assert p.configure == frozenset({rr}) and p.draining == {}


def test_a_reflector_keeps_reflecting_to_a_former_client_until_the_deadline():
    """Route reflector back to mesh: the reflected routes may be the client's only ones until its
    mesh sessions are up, which the reflector cannot see."""
    client, mesh = spec(2, "global", rr_client=True), spec(2)
    p = plan(frozenset({mesh}), {client.address: client}, {client.address: up(2)}, {}, 10.0)
    assert p.configure == {replace(mesh, rr_client=True)} and p.recheck_at == 10.0 + DEADLINE
    held = {client.address: replace(mesh, rr_client=True)}
    p = plan(frozenset({mesh}), held, {client.address: up(2)}, p.draining, 10.0 + DEADLINE - 1)
    assert p.configure == set(held.values())
    p = plan(frozenset({mesh}), held, {client.address: up(2)}, p.draining, 10.0 + DEADLINE)
    assert p.configure == {mesh} and p.draining == {} and p.recheck_at is None
    # becoming a client is at once
    assert plan(frozenset({client}), {mesh.address: mesh}, {}, {}, 0.0).configure == {client}


# -- properties ---------------------------------------------------------------------------------

sessions_st = st.builds(Session, st.booleans(), st.booleans(),
                        st.frozensets(st.sampled_from(BLOCKS), max_size=4))
ids = st.integers(1, 8)


@st.composite
def worlds(draw):
    wanted = frozenset(spec(i, "global", draw(st.booleans())) for i in draw(st.frozensets(ids, max_size=5)))
    configured = {s.address: s for s in (spec(i, rr_client=draw(st.booleans()))
                                         for i in draw(st.frozensets(ids, max_size=6)))}
    sessions = {s.address: draw(sessions_st) for s in [*wanted, *configured.values()]
                if draw(st.integers(0, 4))}  # sometimes none: never heard of
    return wanted, configured, sessions


@settings(max_examples=300, deadline=None)
@given(worlds(), st.floats(0, 100))
def test_wanted_is_configured_at_once_and_nothing_else_appears(world, now):
    wanted, configured, sessions = world
    p = plan(wanted, configured, sessions, {}, now)
    got = {s.address: s for s in p.configure}
    for s in wanted:  # configured at once, as wanted but for reflection still draining
        assert got[s.address] in (s, replace(s, rr_client=True))
        if got[s.address] != s:
            assert configured[s.address].rr_client and s.address in p.draining
    assert {a for a in got if a not in {s.address for s in wanted}} <= set(configured)


@settings(max_examples=300, deadline=None)
@given(worlds(), st.lists(st.floats(0, DEADLINE * 0.99), min_size=1, max_size=6))
def test_never_drops_the_only_source_of_a_prefix_before_the_deadline(world, times):
    """Replayed over time: a configured session that goes while it provides a prefix no wanted,
    Established, End-of-RIB session provides is a loss of traffic."""
    wanted, configured, sessions = world
    wanted_addresses = {s.address for s in wanted}
    cover = set().union(*(s.prefixes for a, s in sessions.items()
                          if a in wanted_addresses and s.established and s.end_of_rib))
    draining, current = {}, dict(configured)
    for now in sorted(times):
        p = plan(wanted, current, sessions, draining, now)
        kept = {s.address for s in p.configure}
        for address in set(current) - kept - wanted_addresses:
            assert sessions.get(address, Session(False, False, frozenset())).prefixes <= cover, address
        draining, current = dict(p.draining), {s.address: s for s in p.configure}


@settings(max_examples=300, deadline=None)
@given(worlds(), st.floats(0, 10))
def test_converges_to_exactly_the_wanted_set(world, start):
    wanted, configured, sessions = world
    draining, current, now, steps = {}, dict(configured), start, 0
    while True:
        p = plan(wanted, current, sessions, draining, now)
        draining, current = dict(p.draining), {s.address: s for s in p.configure}
        if p.recheck_at is None:
            break
        assert p.recheck_at > now
        now, steps = p.recheck_at, steps + 1
        assert steps <= len(configured) + 1
    assert p.configure == wanted
    assert now <= start + DEADLINE


@settings(max_examples=200, deadline=None)
@given(worlds(), st.floats(0, 10))
def test_fully_covered_sessions_go_after_settle_not_the_deadline(world, start):
    wanted, configured, sessions = world
    wanted_addresses = {s.address for s in wanted}
    cover = set().union(*(s.prefixes for a, s in sessions.items()
                          if a in wanted_addresses and s.established and s.end_of_rib))
    p = plan(wanted, configured, sessions, {}, start)
    if all(sessions.get(a, Session(False, False, frozenset())).prefixes <= cover
           for a in configured if a not in wanted_addresses):
        again = plan(wanted, {s.address: s for s in p.configure}, sessions, p.draining, start + SETTLE)
        assert {s.address for s in again.configure} == wanted_addresses  # reflection may drain on
