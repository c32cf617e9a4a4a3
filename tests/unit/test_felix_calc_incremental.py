"""felix.calc.RouteCalc: incremental updates always equal the reference ``desired_routes`` of the
final input, whatever the order of the events; each update reports exactly what changed."""
from __future__ import annotations

from collections import Counter
from dataclasses import replace
from ipaddress import IPv4Address, IPv4Interface, IPv4Network

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from felix.calc import (
    ALWAYS, CROSS_SUBNET, NEVER, Block, Borrowed, CalcInput, Host, PoolEncap, RemoteRoute, RouteCalc, Workload,
    desired_routes, dst_key, unroutable,
)

N, A = IPv4Network, IPv4Address
POOLS = [N("10.244.0.0/16"), N("10.245.0.0/16")]
NODES = ["n1", "n2", "n3"]
BLOCK_CIDRS = [N(c) for c in ("10.244.1.0/26", "10.244.2.0/26", "10.244.1.0/30", "10.245.0.0/26",
                               "10.244.3.7/32", "10.99.0.0/26")]
IPS = [A(a) for a in ("10.244.1.5", "10.244.1.1", "10.244.2.7", "10.244.3.7", "10.245.0.1")]
PREFIXES = [N(p) for p in ("10.244.1.0/26", "10.244.2.0/26", "10.244.1.5/32", "10.244.2.7/32",
                           "10.245.0.0/26", "10.244.3.7/32", "10.0.0.0/8")]
GATEWAYS = [A("10.99.0.2"), A("10.99.1.3")]
BORROWED_IPS = [A("10.244.1.5"), A("10.244.1.9"), A("10.244.2.7"), A("10.244.3.7"), A("10.99.0.5")]
MODES = st.sampled_from([NEVER, ALWAYS, CROSS_SUBNET])

workloads = st.builds(Workload, ip=st.sampled_from(IPS), iface=st.sampled_from(["calia", "calib"]),
                      node=st.sampled_from(["n1", "n2"]), name=st.sampled_from(["ns/x", "ns/y"]))
learned_routes = st.builds(RemoteRoute, key=st.sampled_from([dst_key(p) for p in PREFIXES]),
                           gateway=st.sampled_from(GATEWAYS), source=st.sampled_from(["p1", "p2"]))
hosts = st.builds(
    Host, name=st.sampled_from(NODES),
    ip=st.sampled_from([None, IPv4Interface("10.99.0.1/24"), IPv4Interface("10.99.0.2/24"),
                        IPv4Interface("10.99.1.3/24")]),
    vtep_ip=st.sampled_from([None, A("10.244.9.1"), A("10.244.9.2")]),
    vtep_mac=st.sampled_from([None, "66:00:00:00:00:01"]))


@st.composite
def global_inputs(draw) -> CalcInput:
    """Everything but workloads and learned routes: what only ``rebuild`` takes."""
    pools = frozenset(draw(st.lists(st.sampled_from(POOLS), unique=True)))
    encap = frozenset(PoolEncap(p, draw(MODES), draw(MODES)) for p in pools if draw(st.booleans()))
    blocks = draw(st.frozensets(st.builds(Block, cidr=st.sampled_from(BLOCK_CIDRS),
                                          node=st.sampled_from(NODES)), max_size=6))
    host_list = draw(st.lists(hosts, max_size=3, unique_by=lambda h: h.name))
    # Addresses held by a node other than their block's (IPAM borrowed them); some collide with
    # workloads, learned /32s and a /32 block, one is outside every pool.
    borrowed = draw(st.frozensets(st.builds(Borrowed, ip=st.sampled_from(BORROWED_IPS),
                                            node=st.sampled_from(NODES)), max_size=4))
    return CalcInput(node="n1", pools=pools, blocks=blocks, workloads=frozenset(),
                     learned=frozenset(), encap=encap, hosts=frozenset(host_list),
                     bgp=draw(st.booleans()), borrowed=borrowed)


# (True: added / False: removed, the item)
events = st.lists(st.tuples(st.booleans(), st.one_of(workloads, learned_routes)), max_size=25)


def with_event(inp: CalcInput, added: bool, item) -> CalcInput:
    field = "workloads" if isinstance(item, Workload) else "learned"
    items = getattr(inp, field)
    return replace(inp, **{field: items | {item} if added else items - {item}})


def feed(calc: RouteCalc, added: bool, item) -> set[int]:
    if isinstance(item, Workload):
        return calc.update(**{"workloads_added" if added else "workloads_removed": [item]})
    return calc.update(**{"learned_added" if added else "learned_removed": [item]})


def changed_between(before, after) -> set[int]:
    return {d for d in before.keys() | after.keys() if before.get(d) != after.get(d)}


