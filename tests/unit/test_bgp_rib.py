import random
from ipaddress import IPv4Address as A, IPv4Network as N

from hypothesis import given, settings
from hypothesis import strategies as st

from bgp import protocol as p
from bgp.rib import LearnedRoute, Rib

POOL = N("10.244.0.0/16")
OWN = N("10.244.1.0/26")
P1, P2 = A("10.0.0.2"), A("10.0.0.3")


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_rib(clock=None) -> Rib:
    rib = Rib(clock=clock or FakeClock())
    rib.set_import_filter(frozenset({POOL}), frozenset({OWN}))
    return rib


def test_filter_accepts_pool_prefixes_and_counts_each_rejection_reason():
    rib = make_rib()
    for prefix in ("10.244.2.0/26", "192.0.2.0/24", "10.244.1.0/26", "10.244.1.8/29", "0.0.0.0/0",
                   "10.0.0.0/8"):
        rib.announce(P1, N(prefix), P1)
    assert rib.best() == {LearnedRoute(N("10.244.2.0/26"), P1, P1)}
    assert dict(rib.counters) == {"rejected_outside_pools": 2, "rejected_own_block": 2,
                                  "rejected_default_route": 1, "received": 6}


def test_filter_change_applies_to_routes_already_received():
    rib = make_rib()
    rib.announce(P1, N("10.245.0.0/26"), P1)
    assert rib.best() == frozenset()
    rib.set_import_filter(frozenset({POOL, N("10.245.0.0/16")}), frozenset())
    assert rib.best() == {LearnedRoute(N("10.245.0.0/26"), P1, P1)}


def test_malformed_is_dropped_and_counted_never_raised():
    rib = make_rib()
    rib.announce(P1, "10.244.2.0/26", P1)  # type: ignore[arg-type]
    rib.announce(P1, N("10.244.3.0/26"), A("0.0.0.0"))
    assert rib.apply(p.Malformed("{", "invalid JSON")) is False
    assert rib.best() == frozenset() and rib.counters["malformed"] == 3


def test_withdraw_and_best_prefers_lowest_peer():
    rib = make_rib()
    rib.apply(p.RoutesAnnounced(P2, P2, (N("10.244.2.0/26"),)))
    rib.apply(p.RoutesAnnounced(P1, P1, (N("10.244.2.0/26"),)))
    assert rib.best() == {LearnedRoute(N("10.244.2.0/26"), P1, P1)}
    rib.apply(p.RoutesWithdrawn(P1, (N("10.244.2.0/26"),)))
    assert rib.best() == {LearnedRoute(N("10.244.2.0/26"), P2, P2)}


def test_graceful_restart_keeps_stale_until_eor_then_drops_what_was_not_reannounced():
    clock = FakeClock()
    rib = make_rib(clock)
    a, b = N("10.244.2.0/26"), N("10.244.3.0/26")
    rib.announce(P1, a, P1)
    rib.announce(P1, b, P1)
    rib.apply(p.PeerStateChanged(P1, "down", "closing connection"))
    clock.now += 60
    assert {r.prefix for r in rib.best()} == {a, b}, "stale routes kept while the peer restarts"
    rib.apply(p.PeerStateChanged(P1, "up"))
    rib.apply(p.RoutesAnnounced(P1, P1, (a,)))
    assert {r.prefix for r in rib.best()} == {a, b}, "still stale until End-of-RIB"
    rib.apply(p.EndOfRib(P1, "ipv4 unicast"))
    assert rib.best() == {LearnedRoute(a, P1, P1)}
    assert rib.next_deadline() is None


def test_graceful_restart_expires_after_restart_time():
    clock = FakeClock()
    rib = make_rib(clock)
    rib.apply(p.OpenReceived(P1, P1, 9, 30))
    rib.announce(P1, N("10.244.2.0/26"), P1)
    rib.peer_down(P1)
    assert rib.next_deadline() == 1030.0
    clock.now = 1029.9
    assert not rib.expire() and len(rib.best()) == 1
    clock.now = 1030.0
    assert rib.best() == frozenset(), "an expired stale route is never best, even before expire()"
    assert rib.expire() and rib.route_count(P1) == 0


