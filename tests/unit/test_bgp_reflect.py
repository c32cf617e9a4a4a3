"""RFC 4456 reflection (bgp.reflect) fed by the RIB (bgp.rib): rules, loop drops, withdrawals."""
import random
from ipaddress import IPv4Address as A, IPv4Network as N

from hypothesis import given, settings
from hypothesis import strategies as st

from bgp.reflect import Changes, Reflected, Reflector
from bgp.rib import Rib

ME, CLUSTER = A("10.0.0.100"), A("244.0.0.1")
C1, C2, C3 = A("10.0.0.1"), A("10.0.0.2"), A("10.0.0.3")  # clients
NC = A("10.0.0.50")  # a non-client (another reflector of the same cluster, say)
PEERS = {C1: True, C2: True, C3: True, NC: False}
POOL = N("10.244.0.0/16")
P1, P2 = N("10.244.1.0/26"), N("10.244.2.0/26")


class Node:
    """A reflector's RIB and Reflector wired as the speaker wires them."""

    def __init__(self, peers=PEERS, cluster=CLUSTER):
        self.rib = Rib(clock=lambda: 0.0, router_id=ME)
        self.rib.set_import_filter(frozenset({POOL}), frozenset())
        self.rib.set_cluster_id(cluster)
        self.rib.track_dirty(cluster is not None)
        self.reflector = Reflector()
        self.reflector.configure(cluster, peers, self.rib.best_routes(), self.rib.router_ids)

    def sync(self) -> Changes:
        return self.reflector.update(((p, self.rib.best_route(p)) for p in self.rib.take_dirty()),
                                     self.rib.router_ids)

    def sent(self):
        return self.reflector.sent()


def reflected(nexthop, originator, *clusters):
    return Reflected(nexthop, originator, (CLUSTER, *clusters))


def test_from_a_client_to_all_other_clients_and_non_clients_never_back():
    node = Node()
    node.rib.announce(C1, P1, C1)
    node.sync()
    want = reflected(C1, C1)
    assert node.sent() == {C2: {P1: want}, C3: {P1: want}, NC: {P1: want}}


def test_from_a_non_client_to_clients_only():
    node = Node()
    node.rib.announce_many(NC, C1, [P1], originator_id=C1, cluster_list=(A("244.0.0.9"),))
    node.sync()
    want = Reflected(C1, C1, (CLUSTER, A("244.0.0.9")))  # ORIGINATOR_ID kept, our id prepended
    assert node.sent() == {C1: {P1: want}, C2: {P1: want}, C3: {P1: want}}


def test_originator_id_is_the_source_router_id_from_its_open():
    node = Node()
    node.rib.router_ids[C1] = A("192.0.2.1")
    node.rib.announce(C1, P1, C1)
    node.sync()
    assert node.sent()[C2][P1].originator_id == A("192.0.2.1")


def test_no_cluster_id_no_reflection():
    node = Node(cluster=None)
    node.rib.announce(C1, P1, C1)
    assert not node.sync() and node.sent() == {}


def test_ebgp_or_unknown_source_is_not_reflected():
    node = Node(peers={C2: True})
    node.rib.announce(C1, P1, C1)
    node.sync()
    assert node.sent() == {}


def test_withdrawn_when_the_best_path_goes():
    node = Node()
    node.rib.announce(C1, P1, C1)
    node.sync()
    node.rib.withdraw(C1, P1)
    changes = node.sync()
    assert node.sent() == {}
    assert {t: sorted(p) for t, p in changes.withdraw.items()} == {C2: [P1], C3: [P1], NC: [P1]}
    assert changes.commands() == [
        "neighbor 10.0.0.2 , neighbor 10.0.0.3 , neighbor 10.0.0.50 withdraw attributes nlri 10.244.1.0/26"]


def test_best_path_moves_to_another_peer():
    node = Node()
    node.rib.announce(C2, P1, C2)
    node.sync()
    node.rib.announce(C1, P1, C1)  # lower address: now the best path
    changes = node.sync()
    assert node.sent() == {C2: {P1: reflected(C1, C1)}, C3: {P1: reflected(C1, C1)},
                           NC: {P1: reflected(C1, C1)}}
    assert changes.withdraw == {C1: [P1]}  # C1 had C2's path; now it is the source
    assert set(changes.announce) == {C2, C3, NC}


def test_peer_loss_withdraws_what_was_reflected():
    node = Node()
    node.rib.set_restart_time(C1, None)  # no graceful restart: its routes go with the session
    node.rib.announce(C1, P1, C1)
    node.sync()
    node.rib.peer_down(C1)
    node.sync()
    assert node.sent() == {}


def test_graceful_restart_keeps_reflecting_stale_paths_until_they_expire():
    now = [0.0]
    node = Node()
    node.rib._clock = lambda: now[0]
    node.rib.announce(C1, P1, C1)
    node.sync()
    node.rib.peer_down(C1)  # 120 s restart time by default
    assert not node.sync() and P1 in node.sent()[C2]
    now[0] = 121.0
    node.rib.expire()
    node.sync()
    assert node.sent() == {}


def test_target_that_should_no_longer_get_it():
    node = Node()
    node.rib.announce(NC, P1, C1)
    node.sync()
    assert set(node.sent()) == {C1, C2, C3}
    changes = node.reflector.configure(CLUSTER, {**PEERS, C3: False}, node.rib.best_routes())
    assert changes.withdraw == {C3: [P1]} and not changes.announce
    changes = node.reflector.configure(CLUSTER, {C1: True, NC: False}, node.rib.best_routes())
    assert changes.withdraw == {} and set(node.sent()) == {C1}  # removed peers: just forgotten