@settings(max_examples=300, deadline=None)
@given(global_inputs(), st.frozensets(workloads), st.frozensets(learned_routes), events)
def test_every_update_equals_the_reference_and_reports_exactly_what_changed(base, wls, lrs, evs):
    inp = replace(base, workloads=wls, learned=lrs)
    calc = RouteCalc()
    assert calc.rebuild(inp) == set(desired_routes(inp))
    assert calc.problems == unroutable(inp)
    for added, item in evs:
        before = desired_routes(inp)
        inp = with_event(inp, added, item)
        after = desired_routes(inp)
        assert feed(calc, added, item) == changed_between(before, after)
        assert dict(calc.desired) == dict(after)
        assert calc.reasons == Counter(r.reason for r in after.values())


@settings(max_examples=200, deadline=None)
@given(global_inputs(), st.frozensets(workloads), st.frozensets(learned_routes),
       st.frozensets(st.one_of(workloads, learned_routes)), st.randoms(use_true_random=False))
def test_any_order_of_the_same_events_gives_the_same_state(base, wls, lrs, extra, rnd):
    """Adds of ``extra`` and removals of half the initial items, one event at a time in two
    random orders, and all at once in one batch: the same routes, equal to the reference."""
    initial = list(wls) + list(lrs)
    gone = set(initial[::2]) - extra
    evs = [(True, i) for i in extra] + [(False, i) for i in gone]
    final = replace(base, workloads=(wls | {i for i in extra if isinstance(i, Workload)})
                    - gone, learned=(lrs | {i for i in extra if isinstance(i, RemoteRoute)}) - gone)
    results = []
    for _ in range(2):
        calc = RouteCalc()
        calc.rebuild(replace(base, workloads=wls, learned=lrs))
        rnd.shuffle(evs)
        for added, item in evs:
            feed(calc, added, item)
        results.append(dict(calc.desired))
    batch = RouteCalc()
    batch.rebuild(replace(base, workloads=wls, learned=lrs))
    batch.update(workloads_added=[i for i in extra if isinstance(i, Workload)],
                 learned_added=[i for i in extra if isinstance(i, RemoteRoute)],
                 workloads_removed=[i for i in gone if isinstance(i, Workload)],
                 learned_removed=[i for i in gone if isinstance(i, RemoteRoute)])
    assert results[0] == results[1] == dict(batch.desired) == dict(desired_routes(final))


@settings(max_examples=150, deadline=None)
@given(global_inputs(), global_inputs(), st.frozensets(workloads), st.frozensets(learned_routes),
       events)
def test_a_rebuild_in_the_middle_reports_its_changes_and_updates_go_on(a, b, wls, lrs, evs):
    first = replace(a, workloads=wls, learned=lrs)
    calc = RouteCalc()
    calc.rebuild(first)
    half = len(evs) // 2
    inp = first
    for added, item in evs[:half]:
        inp = with_event(inp, added, item)
        feed(calc, added, item)
    switched = replace(b, workloads=inp.workloads, learned=inp.learned)
    assert calc.rebuild(switched) == changed_between(desired_routes(inp), desired_routes(switched))
    inp = switched
    for added, item in evs[half:]:
        inp = with_event(inp, added, item)
        feed(calc, added, item)
    assert dict(calc.desired) == dict(desired_routes(inp))
    assert calc.problems == unroutable(inp)


def test_update_before_rebuild_is_a_bug():
    with pytest.raises(AssertionError, match="Bug"):
        RouteCalc().update(workloads_added=[Workload(IPS[0], "calia", "n1", "ns/x")])


def test_removing_what_is_not_there_changes_nothing():
    calc = RouteCalc()
    calc.rebuild(CalcInput(node="n1", pools=frozenset(POOLS), blocks=frozenset(),
                           workloads=frozenset(), learned=frozenset()))
    assert calc.update(workloads_removed=[Workload(IPS[0], "calia", "n1", "ns/x")],
                       learned_removed=[RemoteRoute(dst_key(PREFIXES[0]), GATEWAYS[0], "p1")]) == set()
    assert dict(calc.desired) == {}


def test_what_update_returns_and_desired_are_keyed_by_an_int_per_destination():
    """A set of ``dst_key``s, and a read-only mapping by them whose every key is its route's."""
    calc = RouteCalc()
    calc.rebuild(CalcInput(node="n1", pools=frozenset(POOLS), blocks=frozenset(),
                           workloads=frozenset(), learned=frozenset()))
    keys = [dst_key(p) for p in PREFIXES[:2]]
    changed = calc.update(learned_added=[RemoteRoute(k, GATEWAYS[0], "p1") for k in keys])
    assert changed == set(keys) and all(type(k) is int for k in changed)
    assert set(calc.desired) == set(keys) and dst_key(PREFIXES[2]) not in calc.desired
    assert [calc.desired[k].dst for k in keys] == PREFIXES[:2]
    with pytest.raises(KeyError):
        calc.desired[dst_key(PREFIXES[2])]
    with pytest.raises(TypeError):
        calc.desired[keys[0]] = calc.desired[keys[1]]  # type: ignore[index]
    assert dict(calc.desired) == {r.key: r for r in calc.desired.values()}


