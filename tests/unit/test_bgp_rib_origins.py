"""Import rules, origin validation and max-prefix in bgp.rib / bgp.policy (issue 9, "Bad input"):
the rogue mesh peer's routes are dropped and counted by reason; the owner's are kept; a change
of ownership is applied to the routes already held."""
from ipaddress import IPv4Address as A, IPv4Network as N

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bgp import protocol as p
from bgp.rib import ORIGIN_HOLD, LearnedRoute, Rib
from bgp.speaker import max_prefixes_from_env, origin_validation_from_env
from ctl.node import health_lines

POOL = N("10.244.0.0/16")
ME, OWNER, ROGUE, HOLDER = A("10.0.0.1"), A("10.0.0.2"), A("10.0.0.3"), A("10.0.0.4")
MY_BLOCK, OWNER_BLOCK, ROGUE_BLOCK = N("10.244.1.0/26"), N("10.244.2.0/26"), N("10.244.3.0/26")
POD = A("10.244.2.5")  # a pod in OWNER's block
BORROWED_FROM_ME = A("10.244.1.9")  # held by HOLDER, in my block
BORROWED_FROM_OWNER = A("10.244.2.60")  # held by HOLDER, in OWNER's block


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def make_rib() -> Rib:
    rib = Rib(clock=Clock(), router_id=ME)
    rib.set_import_filter(frozenset({POOL}), frozenset({MY_BLOCK}))
    rib.set_origins({MY_BLOCK: ME, OWNER_BLOCK: OWNER, ROGUE_BLOCK: ROGUE},
                    {BORROWED_FROM_ME: HOLDER, BORROWED_FROM_OWNER: HOLDER})
    return rib


def prefixes(rib: Rib) -> set[str]:
    return {str(r.prefix) for r in rib.best()}


def counted(rib: Rib):
    """The counters once the hold of every route rejected for its origin is over (the speaker's
    timer calls ``expire`` at ``next_deadline``)."""
    rib._clock.now += ORIGIN_HOLD
    rib.expire()
    return rib.counters


def test_the_rogue_peer_of_the_issue_gets_nothing_in_and_every_route_counted():
    rib = make_rib()
    rogue = [N(f"{POD}/32"), N("10.244.0.0/16"), N("10.244.0.0/17")]
    rogue += [N(f"10.244.{128 + i // 256}.{i % 256}/32") for i in range(20_000)]
    rib.announce_many(ROGUE, ROGUE, rogue)
    rib.announce_many(ROGUE, ROGUE, [ROGUE_BLOCK])  # its own block is fine
    assert prefixes(rib) == {str(ROGUE_BLOCK)}
    assert dict(counted(rib)) == {"rejected_origin_mismatch": 1, "rejected_origin_unknown": 20_002,
                                  "received": 20_004}


def test_a_block_is_accepted_only_from_its_owner_and_the_owner_wins_over_an_earlier_rogue():
    rib = make_rib()
    rib.announce_many(ROGUE, ROGUE, [OWNER_BLOCK])
    rib.announce_many(OWNER, OWNER, [OWNER_BLOCK])
    assert rib.best() == {LearnedRoute(OWNER_BLOCK, OWNER, OWNER)}
    assert counted(rib)["rejected_origin_mismatch"] == 1
    # a rogue pointing the next hop at the owner harms no one: the traffic goes to the owner
    rib.announce_many(ROGUE, OWNER, [OWNER_BLOCK])
    assert {r.peer for r in rib.best()} == {OWNER}


def test_through_a_reflector_the_originator_id_is_the_origin():
    rib = make_rib()
    rr = A("10.0.0.9")
    rib.announce_many(rr, OWNER, [OWNER_BLOCK], originator_id=OWNER, cluster_list=(A("244.0.0.1"),))
    rib.announce_many(rr, OWNER, [ROGUE_BLOCK], originator_id=OWNER, cluster_list=(A("244.0.0.1"),))
    assert prefixes(rib) == {str(OWNER_BLOCK)}
    assert counted(rib)["rejected_origin_mismatch"] == 1


