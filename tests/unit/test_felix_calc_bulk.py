"""felix.calc.RouteCalc's bulk path: a burst of learned routes at prefixes with no other candidate
is added or removed with dict and set operations, everything else one route at a time. Batches
mixing both must give what ``desired_routes`` gives for the final input, report exactly what
changed, and keep the reason counts; ``DesiredView.routes`` must build what ``get`` builds."""
from __future__ import annotations

from collections import Counter
from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from felix.calc import ALWAYS, CalcInput, PoolEncap, RemoteRoute, RouteCalc, Workload, desired_routes, dst_key
from felix.metrics import count_route_kinds
from tests.unit.test_felix_calc_incremental import (
    GATEWAYS, IPS, POOLS, PREFIXES, changed_between, global_inputs, learned_routes, workloads,
)

# (True: added / False: removed, the item), in batches of one update each
batches = st.lists(st.lists(st.tuples(st.booleans(), st.one_of(workloads, learned_routes)),
                            max_size=12), max_size=6)


def apply_batch(calc: RouteCalc, inp: CalcInput, batch) -> tuple[set[int], CalcInput]:
    """One update of the batch's items (removals before additions, as ``update`` takes them),
    and the input it leads to."""
    def of(added: bool, kind: type) -> list:
        return [item for a, item in batch if a == added and isinstance(item, kind)]
    changed = calc.update(workloads_removed=of(False, Workload), learned_removed=of(False, RemoteRoute),
                          workloads_added=of(True, Workload), learned_added=of(True, RemoteRoute))
    return changed, replace(
        inp, workloads=(inp.workloads - set(of(False, Workload))) | set(of(True, Workload)),
        learned=(inp.learned - set(of(False, RemoteRoute))) | set(of(True, RemoteRoute)))


def assert_counts(calc: RouteCalc, routes) -> None:
    reasons = Counter(r.reason for r in routes.values())
    assert calc.reasons == reasons
    assert calc.learned_count == sum(n for why, n in reasons.items() if why.startswith("learned from"))
    kinds = count_route_kinds(calc.other_reasons.elements())
    kinds["learned"] += calc.learned_count
    assert kinds == count_route_kinds(reasons.elements())


def lone_calc(*learned: RemoteRoute, **changes) -> RouteCalc:
    calc = RouteCalc()
    calc.rebuild(replace(CalcInput(node="n1", pools=frozenset(POOLS), blocks=frozenset(),
                                   workloads=frozenset(), learned=frozenset(learned)), **changes))
    return calc


# A burst's bulk of lone routes beside the edge being tested, so that the bulk path has work.
BULK = [RemoteRoute(dst_key(f"10.245.{i}.0/24"), GATEWAYS[0], "p1") for i in range(1, 40)]


@settings(max_examples=300, deadline=None)
@given(global_inputs(), st.frozensets(workloads), st.frozensets(learned_routes), batches)
def test_batched_updates_equal_the_reference_and_report_exactly_what_changed(base, wls, lrs, bs):
    inp = replace(base, workloads=wls, learned=lrs)
    calc = RouteCalc()
    calc.rebuild(inp)
    assert_counts(calc, desired_routes(inp))
    for batch in bs:
        before = desired_routes(inp)
        changed, inp = apply_batch(calc, inp, batch)
        after = desired_routes(inp)
        assert changed == changed_between(before, after)
        assert dict(calc.desired) == dict(after)
        assert_counts(calc, after)
        keys = {dst_key(p) for p in PREFIXES} | {dst_key(f"{ip}/32") for ip in IPS}  # a set, as applies pass
        routes = calc.desired.routes(keys)
        assert len(routes) == len({r.key for r in routes})
        assert {r.key: r for r in routes} == {k: after[k] for k in keys if k in after}


def test_one_prefix_added_twice_in_one_update_keeps_both_vias():
    """The second via is a candidate too: withdrawing the winner leaves the other, not nothing."""
    key = dst_key(PREFIXES[0])
    one, two = RemoteRoute(key, GATEWAYS[0], "p1"), RemoteRoute(key, GATEWAYS[1], "p2")
    calc = lone_calc()
    assert calc.update(learned_added=[two, *BULK, one]) == {key} | {r.key for r in BULK}
    assert calc.desired[key].gateway == GATEWAYS[0]  # the lowest (gateway, source)
    assert calc.update(learned_removed=[one]) == {key}
    assert calc.desired[key].gateway == GATEWAYS[1]
    assert calc.learned_count == 1 + len(BULK)