def test_restart_time_offered_by_the_peer_is_capped():
    """Regression (issue 5, defect 6): a dead peer that offered 4095 s kept its routes 68 minutes."""
    clock = FakeClock()
    rib = make_rib(clock)
    rib.set_restart_cap(P1, 120)
    rib.apply(p.OpenReceived(P1, P1, 9, 4095))
    rib.announce(P1, N("10.244.2.0/26"), P1)
    rib.peer_down(P1)
    assert rib.next_deadline() == 1000.0 + 120
    clock.now += 120
    assert rib.best() == frozenset() and rib.expire()


def test_restart_cap_never_lengthens_what_the_peer_offered():
    rib = make_rib()
    rib.set_restart_cap(P1, 120)
    rib.apply(p.OpenReceived(P1, P1, 9, 30))
    assert rib.restart_time(P1) == 30
    rib.apply(p.OpenReceived(P1, P1, 9, None))
    assert rib.restart_time(P1) is None


def test_import_filter_setter_reports_whether_anything_changed():
    rib = make_rib()
    assert not rib.set_import_filter(frozenset({POOL}), frozenset({OWN}))
    assert rib.set_import_filter(frozenset({POOL}), frozenset())


def test_peer_without_graceful_restart_loses_routes_at_once():
    rib = make_rib()
    rib.apply(p.OpenReceived(P1, P1, 9, None))
    rib.announce(P1, N("10.244.2.0/26"), P1)
    rib.peer_down(P1)
    assert rib.best() == frozenset()


def test_a_session_ended_by_a_notification_drops_fresh_and_stale_routes_at_once():
    clock = FakeClock()
    rib = make_rib(clock)
    rib.apply(p.OpenReceived(P1, P1, 9, 120))
    rib.announce(P1, N("10.244.2.0/26"), P1)
    rib.announce(P2, N("10.244.3.0/26"), P2)
    rib.peer_down(P1)  # kept as stale
    rib.announce(P1, N("10.244.4.0/26"), P1)  # the next session
    rib.peer_down(P1, graceful=False)
    assert rib.best() == {LearnedRoute(N("10.244.3.0/26"), P2, P2)}
    assert rib.route_count(P1) == 0 and rib.next_deadline() is None
    rib.announce(P1, N("10.244.2.0/26"), P1)
    rib.peer_down(P1)
    assert rib.next_deadline() == 1120.0, "a later session still restarts gracefully"


def test_fresh_beats_stale_even_from_a_higher_peer():
    rib = make_rib()
    rib.announce(P1, N("10.244.2.0/26"), P1)
    rib.announce(P2, N("10.244.2.0/26"), P2)
    rib.peer_down(P1)
    assert rib.best() == {LearnedRoute(N("10.244.2.0/26"), P2, P2)}


def test_remove_peer_forgets_stale_routes():
    rib = make_rib()
    rib.announce(P1, N("10.244.2.0/26"), P1)
    rib.peer_down(P1)
    rib.remove_peer(P1)
    assert rib.best() == frozenset() and rib.next_deadline() is None


peers = st.sampled_from([A(f"10.0.0.{i}") for i in range(1, 5)])
prefixes = st.builds(lambda third, fourth: N(f"10.{third}.{fourth * 64}.0/26"),
                     st.sampled_from([244, 245]), st.integers(0, 3))
announcements = st.dictionaries(st.tuples(peers, prefixes), st.sampled_from([A("10.9.0.1"), A("10.9.0.2")]),
                                max_size=20)


@settings(max_examples=200, deadline=None)
@given(announcements, st.randoms(use_true_random=False), st.sets(peers))
def test_result_does_not_depend_on_announcement_order(anns, rnd, down):
    def feed(items):
        rib = make_rib()
        for (peer, prefix), nexthop in items:
            rib.apply(p.RoutesAnnounced(peer, nexthop, (prefix,)))
        for peer in sorted(down):
            rib.peer_down(peer)
        return rib.best(), dict(rib.counters)

    items = list(anns.items())
    expected = feed(items)
    rnd.shuffle(items)
    assert feed(items) == expected
    assert feed(list(reversed(items))) == expected
    best, _ = expected
    assert len({r.prefix for r in best}) == len(best), "one route per prefix"