def test_a_borrowed_32_is_accepted_from_its_holder_only_even_inside_our_block():
    rib = make_rib()
    for peer in (HOLDER, OWNER, ROGUE):
        rib.announce_many(peer, peer, [N(f"{BORROWED_FROM_ME}/32"), N(f"{BORROWED_FROM_OWNER}/32")])
    assert rib.best() == {LearnedRoute(N(f"{BORROWED_FROM_ME}/32"), HOLDER, HOLDER),
                          LearnedRoute(N(f"{BORROWED_FROM_OWNER}/32"), HOLDER, HOLDER)}
    assert counted(rib)["rejected_origin_mismatch"] == 4
    # any other more-specific of our block stays ours; of another node's block: a mismatch
    rib.announce_many(HOLDER, HOLDER, [N("10.244.1.10/32"), N("10.244.1.0/28"), N("10.244.2.0/28")])
    assert rib.counters["rejected_own_block"] == 2 and counted(rib)["rejected_origin_mismatch"] == 5


def test_a_change_of_ownership_is_applied_to_routes_already_held():
    rib = make_rib()
    new_block = N("10.244.9.0/26")
    rib.announce_many(ROGUE, ROGUE, [new_block])  # announced before the claim reached us
    rib.announce_many(OWNER, OWNER, [new_block])
    assert rib.best_route(new_block) is None  # nobody owns it yet
    rib.take_changes()
    blocks = {MY_BLOCK: ME, OWNER_BLOCK: OWNER, ROGUE_BLOCK: ROGUE, new_block: OWNER}
    borrowed = {BORROWED_FROM_ME: HOLDER, BORROWED_FROM_OWNER: HOLDER}
    assert rib.set_origins(blocks, borrowed) is True
    assert rib.best_route(new_block) == LearnedRoute(new_block, OWNER, OWNER)
    assert rib.take_changes() == ([], [LearnedRoute(new_block, OWNER, OWNER)])
    assert rib.set_origins(dict(blocks), dict(borrowed)) is False  # the same: nothing to do
    blocks[new_block] = ROGUE  # the block moved (released and claimed by another node)
    rib.set_origins(blocks, borrowed)
    assert rib.best_route(new_block) == LearnedRoute(new_block, ROGUE, ROGUE)
    rib.set_origins(None, {})  # validation off: the import filter alone, lowest peer wins
    assert rib.best_route(new_block) == LearnedRoute(new_block, OWNER, OWNER)


def test_origins_changed_by_difference_reach_the_routes_already_held():
    rib = make_rib()
    new_block = N("10.244.9.0/26")
    rib.announce_many(OWNER, OWNER, [new_block, N(f"{BORROWED_FROM_OWNER}/32")])
    assert prefixes(rib) == set()
    assert rib.change_origins({new_block: OWNER}, {BORROWED_FROM_OWNER: OWNER}) is True
    assert prefixes(rib) == {str(new_block), f"{BORROWED_FROM_OWNER}/32"}
    assert rib.change_origins({new_block: OWNER}, {}) is False  # the same: nothing to do
    rib.change_origins({new_block: None}, {BORROWED_FROM_OWNER: None})  # released
    assert prefixes(rib) == set()
    assert rib.rejection(new_block, OWNER) == "rejected_origin_unknown"
    # a /32 of a block is only ever announced as borrowed, never by the block's own node
    assert rib.rejection(N(f"{BORROWED_FROM_OWNER}/32"), OWNER) == "rejected_origin_mismatch"


def test_a_route_ahead_of_its_block_is_held_uncounted_and_accepted_when_the_block_arrives():
    """A node announces a block it has just claimed (an address it has just borrowed) as soon as
    its IPAM write is done; the route may arrive before our datastore watch shows the write. It is
    held, never programmed, and counted only if it is still rejected when the hold is over."""
    rib = make_rib()
    new_block, lent = N("10.244.9.0/26"), A("10.244.2.61")
    rib.announce_many(OWNER, OWNER, [new_block])
    rib.announce_many(HOLDER, HOLDER, [N(f"{lent}/32")])
    rib.announce_many(ROGUE, ROGUE, [N("10.244.10.0/26"), OWNER_BLOCK, N("10.244.11.0/26")])
    assert prefixes(rib) == set() and rib.counters.get("rejected_origin_unknown", 0) == 0
    assert rib.counters.get("rejected_origin_mismatch", 0) == 0
    assert rib.next_deadline() == ORIGIN_HOLD
    rib._clock.now = ORIGIN_HOLD / 2
    rib.change_origins({new_block: OWNER}, {lent: HOLDER})  # the watch caught up
    rib.withdraw(ROGUE, N("10.244.11.0/26"))  # gone before its hold ended: not counted
    assert prefixes(rib) == {str(new_block), f"{lent}/32"}
    assert rib.expire() is False and rib.counters.get("rejected_origin_unknown", 0) == 0
    rib._clock.now = ORIGIN_HOLD
    rib.expire()
    # only what stayed unacceptable: the rogue's unknown block and its copy of OWNER's block
    assert {k: v for k, v in rib.counters.items() if k.startswith("rejected")} == {
        "rejected_origin_unknown": 1, "rejected_origin_mismatch": 1}
    assert prefixes(rib) == {str(new_block), f"{lent}/32"} and rib.next_deadline() is None
    rib._clock.now += 3 * ORIGIN_HOLD
    rib.expire()  # counted once
    assert rib.counters["rejected_origin_unknown"] == 1 and rib.counters["rejected_origin_mismatch"] == 1