def test_session_up_gets_its_whole_adj_rib_out():
    node = Node()
    node.rib.announce_many(C1, C1, [P1, P2])
    node.sync()
    assert node.reflector.out(C2).commands() == [
        "neighbor 10.0.0.2 announce attributes next-hop 10.0.0.1 originator-id 10.0.0.1 "
        "cluster-list [ 244.0.0.1 ] nlri 10.244.1.0/26 10.244.2.0/26"]
    assert node.reflector.out(C1).commands() == []


def test_loop_drops_are_counted_and_replace_the_previous_path():
    node = Node()
    node.rib.announce(C1, P1, C1)
    node.rib.announce_many(C1, C1, [P1], originator_id=ME)
    assert node.rib.best() == frozenset() and node.rib.counters["rejected_originator_loop"] == 1
    node.rib.announce_many(NC, C2, [P2], cluster_list=(A("244.0.0.9"), CLUSTER))
    assert node.rib.best() == frozenset() and node.rib.counters["rejected_cluster_loop"] == 1
    node.sync()
    assert node.sent() == {}


def test_loop_check_on_a_node_that_is_not_a_reflector():
    rib = Rib(clock=lambda: 0.0, router_id=ME)
    rib.set_import_filter(frozenset({POOL}), frozenset())
    rib.announce_many(C1, C2, [P1], originator_id=ME, cluster_list=(CLUSTER,))
    rib.announce_many(C1, C2, [P2], originator_id=C2, cluster_list=(CLUSTER,))  # not our cluster
    assert {r.prefix for r in rib.best()} == {P2}
    assert rib.counters["rejected_originator_loop"] == 1


def test_becoming_a_reflector_drops_held_paths_that_carry_our_cluster_id():
    rib = Rib(clock=lambda: 0.0, router_id=ME)
    rib.set_import_filter(frozenset({POOL}), frozenset())
    rib.announce_many(NC, C2, [P1], originator_id=C2, cluster_list=(CLUSTER,))
    assert rib.set_cluster_id(CLUSTER)
    assert rib.best() == frozenset() and rib.counters["rejected_cluster_loop"] == 1


def expected(routes):
    """The reflected set straight from the rules, for the final state."""
    best = {}
    for peer, prefix, nexthop in routes:
        if prefix not in best or peer < best[prefix][0]:
            best[prefix] = (peer, nexthop)
    out = {}
    for prefix, (source, nexthop) in best.items():
        for target, client in PEERS.items():
            if target != source and (PEERS[source] or client):
                out.setdefault(target, {})[prefix] = reflected(nexthop, source)
    return out


ROUTES = st.lists(st.tuples(st.sampled_from(sorted(PEERS)),
                            st.integers(0, 7).map(lambda i: N(f"10.244.{i}.0/26")),
                            st.sampled_from([C1, C2, C3])),
                  unique_by=lambda r: r[:2], max_size=20)


@settings(max_examples=100, deadline=None)
@given(ROUTES, st.lists(st.integers(0, 19), max_size=8), st.randoms(use_true_random=False))
def test_any_order_of_the_same_updates_gives_the_same_reflected_set(routes, gone, rnd):
    """Announce everything and withdraw some (as announce-then-withdraw pairs), shuffled but each
    withdrawal after its announcement; sync at random points: the result is the final state's."""
    withdrawn = {routes[i][:2] for i in gone if i < len(routes)}
    ops = [("a", r) for r in routes]
    rnd.shuffle(ops)
    for key in withdrawn:
        at = next(i for i, (_, r) in enumerate(ops) if r[:2] == key)
        ops.insert(rnd.randint(at + 1, len(ops)), ("w", key))
    node = Node()
    for op, r in ops:
        if op == "a":
            node.rib.announce(r[0], r[1], r[2])
        else:
            node.rib.withdraw(*r)
        if rnd.random() < 0.3:
            node.sync()
    node.sync()
    final = [r for r in routes if r[:2] not in withdrawn]
    assert node.sent() == expected(final)
    fresh = Node()
    for r in final:
        fresh.rib.announce(*r)
    fresh.sync()
    assert fresh.sent() == node.sent()


def test_reflection_never_goes_back_to_the_source_or_loops():
    node = Node()
    for peer in PEERS:
        node.rib.announce(peer, N(f"10.244.{int(peer) % 256}.0/26"), peer)
    node.sync()
    for target, routes in node.sent().items():
        for prefix, attrs in routes.items():
            assert node.rib.best_route(prefix).peer != target
            assert attrs.cluster_list[0] == CLUSTER and attrs.originator_id != target
    # What a reflector of the same cluster sends back is dropped here.
    for target, routes in node.sent().items():
        for prefix, attrs in routes.items():
            other = Rib(clock=lambda: 0.0, router_id=A("10.0.0.51"))
            other.set_cluster_id(CLUSTER)
            other.announce_many(ME, attrs.nexthop, [prefix], attrs.originator_id, attrs.cluster_list)
            assert other.counters["rejected_cluster_loop"] == 1


def test_shuffled_batches_same_commands_set():
    a, b = Node(), Node()
    routes = [(C1, P1, C1), (C2, P2, C2), (NC, N("10.244.3.0/26"), C3)]
    for r in routes:
        a.rib.announce(*r)
    for r in random.Random(1).sample(routes, len(routes)):
        b.rib.announce(*r)
    assert sorted(a.sync().commands()) == sorted(b.sync().commands())