# -- the incremental best path against a reference that recomputes everything ----------------


class ReferenceRib:
    """The RIB as it was before it became incremental: one dict of paths per peer, best() a full
    pass. Slow and obviously right; the fast Rib must answer exactly as it does."""

    def __init__(self, clock, restart: dict) -> None:
        self.clock, self.restart = clock, restart
        self.paths: dict = {}  # {peer: {prefix: (nexthop, stale_until or None)}}
        self.pools, self.own = frozenset({POOL}), frozenset({OWN})

    def accepted(self, prefix) -> bool:
        return (prefix.prefixlen > 0 and not any(prefix.subnet_of(o) for o in self.own)
                and any(prefix.subnet_of(p) for p in self.pools))

    def announce(self, peer, nexthop, prefixes) -> None:
        for prefix in prefixes:
            self.paths.setdefault(peer, {})[prefix] = (nexthop, None)

    def withdraw(self, peer, prefixes) -> None:
        for prefix in prefixes:
            self.paths.get(peer, {}).pop(prefix, None)

    def peer_down(self, peer) -> None:
        paths = self.paths.get(peer, {})
        if not self.restart.get(peer, 120):
            paths.clear()
            return
        deadline = self.clock() + self.restart.get(peer, 120)
        for prefix, (nexthop, until) in paths.items():
            if until is None:
                paths[prefix] = (nexthop, deadline)

    def end_of_rib(self, peer) -> None:
        paths = self.paths.get(peer, {})
        for prefix in [p for p, (_, until) in paths.items() if until is not None]:
            del paths[prefix]

    def expire(self) -> None:
        for paths in self.paths.values():
            for prefix in [p for p, (_, u) in paths.items() if u is not None and u <= self.clock()]:
                del paths[prefix]

    def best(self) -> frozenset:
        chosen: dict = {}
        for peer, paths in self.paths.items():
            for prefix, (nexthop, until) in paths.items():
                if (until is not None and until <= self.clock()) or not self.accepted(prefix):
                    continue
                key = (until is not None, peer)
                if prefix not in chosen or key < chosen[prefix][0]:
                    chosen[prefix] = (key, LearnedRoute(prefix, nexthop, peer))
        return frozenset(route for _, route in chosen.values())

    def next_deadline(self):
        return min((u for paths in self.paths.values() for _, u in paths.values() if u is not None),
                   default=None)


# Few prefixes and peers, so that operations collide on the same prefix (a wide space hides bugs).
few = st.sampled_from([N("10.244.2.0/26"), N("10.244.3.0/26"), N("10.245.0.0/26"), OWN])
batch = st.lists(few, min_size=1, max_size=3)
some_peers = st.sampled_from([A("10.0.0.1"), A("10.0.0.2"), A("10.0.0.3")])
operations = st.lists(st.one_of(
    st.tuples(st.just("announce"), some_peers, st.sampled_from([A("10.9.0.1"), A("10.9.0.2")]), batch),
    st.tuples(st.just("announce"), some_peers, st.sampled_from([A("10.9.0.1"), A("10.9.0.2")]), batch),
    st.tuples(st.just("withdraw"), some_peers, batch),
    st.tuples(st.just("down"), some_peers),
    st.tuples(st.just("eor"), some_peers),
    st.tuples(st.just("remove"), some_peers),
    st.tuples(st.just("tick"), st.sampled_from([10.0, 30.0, 60.0])),
    st.tuples(st.just("expire")),
    st.tuples(st.just("filter"), st.booleans()),
), max_size=40)


@settings(max_examples=300, deadline=None)
@given(operations)
def test_incremental_best_matches_a_full_recomputation(ops):
    replay_against_reference(ops)