def test_while_the_datastore_is_away_a_route_ahead_of_its_block_stays_held_uncounted():
    """A datastore outage longer than the hold: the block claimed meanwhile is the datastore's
    news, not the peer's fault. Nothing held is counted while the origins are not current; back
    in sync, each held route has the whole hold again from then."""
    rib = make_rib()
    before, during = N("10.244.9.0/26"), N("10.244.10.0/26")
    rib.announce_many(OWNER, OWNER, [before])  # due at ORIGIN_HOLD
    assert rib.set_origins_current(False) is True and rib.set_origins_current(False) is False
    assert rib.next_deadline() is None  # no timer while the datastore is away
    rib._clock.now = ORIGIN_HOLD / 2
    rib.announce_many(OWNER, OWNER, [during])
    rib._clock.now = 30 * ORIGIN_HOLD
    assert rib.expire() is False
    assert rib.counters.get("rejected_origin_unknown", 0) == 0 and prefixes(rib) == set()
    assert len(rib._held) == 2
    back = rib._clock.now
    assert rib.set_origins_current(True) is True
    assert rib.next_deadline() == back + ORIGIN_HOLD
    rib._clock.now = back + ORIGIN_HOLD / 2
    rib.expire()
    assert rib.counters.get("rejected_origin_unknown", 0) == 0
    rib.change_origins({before: OWNER}, {})  # the resynced watch shows the block claimed then
    assert prefixes(rib) == {str(before)}
    rib._clock.now = back + ORIGIN_HOLD
    rib.expire()
    assert rib.counters["rejected_origin_unknown"] == 1  # only the one still unknown
    assert rib.next_deadline() is None and not rib._held


def test_the_hold_cap_applies_during_an_outage_too():
    rib = Rib(clock=Clock(), router_id=ME, held_max=10)
    rib.set_import_filter(frozenset({POOL}), frozenset({MY_BLOCK}))
    rib.set_origins({MY_BLOCK: ME}, {})
    rib.set_origins_current(False)
    rib.announce_many(ROGUE, ROGUE, [N(f"10.244.200.{i}/32") for i in range(15)])
    assert len(rib._held) == 10 and rib.counters["rejected_origin_unknown"] == 5  # past the cap: at once


def test_other_rejections_are_counted_at_once():
    rib = make_rib()
    rib.announce_many(ROGUE, ROGUE, [N("0.0.0.0/0"), N("192.0.2.0/24"), N("10.244.1.0/28")])
    assert {k: v for k, v in rib.counters.items() if k.startswith("rejected")} == {
        "rejected_default_route": 1, "rejected_outside_pools": 1, "rejected_own_block": 1}
    assert rib.next_deadline() is None


def test_a_peer_that_re_announces_its_path_with_a_foreign_next_hop_loses_it():
    rib = make_rib()
    rib.announce_many(OWNER, OWNER, [OWNER_BLOCK])
    rib.announce_many(A("10.0.0.8"), A("10.0.0.8"), [OWNER_BLOCK])  # a second peer, rejected
    rib.announce_many(OWNER, ROGUE, [OWNER_BLOCK])  # implicit replace by a path it may not use
    assert rib.best_route(OWNER_BLOCK) is None
    alone = make_rib()  # the same with one peer only (the RIB's shortcut for a single upstream)
    alone.announce_many(OWNER, OWNER, [OWNER_BLOCK])
    alone.take_changes()
    alone.announce_many(OWNER, ROGUE, [OWNER_BLOCK])
    assert alone.best() == frozenset()
    assert alone.take_changes() == ([LearnedRoute(OWNER_BLOCK, OWNER, OWNER)], [])


# -- max-prefix --------------------------------------------------------------------------------


