"""Best-path selection in bgp.rib / bgp.policy (RFC 4271 9.1, RFC 4456 9): the steps in order,
MED only within one neighbouring AS, and a property: the choice depends on the set of paths,
not on the order they arrived in, and equals a plain sort when MED is comparable."""
import json
import random
from ipaddress import IPv4Address as A, IPv4Network as N

from hypothesis import given, settings
from hypothesis import strategies as st

from bgp import protocol as p
from bgp.rib import Rib

POOL = N("10.244.0.0/16")
PREFIX = N("10.244.2.0/26")
LOCAL_AS = 64512


def make_rib() -> Rib:
    rib = Rib(clock=lambda: 0.0)
    rib.set_import_filter(frozenset({POOL}), frozenset())
    return rib


def announce(rib: Rib, peer: str, **attrs) -> None:
    rib.apply(p.RoutesAnnounced(A(peer), A(peer), (PREFIX,), **attrs))


def best_peer(rib: Rib) -> str:
    return str(rib.best_route(PREFIX).peer)


def test_each_step_decides_when_the_steps_before_it_tie():
    cases = [  # (worse, better): the better path wins although its peer address is higher
        ({"local_pref": 100}, {"local_pref": 200}),
        ({"as_path_len": 2}, {"as_path_len": 1}),
        ({"origin": 2}, {"origin": 0}),
        ({"med": 10, "neighbor_as": 65001}, {"med": 5, "neighbor_as": 65001}),
        ({"cluster_list": (A("244.0.0.1"), A("244.0.0.2"))}, {"cluster_list": (A("244.0.0.1"),)}),
        ({"originator_id": A("10.0.0.99")}, {"originator_id": A("10.0.0.50")}),
    ]
    for worse, better in cases:
        rib = make_rib()
        announce(rib, "10.0.0.1", **worse)
        announce(rib, "10.0.0.2", **better)
        assert best_peer(rib) == "10.0.0.2", (worse, better)
        # and an earlier step outranks it: a higher LOCAL_PREF on the worse one turns it round
        rib.withdraw(A("10.0.0.1"), PREFIX)
        announce(rib, "10.0.0.1", **worse, **({"local_pref": 300} if "local_pref" not in worse else
                                               {"as_path_len": 0}))
        if "local_pref" not in worse:
            assert best_peer(rib) == "10.0.0.1", worse


def test_local_pref_is_100_when_absent_and_ignored_from_an_ebgp_peer():
    rib = make_rib()
    rib.set_peer_as(A("10.0.0.1"), 65001, LOCAL_AS)  # eBGP: its LOCAL_PREF is not ours to take
    rib.set_peer_as(A("10.0.0.2"), LOCAL_AS, LOCAL_AS)
    announce(rib, "10.0.0.1", local_pref=500, as_path_len=1, neighbor_as=65001)
    announce(rib, "10.0.0.2", local_pref=150, as_path_len=1, neighbor_as=65001)
    assert best_peer(rib) == "10.0.0.2"  # 150 > 100 (the eBGP path's 500 is ignored)
    rib.withdraw(A("10.0.0.2"), PREFIX)
    announce(rib, "10.0.0.2", as_path_len=1, neighbor_as=65001)  # absent: 100, a tie
    assert best_peer(rib) == "10.0.0.1"  # ... then eBGP over iBGP


def test_ebgp_beats_ibgp_and_router_id_beats_peer_address():
    rib = make_rib()
    rib.set_peer_as(A("10.0.0.2"), 65002, LOCAL_AS)
    announce(rib, "10.0.0.1", as_path_len=1, neighbor_as=65002)
    announce(rib, "10.0.0.2", as_path_len=1, neighbor_as=65002)
    assert best_peer(rib) == "10.0.0.2"
    rib = make_rib()
    rib.apply(p.OpenReceived(A("10.0.0.1"), A("192.0.2.9"), 9, None))
    rib.apply(p.OpenReceived(A("10.0.0.2"), A("192.0.2.1"), 9, None))
    announce(rib, "10.0.0.1")
    announce(rib, "10.0.0.2")
    assert best_peer(rib) == "10.0.0.2"  # lower BGP identifier, higher address


def test_med_is_compared_only_between_paths_from_the_same_neighbouring_as():
    # RFC 4271 9.1.2.2 c: A (AS 65001, MED 50) and B (AS 65001, MED 10): A is out. C (AS 65002,
    # MED 100) is not compared with them on MED. Left: B and C; the peer address decides: B.
    # A plain "lowest MED" would pick B too, so C gets the lowest address and wins over B.
    rib = make_rib()
    announce(rib, "10.0.0.5", med=50, neighbor_as=65001, as_path_len=1)
    announce(rib, "10.0.0.3", med=10, neighbor_as=65001, as_path_len=1)
    announce(rib, "10.0.0.1", med=100, neighbor_as=65002, as_path_len=1)
    assert best_peer(rib) == "10.0.0.1"
    rib.withdraw(A("10.0.0.1"), PREFIX)
    assert best_peer(rib) == "10.0.0.3"  # now MED decides within AS 65001, not the address


def test_a_better_path_replaced_by_a_worse_one_hands_over_to_the_next_best():
    rib = make_rib()
    announce(rib, "10.0.0.1", local_pref=200)
    announce(rib, "10.0.0.2", local_pref=150)
    assert best_peer(rib) == "10.0.0.1"
    announce(rib, "10.0.0.1", local_pref=100)  # implicit replace, now worse
    assert best_peer(rib) == "10.0.0.2"
    assert rib.take_changes()[1] == [rib.best_route(PREFIX)]