def test_incremental_best_matches_a_full_recomputation_on_long_random_walks():
    """Hypothesis keeps its lists short; long seeded walks reach sequences like announce, down,
    tick, announce from a higher peer, expire, which the short lists rarely combine."""
    peer_list = [A("10.0.0.1"), A("10.0.0.2"), A("10.0.0.3")]
    pfx = [N("10.244.2.0/26"), N("10.244.3.0/26"), N("10.245.0.0/26"), OWN]
    for seed in range(200):
        rnd = random.Random(seed)

        def one():
            kind = rnd.choice(["announce", "announce", "withdraw", "down", "eor", "remove", "tick",
                               "expire", "filter"])
            ps = rnd.sample(pfx, rnd.randint(1, 3))
            return {"announce": ("announce", rnd.choice(peer_list), rnd.choice([A("10.9.0.1"), A("10.9.0.2")]), ps),
                    "withdraw": ("withdraw", rnd.choice(peer_list), ps), "down": ("down", rnd.choice(peer_list)),
                    "eor": ("eor", rnd.choice(peer_list)), "remove": ("remove", rnd.choice(peer_list)),
                    "tick": ("tick", rnd.choice([10.0, 30.0, 60.0])), "expire": ("expire",),
                    "filter": ("filter", rnd.random() < 0.5)}[kind]

        replay_against_reference([one() for _ in range(60)])


def replay_against_reference(ops) -> None:
    clock = FakeClock()
    restart = {A("10.0.0.1"): 30, A("10.0.0.2"): 0}  # one short restart time, one without GR
    rib, ref = make_rib(clock), ReferenceRib(clock, restart)
    view = set(rib.take_changes()[1])  # a consumer's copy, kept by the deltas alone
    for peer, seconds in restart.items():
        rib.set_restart_time(peer, seconds or None)
    for op in ops:
        match op:
            case ("announce", peer, nexthop, ps):
                rib.apply(p.RoutesAnnounced(peer, nexthop, tuple(ps)))
                ref.announce(peer, nexthop, ps)
            case ("withdraw", peer, ps):
                rib.apply(p.RoutesWithdrawn(peer, tuple(ps)))
                ref.withdraw(peer, ps)
            case ("down", peer):
                rib.apply(p.PeerStateChanged(peer, "down"))
                ref.peer_down(peer)
            case ("eor", peer):
                rib.apply(p.EndOfRib(peer, p.IPV4_UNICAST))
                ref.end_of_rib(peer)
            case ("remove", peer):
                rib.remove_peer(peer)
                ref.paths.pop(peer, None)
                for address, seconds in restart.items():  # forgotten with the peer: offer it again
                    rib.set_restart_time(address, seconds or None)
            case ("tick", seconds):
                clock.now += seconds
            case ("expire",):
                rib.expire()
                ref.expire()
            case ("filter", wide):
                pools = frozenset({POOL, N("10.245.0.0/16")} if wide else {POOL})
                rib.set_import_filter(pools, frozenset({OWN}))
                ref.pools = pools
        assert rib.best() == ref.best(), op
        assert rib.next_deadline() == ref.next_deadline(), op
        deadline = rib.next_deadline()
        if deadline is None or deadline > clock.now:  # take_changes() shows expiry once expire() ran
            removed, added = rib.take_changes()
            assert not view.isdisjoint(removed) or not removed
            view.difference_update(removed)
            view.update(added)
            assert view == rib.best(), (op, removed, added)
    assert sum(rib.route_count(peer) for peer in {A(f"10.0.0.{i}") for i in range(1, 5)}) == sum(
        len(paths) for paths in ref.paths.values())


def test_best_is_cached_until_something_changes():
    rib = make_rib()
    rib.announce_many(P1, P1, [N("10.244.2.0/26"), N("10.244.3.0/26")])
    first = rib.best()
    assert rib.best() is first, "no change: the same frozenset, not a rebuilt one"
    rib.announce_many(P2, P2, [N("10.244.2.0/26")])  # a higher peer: best unchanged, but re-read
    assert rib.best() == first
    rib.withdraw_many(P1, [N("10.244.2.0/26")])
    assert rib.best() == {LearnedRoute(N("10.244.2.0/26"), P2, P2), LearnedRoute(N("10.244.3.0/26"), P1, P1)}