def test_a_peer_over_its_max_prefix_limit_loses_its_routes_until_its_session_goes_down():
    rib = make_rib()
    rib.set_max_prefixes(ROGUE, 10)
    rib.set_max_prefixes(OWNER, 10)
    rib.announce_many(OWNER, OWNER, [OWNER_BLOCK])
    rib.announce_many(ROGUE, ROGUE, [ROGUE_BLOCK])
    rib.announce_many(ROGUE, ROGUE, [N(f"10.244.200.{i}/32") for i in range(10)])  # 11 held
    assert rib.take_exceeded() == [ROGUE] and rib.take_exceeded() == []
    assert prefixes(rib) == {str(OWNER_BLOCK)} and rib.exceeded(ROGUE)
    assert rib.route_count(ROGUE) == 0
    assert rib.counters["max_prefix_exceeded"] == 1 and rib.counters["rejected_max_prefix"] == 11
    rib.announce_many(ROGUE, ROGUE, [ROGUE_BLOCK])  # still the same session: ignored
    assert prefixes(rib) == {str(OWNER_BLOCK)} and rib.counters["rejected_max_prefix"] == 12
    rib.apply(p.PeerStateChanged(ROGUE, "down"))
    rib.announce_many(ROGUE, ROGUE, [ROGUE_BLOCK])  # a new session starts a new count
    assert prefixes(rib) == {str(OWNER_BLOCK), str(ROGUE_BLOCK)} and not rib.exceeded(ROGUE)


def test_max_prefix_counts_what_is_held_not_what_is_re_sent():
    rib = make_rib()
    rib.set_max_prefixes(OWNER, 1)
    for _ in range(5):
        rib.announce_many(OWNER, OWNER, [OWNER_BLOCK])
    assert rib.take_exceeded() == [] and prefixes(rib) == {str(OWNER_BLOCK)}
    with pytest.raises(ValueError, match="negative"):
        rib.set_max_prefixes(OWNER, -1)


def test_the_environment_knobs_are_checked_and_name_the_variable():
    assert max_prefixes_from_env({}) == 200_000
    assert max_prefixes_from_env({"PYCALICO_BGP_MAX_PREFIXES": "0"}) is None
    assert max_prefixes_from_env({"PYCALICO_BGP_MAX_PREFIXES": "50"}) == 50
    with pytest.raises(ValueError, match="PYCALICO_BGP_MAX_PREFIXES: '-5'"):
        max_prefixes_from_env({"PYCALICO_BGP_MAX_PREFIXES": "-5"})
    assert origin_validation_from_env({}) is True
    assert origin_validation_from_env({"PYCALICO_BGP_ORIGIN_VALIDATION": "False"}) is False
    with pytest.raises(ValueError, match="PYCALICO_BGP_ORIGIN_VALIDATION: 'no'"):
        origin_validation_from_env({"PYCALICO_BGP_ORIGIN_VALIDATION": "no"})


# -- property: the verdict follows the current origins, however they were reached ---------------

owners = st.sampled_from([OWNER, ROGUE, HOLDER, None])
blocks = st.sampled_from([N(f"10.244.{i}.0/26") for i in range(4, 8)])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.dictionaries(blocks, owners), min_size=1, max_size=5))
def test_incremental_origin_changes_match_a_fresh_rib(histories):
    announcers = (OWNER, ROGUE, HOLDER)
    rib = make_rib()
    for peer in announcers:
        rib.announce_many(peer, peer, [N(f"10.244.{i}.0/26") for i in range(4, 8)])
    for step in histories:
        origins = {b: o for b, o in step.items() if o is not None}
        rib.set_origins(origins, {})
    fresh = Rib(clock=lambda: 0.0, router_id=ME)
    fresh.set_import_filter(frozenset({POOL}), frozenset({MY_BLOCK}))
    fresh.set_origins(origins, {})
    for peer in announcers:
        fresh.announce_many(peer, peer, [N(f"10.244.{i}.0/26") for i in range(4, 8)])
    assert rib.best() == fresh.best()
    assert all(r.peer == origins[r.prefix] for r in rib.best())


def test_node_status_lists_drops_by_reason_apart_from_what_was_received():
    lines = health_lines({"counters": {"received": 20_010, "rejected_origin_mismatch": 1,
                                       "rejected_origin_unknown": 20_002, "malformed": 0,
                                       "max_prefix_exceeded": 1}})
    assert lines == ["Dropped BGP input: rejected_origin_mismatch=1, rejected_origin_unknown=20002",
                     "BGP prefixes received: 20010, max_prefix_exceeded=1"]


