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
                                  "rejected_default_route": 1}


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
    rib.apply(p.RouteAnnounced(P2, N("10.244.2.0/26"), P2))
    rib.apply(p.RouteAnnounced(P1, N("10.244.2.0/26"), P1))
    assert rib.best() == {LearnedRoute(N("10.244.2.0/26"), P1, P1)}
    rib.apply(p.RouteWithdrawn(P1, N("10.244.2.0/26")))
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
    rib.apply(p.RouteAnnounced(P1, a, P1))
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
            rib.apply(p.RouteAnnounced(peer, prefix, nexthop))
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