def test_one_update_of_many_prefixes_counts_each_rejection():
    rib = make_rib()
    rib.apply(p.RoutesAnnounced(P1, P1, (N("10.244.2.0/26"), N("192.0.2.0/24"), N("10.244.1.0/26"))))
    assert rib.best() == {LearnedRoute(N("10.244.2.0/26"), P1, P1)}
    assert dict(rib.counters) == {"rejected_outside_pools": 1, "rejected_own_block": 1, "received": 3}
    rib.apply(p.RoutesAnnounced(P1, A("0.0.0.0"), (N("10.244.3.0/26"), N("10.244.4.0/26"))))
    assert rib.counters["malformed"] == 2 and len(rib.best()) == 1


def test_take_changes_reports_only_what_changed_since_the_last_call():
    rib = make_rib()
    a, b = N("10.244.2.0/26"), N("10.244.3.0/26")
    rib.announce_many(P2, P2, [a, b])
    assert rib.take_changes() == ([], [LearnedRoute(a, P2, P2), LearnedRoute(b, P2, P2)])
    assert rib.take_changes() == ([], [])
    rib.announce_many(P1, P1, [a])  # a lower peer wins a
    rib.announce_many(P2, P2, [b])  # the same route again: no change
    assert rib.take_changes() == ([LearnedRoute(a, P2, P2)], [LearnedRoute(a, P1, P1)])
    rib.withdraw_many(P1, [a])
    rib.announce_many(P1, P1, [a])  # gone and back within one interval: nothing to report
    rib.withdraw_many(P2, [b])
    assert rib.take_changes() == ([LearnedRoute(b, P2, P2)], [])


def test_one_upstreams_routes_are_held_once():
    """One peer whose every route is accepted (one upstream): the best paths are its Adj-RIB-In
    dict itself, not a copy of it (100k routes: 5 MB). Another peer, a rejection or a peer going
    down gives them a dict of their own again, and the answers stay right (the random walks
    against ReferenceRib above cover those transitions)."""
    import sys
    import tracemalloc

    hosts = [N(f"10.244.{64 + i // 256}.{i % 256}/32") for i in range(20000)]
    keys = tuple(map(p.prefix_key, hosts))  # made before the measurement, as the parser makes them
    rib = make_rib()
    rib.take_changes()
    tracemalloc.start()
    try:
        rib.announce_many(P1, P1, keys)
        before_take = tracemalloc.get_traced_memory()[0]
        _, added = rib.take_changes()
        del added
    finally:
        tracemalloc.stop()
    one_dict = sys.getsizeof(dict.fromkeys(range(20000)))
    # One dict of paths and the change record (take_changes' before-values); with a second dict
    # of paths, three.
    assert before_take < 2.5 * one_dict, (before_take, one_dict)
    rib.announce(P2, hosts[0], P2)  # a second peer: the best paths get their own dict
    rib.withdraw(P1, hosts[0])
    assert rib.best_route(hosts[0]).peer == P2 and rib.best_count() == 20000
    rib.peer_down(P1)
    assert rib.best_route(hosts[1]).peer == P1 and rib.best_count() == 20000  # stale, kept


def test_take_change_columns_are_take_changes_routes_as_keys_and_paths():
    """The agent reads the changes as columns (no object per route): the same routes as
    ``take_changes``, for a burst that only adds, one that only removes, and a mixed one."""
    a, b, c = N("10.244.2.0/26"), N("10.244.3.0/26"), N("10.244.4.0/26")
    ribs = make_rib(), make_rib()
    steps = [lambda r: r.announce_many(P2, P2, [a, b]),  # adds only
             lambda r: (r.announce_many(P1, P1, [a]), r.withdraw_many(P2, [b]),  # mixed
                        r.announce_many(P2, A("10.0.0.9"), [c])),
             lambda r: (r.withdraw_many(P1, [a]), r.withdraw_many(P2, [a, c]))]  # removes only
    for step in steps:
        for rib in ribs:
            step(rib)
        routes = ribs[0].take_changes()
        (gone, old), (came, new) = ribs[1].take_change_columns()
        assert routes == ([LearnedRoute(k, q.nexthop, q.peer) for k, q in zip(gone, old)],
                          [LearnedRoute(k, q.nexthop, q.peer) for k, q in zip(came, new)])
        assert any(routes), "each step changed something"
    assert ribs[1].take_change_columns() == (([], []), ([], []))