def test_a_fresh_path_beats_a_stale_one_whatever_its_attributes():
    rib = make_rib()
    announce(rib, "10.0.0.1", local_pref=500)
    rib.peer_down(A("10.0.0.1"))  # graceful restart: kept as stale
    announce(rib, "10.0.0.2", local_pref=50, as_path_len=9, origin=2)
    assert best_peer(rib) == "10.0.0.2"
    rib.withdraw(A("10.0.0.2"), PREFIX)
    assert best_peer(rib) == "10.0.0.1"  # the stale one is still better than none


def test_protocol_parses_what_selection_compares():
    update = {"type": "update", "neighbor": {"address": {"peer": "10.0.0.2"}, "message": {"update": {
        "attribute": {"origin": "incomplete", "local-preference": 200, "med": 7,
                      "as-path": {"0": {"element": "as-sequence", "value": [65001, 65002]},
                                  "1": {"element": "as-set", "value": [1, 2, 3]}}},
        "announce": {"ipv4 unicast": {"10.0.0.2": ["10.244.2.0/26"]}}}}}}
    [event] = p.Channel().feed(json.dumps(update))
    assert (event.origin, event.as_path_len, event.neighbor_as, event.local_pref, event.med) == \
        (2, 3, 65001, 200, 7)
    update["neighbor"]["message"]["update"]["attribute"] = {
        "origin": "igp", "as-path": {"0": {"element": "as-set", "value": [65001]}}}
    [event] = p.Channel().feed(json.dumps(update))
    assert (event.as_path_len, event.neighbor_as, event.local_pref, event.med) == (1, None, None, None)


# -- property: order independence and a reference sort ------------------------------------------

path_attrs = st.fixed_dictionaries({
    "local_pref": st.one_of(st.none(), st.sampled_from([50, 100, 200])),
    "as_path_len": st.integers(0, 3),
    "origin": st.integers(0, 2),
    "med": st.one_of(st.none(), st.integers(0, 3)),
    "cluster_list": st.lists(st.sampled_from([A("244.0.0.1"), A("244.0.0.2")]), max_size=2).map(tuple),
    "originator_id": st.one_of(st.none(), st.sampled_from([A("192.0.2.1"), A("192.0.2.2")])),
    "neighbor_as": st.sampled_from([None, 65001, 65002]),
})
candidates = st.dictionaries(st.integers(1, 40).map(lambda i: A(f"10.0.1.{i}")),
                             st.tuples(path_attrs, st.booleans(), st.booleans()),  # attrs, eBGP, stale
                             min_size=1, max_size=6)


def fill(rib: Rib, order, cands) -> None:
    for peer in order:
        attrs, ebgp, _ = cands[peer]
        rib.set_peer_as(peer, 65009 if ebgp else LOCAL_AS, LOCAL_AS)
        rib.set_restart_time(peer, 120)
        rib.apply(p.RoutesAnnounced(peer, peer, (PREFIX,), **attrs))
    for peer in order:
        if cands[peer][2]:
            rib.peer_down(peer)


def reference_key(peer, attrs, ebgp, stale):
    pref = 100 if ebgp or attrs["local_pref"] is None else attrs["local_pref"]
    ident = attrs["originator_id"] or peer
    return (stale, -pref, attrs["as_path_len"], attrs["origin"], attrs["med"] or 0, not ebgp,
            len(attrs["cluster_list"]), ident, peer)


@settings(max_examples=300, deadline=None)
@given(candidates, st.randoms(use_true_random=False))
def test_best_path_is_independent_of_arrival_order(cands, rnd):
    order = list(cands)
    chosen = []
    for _ in range(3):
        rnd.shuffle(order)
        rib = make_rib()
        fill(rib, order, cands)
        chosen.append(rib.best_route(PREFIX))
    assert chosen[0] == chosen[1] == chosen[2]


@settings(max_examples=300, deadline=None)
@given(candidates, st.sampled_from([None, 65001]), st.randoms(use_true_random=False))
def test_best_path_equals_a_reference_sort_when_med_is_comparable(cands, asn, rnd):
    cands = {peer: ({**attrs, "neighbor_as": asn}, ebgp, stale)
             for peer, (attrs, ebgp, stale) in cands.items()}
    order = list(cands)
    rnd.shuffle(order)
    rib = make_rib()
    fill(rib, order, cands)
    expected = min(cands, key=lambda peer: reference_key(peer, *cands[peer]))
    assert rib.best_route(PREFIX).peer == expected


def test_the_same_prefix_from_many_peers_in_random_order_settles_on_one_answer():
    rnd = random.Random(4)
    peers = [A(f"10.0.2.{i}") for i in range(1, 30)]
    attrs = {peer: {"local_pref": rnd.choice([100, 200]), "as_path_len": rnd.randint(0, 2),
                    "med": rnd.randint(0, 5), "neighbor_as": rnd.choice([65001, 65002])}
             for peer in peers}
    gone = set(rnd.sample(peers, 10))  # some go away again
    answers = set()
    for _ in range(5):
        rnd.shuffle(peers)
        rib = make_rib()
        for peer in peers:
            rib.apply(p.RoutesAnnounced(peer, peer, (PREFIX,), **attrs[peer]))
        for peer in peers:
            if peer in gone:
                rib.withdraw(peer, PREFIX)
        answers.add(rib.best_route(PREFIX))
    assert len(answers) == 1