def test_a_pool_switched_to_ipip_changes_its_learned_routes_though_their_vias_did_not():
    """A learned route's tunnel comes from its pool: a rebuild that changes the pool's mode alone
    reports the route, and ``desired`` builds it with the new tunnel."""
    base = CalcInput(node="n1", pools=frozenset(POOLS), blocks=frozenset(), workloads=frozenset(),
                     learned=frozenset({RemoteRoute(dst_key(PREFIXES[1]), GATEWAYS[0], "p1")}))
    calc = RouteCalc()
    calc.rebuild(base)
    assert calc.desired[dst_key(PREFIXES[1])].dev is None
    ipip = replace(base, encap=frozenset({PoolEncap(POOLS[0], ipip=ALWAYS)}))
    assert calc.rebuild(ipip) == {dst_key(PREFIXES[1])}
    route = calc.desired[dst_key(PREFIXES[1])]
    assert (route.dev, route.onlink, route.reason) == ("tunl0", True, "learned from p1 (ipip)")
    assert calc.reasons == Counter({"learned from p1 (ipip)": 1})
    assert calc.rebuild(ipip) == set()


def test_a_snapshot_holds_the_routes_of_when_it_was_taken():
    """``desired.snapshot()`` (the route table's full diff reads it in a thread, later): the
    routes as they were, whatever updates and rebuilds came after."""
    calc = RouteCalc()
    inp = CalcInput(node="n1", pools=frozenset(POOLS), blocks=frozenset(), workloads=frozenset(),
                    learned=frozenset())
    calc.rebuild(inp)
    first = [RemoteRoute(dst_key(p), GATEWAYS[0], "p1") for p in PREFIXES[:2]]
    calc.update(learned_added=first, workloads_added=[Workload(IPS[2], "calia", "n1", "ns/x")])
    expected = dict(calc.desired)
    snapshot = calc.desired.snapshot()
    calc.update(learned_removed=first[:1],
                learned_added=[RemoteRoute(dst_key(PREFIXES[1]), GATEWAYS[1], "p2")])
    calc.rebuild(replace(inp, encap=frozenset({PoolEncap(POOLS[0], ipip=ALWAYS)})))
    assert {r.key: r for r in snapshot} == expected
    assert len(expected) == 3 and expected[dst_key(PREFIXES[1])].dev is None


def test_one_batch_that_removes_every_via_of_a_prefix_removes_its_route():
    """Two peers' routes for one prefix, both withdrawn in one update (the first leaves one via,
    which the second takes away): no route, and only that prefix reported."""
    one, two = (RemoteRoute(dst_key(PREFIXES[0]), GATEWAYS[0], p) for p in ("p1", "p2"))
    other = RemoteRoute(dst_key(PREFIXES[1]), GATEWAYS[0], "p2")
    calc = RouteCalc()
    calc.rebuild(CalcInput(node="n1", pools=frozenset(POOLS), blocks=frozenset(),
                           workloads=frozenset(), learned=frozenset({one, two, other})))
    assert calc.update(learned_removed=[one, two]) == {dst_key(PREFIXES[0])}
    assert set(calc.desired) == {dst_key(PREFIXES[1])}
    assert calc.reasons == Counter({"learned from p2": 1})


def test_a_route_withdrawn_and_announced_again_in_one_update_is_not_a_change():
    route = RemoteRoute(dst_key(PREFIXES[0]), GATEWAYS[0], "p1")
    moved = RemoteRoute(dst_key(PREFIXES[0]), GATEWAYS[1], "p1")
    calc = RouteCalc()
    calc.rebuild(CalcInput(node="n1", pools=frozenset(POOLS), blocks=frozenset(),
                           workloads=frozenset(), learned=frozenset({route})))
    assert calc.update(learned_removed=[route], learned_added=[route]) == set()
    assert calc.update(learned_removed=[route], learned_added=[moved]) == {route.key}
    assert calc.desired[route.key].gateway == GATEWAYS[1]
    assert calc.reasons == Counter({"learned from p1": 1})


def test_one_batch_that_removes_every_via_of_a_prefix_then_adds_another_keeps_only_that_one():
    """The removals leave the prefix no candidate (its old winner stands until the update
    resolves it); the addition is then its only one."""
    one, two = (RemoteRoute(dst_key(PREFIXES[0]), GATEWAYS[0], p) for p in ("p1", "p2"))
    later = RemoteRoute(dst_key(PREFIXES[0]), GATEWAYS[1], "p2")
    calc = RouteCalc()
    calc.rebuild(CalcInput(node="n1", pools=frozenset(POOLS), blocks=frozenset(),
                           workloads=frozenset(), learned=frozenset({one, two})))
    assert calc.update(learned_removed=[one, two], learned_added=[later]) == {later.key}
    assert calc.desired[later.key].gateway == GATEWAYS[1]
    assert calc.update(learned_removed=[later]) == {later.key} and dict(calc.desired) == {}