ADDRESSES = st.one_of(st.integers(0, 2**32 - 1),  # anywhere
                      st.integers(int(POOL.network_address) - 2**17,  # the pool and around it
                                  int(POOL.broadcast_address) + 2**17),
                      st.integers(int(OWN.network_address), int(OWN.broadcast_address)))


def _key(address: int, length: int) -> int:
    return p.key_of(address >> (32 - length) << (32 - length), length) if length else 0


KEYS = st.builds(_key, ADDRESSES, st.integers(0, 32))


@given(st.lists(KEYS, max_size=40), st.booleans())
@settings(max_examples=300)
def test_an_updates_keys_are_split_as_each_key_is_judged(keys, two_own):
    """``split`` decides a whole UPDATE at once where it can: the same verdicts as one key at a
    time, with own blocks of one or two lengths (and shorter prefixes covering them)."""
    rib = make_rib()
    if two_own:
        rib.set_import_filter(frozenset({POOL}), frozenset({OWN, N("10.244.9.0/24")}))
    keys = tuple(keys)
    accepted, rejected = rib.policy.split(keys, None)
    verdicts = [(k, rib.policy.rejection_key(k, None)) for k in keys]
    assert list(accepted) == [k for k, why in verdicts if why is None]
    assert rejected == [(k, why) for k, why in verdicts if why is not None]


@given(st.lists(ADDRESSES, max_size=40), st.sampled_from([16, 17, 24, 26, 27, 32]), st.booleans())
@settings(max_examples=300)
def test_an_updates_keys_of_one_length_are_split_as_each_key_is_judged(addresses, length, two_own):
    """An UPDATE of one prefix length (the usual: a node's /26 blocks), whose smallest and largest
    keys are its smallest and largest addresses: the same verdicts as one key at a time."""
    rib = make_rib()
    if two_own:
        rib.set_import_filter(frozenset({POOL}), frozenset({OWN, N("10.244.9.0/24")}))
    keys = tuple(_key(a, length) for a in addresses)
    accepted, rejected = rib.policy.split(keys, None)
    verdicts = [(k, rib.policy.rejection_key(k, None)) for k in keys]
    assert list(accepted) == [k for k, why in verdicts if why is None]
    assert rejected == [(k, why) for k, why in verdicts if why is not None]


ONE_PEER_OPS = st.lists(st.tuples(st.sampled_from(["announce", "withdraw", "take"]),
                                  st.sampled_from([P1, A("10.0.0.9")]),
                                  st.lists(st.sampled_from([N(f"10.244.{i}.0/26") for i in range(2, 8)]),
                                           max_size=5)),  # repeats within one UPDATE too
                        max_size=30)


@given(ONE_PEER_OPS)
@settings(max_examples=200)
def test_one_upstreams_changes_keep_a_consumers_copy_right(ops):
    """One peer whose every route is accepted (the RIB's in-place shortcut, ``_mirrors``): a
    consumer applying the changes keeps what the peer last said of each prefix, whatever the
    repeats, withdrawals of what was never sent, and re-announcements via another next hop."""
    rib, said = make_rib(), {}
    view = set(rib.take_changes()[1])
    for op, nexthop, prefixes in ops:
        if op == "announce":
            rib.apply(p.RoutesAnnounced(P2, nexthop, tuple(prefixes)))
            said.update(dict.fromkeys(prefixes, nexthop))
        elif op == "withdraw":
            rib.apply(p.RoutesWithdrawn(P2, tuple(prefixes)))
            for prefix in prefixes:
                said.pop(prefix, None)
        else:
            removed, added = rib.take_changes()
            assert view.issuperset(removed) and view.isdisjoint(added)
            view.difference_update(removed)
            view.update(added)
            assert view == {LearnedRoute(k, hop, P2) for k, hop in said.items()}
    assert rib.best() == {LearnedRoute(k, hop, P2) for k, hop in said.items()}