def test_origins_come_from_block_affinities_and_borrowed_addresses_with_node_addresses():
    from felix import cluster
    from tests.unit.test_felix_cluster import RESOURCES, block_with, res, state_of

    s = state_of(RESOURCES + [block_with({0: "n1", 5: "n2", 6: "n3"}),  # n3: no Node, no address
                              res("IPAMBlock", "10-244-3-0-26",
                                  {"cidr": "10.244.3.0/26", "affinity": "host:n3"})])
    blocks, borrowed = cluster.bgp_origins(s)
    assert blocks == {N("10.244.1.0/26"): A("10.99.0.1"), N("10.250.0.0/26"): A("10.99.0.1"),
                      N("10.244.2.0/26"): A("10.99.0.2")}
    assert borrowed == {A("10.244.1.5"): A("10.99.0.2")}
    rib = Rib(clock=Clock())
    rib.set_import_filter(cluster.pool_cidrs(s), cluster.local_blocks(s, "n1"))
    rib.set_origins(blocks, borrowed)
    rib.announce_many(A("10.99.0.2"), A("10.99.0.2"),
                      [N("10.244.2.0/26"), N("10.244.1.5/32"), N("10.244.3.0/26")])
    assert prefixes(rib) == {"10.244.2.0/26", "10.244.1.5/32"}  # n3's waits for n3's address
    assert counted(rib)["rejected_origin_unknown"] == 1


def test_what_a_peer_provides_is_judged_by_its_paths_origins():
    """bgp.transition waits for other sessions to cover what a peer provides: with origin
    validation on, that is the prefixes its paths may carry (the owner's block, not the rogue's
    copy), stale ones included."""
    rib = make_rib()
    rib.set_restart_time(OWNER, 120)
    rib.announce_many(OWNER, OWNER, [OWNER_BLOCK, ROGUE_BLOCK])
    rib.announce_many(ROGUE, ROGUE, [OWNER_BLOCK, ROGUE_BLOCK])
    assert rib.provided(OWNER) == {OWNER_BLOCK} and rib.provided(ROGUE) == {ROGUE_BLOCK}
    rib.peer_down(OWNER)
    assert rib.provided(OWNER) == {OWNER_BLOCK}


def test_a_peer_churning_rejected_prefixes_cannot_grow_the_origin_hold_without_bound():
    """Announcing and withdrawing ever new rejected prefixes: max-prefix bounds what a peer holds,
    not its churn, so the hold is bounded by itself; past ``held_max`` a rejection counts on arrival."""
    rib = Rib(clock=Clock(), router_id=ME, held_max=100)
    rib.set_import_filter(frozenset({POOL}), frozenset({MY_BLOCK}))
    rib.set_origins({MY_BLOCK: ME, OWNER_BLOCK: OWNER}, {})
    for burst in range(5):
        rogue = [N(f"10.244.{128 + burst}.{i}/32") for i in range(100)]
        rib.announce_many(ROGUE, ROGUE, rogue)
        rib.withdraw_many(ROGUE, rogue)
    assert rib.counters["rejected_origin_unknown"] == 400  # all but the first 100, at once
    assert len(rib._held) == 100
    assert counted(rib)["rejected_origin_unknown"] == 400  # the held ones were withdrawn: not counted
    assert rib.next_deadline() is None


@pytest.mark.parametrize("gone", ["non-graceful down", "removed"])
def test_a_peer_whose_routes_are_forgotten_leaves_no_held_route_taking_the_cap(gone):
    """The held routes of a peer whose routes are dropped (a session ended without graceful
    restart, or a peer no longer configured) are gone with them: they would be skipped when due,
    but meanwhile they kept a deadline and took room under ``held_max``, so another peer's routes
    ahead of their blocks were counted at once instead of held."""
    rib = Rib(clock=Clock(), router_id=ME, held_max=10)
    rib.set_import_filter(frozenset({POOL}), frozenset({MY_BLOCK}))
    rib.set_origins({MY_BLOCK: ME}, {})
    rib.announce_many(ROGUE, ROGUE, [N(f"10.244.200.{i}/32") for i in range(10)])
    assert len(rib._held) == 10
    if gone == "removed":
        rib.remove_peer(ROGUE)
    else:
        rib.peer_down(ROGUE, graceful=False)
    assert not rib._held and rib.next_deadline() is None
    rib.announce_many(OWNER, OWNER, [N(f"10.244.201.{i}/32") for i in range(10)])
    assert len(rib._held) == 10 and rib.counters["rejected_origin_unknown"] == 0  # held, not counted