def test_a_learned_route_at_a_local_workload_stays_a_candidate_under_it():
    w = Workload(IPS[0], "calia", "n1", "ns/x")
    key = dst_key(f"{w.ip}/32")
    route = RemoteRoute(key, GATEWAYS[0], "p1")
    calc = lone_calc(workloads=frozenset({w}))
    assert calc.update(learned_added=[route, *BULK]) == {r.key for r in BULK}
    assert calc.desired[key].dev == "calia"
    assert (calc.learned_count, calc.other_reasons) == (len(BULK), Counter({"local workload ns/x": 1}))
    assert calc.update(workloads_removed=[w]) == {key}
    assert calc.desired[key].gateway == GATEWAYS[0]
    assert calc.learned_count == len(BULK) + 1 and not calc.other_reasons


def test_withdrawing_a_via_that_does_not_win_changes_nothing_but_its_candidacy():
    key = dst_key(PREFIXES[0])
    one, two = RemoteRoute(key, GATEWAYS[0], "p1"), RemoteRoute(key, GATEWAYS[1], "p2")
    stranger = RemoteRoute(dst_key(PREFIXES[1]), GATEWAYS[1], "p2")  # its prefix goes via p1
    lone = RemoteRoute(stranger.key, GATEWAYS[0], "p1")
    calc = lone_calc(one, two, lone, *BULK)
    assert calc.update(learned_removed=[two, stranger]) == set()
    assert calc.desired[key].gateway == GATEWAYS[0] and calc.desired[lone.key].gateway == GATEWAYS[0]
    assert calc.update(learned_removed=[one, *BULK]) == {key} | {r.key for r in BULK}
    assert set(calc.desired) == {lone.key} and calc.learned_count == 1


def test_a_prefix_withdrawn_and_announced_again_in_one_bulk_update():
    """Same via: no change; another via: a change, and the new gateway."""
    route = RemoteRoute(dst_key(PREFIXES[0]), GATEWAYS[0], "p1")
    moved = RemoteRoute(route.key, GATEWAYS[1], "p1")
    calc = lone_calc(route, *BULK)
    assert calc.update(learned_removed=[route, *BULK], learned_added=[route, *BULK]) == set()
    assert calc.update(learned_removed=[route, *BULK[:5]], learned_added=[moved]) == (
        {route.key} | {r.key for r in BULK[:5]})
    assert calc.desired[route.key].gateway == GATEWAYS[1]
    assert calc.learned_count == 1 + len(BULK) - 5


def test_a_prefix_withdrawn_twice_and_announced_again_in_one_update_is_no_change():
    """The withdrawals go one by one (a prefix twice), the announcement in bulk."""
    route = RemoteRoute(dst_key(PREFIXES[0]), GATEWAYS[0], "p1")
    calc = lone_calc(route, *BULK)
    assert calc.update(learned_removed=[route, route, *BULK[:3]],
                       learned_added=[route, *BULK[:3]]) == set()
    assert calc.desired[route.key].gateway == GATEWAYS[0] and calc.learned_count == 1 + len(BULK)


def test_a_rebuild_between_bulk_updates_leaves_them_consistent():
    """Lone routes added in bulk, a rebuild that puts their pool in IPIP, then a bulk withdrawal of
    half: the rest carry the new tunnel, and the counts follow."""
    calc = lone_calc()
    inp = CalcInput(node="n1", pools=frozenset(POOLS), blocks=frozenset(), workloads=frozenset(),
                    learned=frozenset(BULK))
    calc.update(learned_added=BULK)
    ipip = replace(inp, encap=frozenset({PoolEncap(POOLS[1], ipip=ALWAYS)}))
    assert calc.rebuild(ipip) == {r.key for r in BULK}
    assert calc.update(learned_removed=BULK[::2]) == {r.key for r in BULK[::2]}
    expected = desired_routes(replace(ipip, learned=frozenset(BULK[1::2])))
    assert dict(calc.desired) == dict(expected)
    assert {r.key: r for r in calc.desired.routes(r.key for r in BULK)} == dict(expected)
    assert all(r.dev == "tunl0" for r in expected.values())
    assert_counts(calc, expected)
