"""The agent's learning chain in bulk: ``Rib.take_change_columns`` -> ``cluster.learned_pairs``
-> ``RouteCalc.update`` (its ``_lone_added`` / ``_lone_removed`` bulk paths), against the
calculation of the RIB's whole answer (``desired_routes`` of ``rib.best()``). The RIB is driven by
the UPDATEs of ``test_bgp_rib_bulk`` (repeats, rejected prefixes, origin validation, graceful
restart, peers going down, pool changes), and local workloads come and go at prefixes the peers
also announce (a borrowed /32 in another node's block, an address of our own block)."""
from __future__ import annotations

from dataclasses import replace
from ipaddress import IPv4Address as A, IPv4Network as N

from hypothesis import given, settings
from hypothesis import strategies as st

from bgp import protocol as p
from felix import cluster
from felix.calc import (ALWAYS, Block, CalcInput, PoolEncap, RouteCalc, Workload, desired_routes,
                        network_order)
from tests.unit.test_bgp_rib_bulk import ORIGINS, OWN, PEERS, POOL, POOL2, Clock, make, operations

WORKLOADS = [Workload(A("10.244.2.5"), "cali0000000001", "n1", "borrowed"),  # in n2's block
             Workload(A("10.244.1.7"), "cali0000000002", "n1", "own"),
             Workload(A("10.244.3.9"), "cali0000000003", "n1", "other")]
BASE = CalcInput(node="n1", pools=frozenset({POOL, POOL2}),
                 blocks=frozenset({Block(OWN, "n1"), Block(N("10.244.2.0/26"), "n2"),
                                   Block(N("10.244.3.0/26"), "n3")}),
                 workloads=frozenset(), learned=frozenset())

steps = st.lists(st.one_of(
    operations.map(lambda ops: ("rib", ops)),
    st.tuples(st.just("workloads"), st.sets(st.sampled_from(WORKLOADS))),
    # the pools changed: the agent starts again (the second pool IPIP Always or not)
    st.tuples(st.just("rebuild"), st.booleans(), st.booleans()),
), max_size=8)


@settings(max_examples=300, deadline=None)
@given(steps)
def test_learned_changes_applied_in_bulk_give_the_calculation_of_the_whole_rib(steps):
    clock = Clock()
    rib = make(clock, None)
    calc, workloads, base = RouteCalc(), frozenset(), BASE
    calc.rebuild(replace(base, learned=cluster.remote_routes(rib.best())))
    rib.take_change_columns()
    for kind, *arg in steps:
        arg = arg if kind == "rebuild" else arg[0]
        if kind == "rebuild":  # as the agent's rebuild: the change record starts again here
            wide, ipip = arg
            base = replace(BASE, pools=frozenset({POOL, POOL2} if wide else {POOL}),
                           encap=frozenset({PoolEncap(POOL2, ipip=ALWAYS)} if ipip else ()))
            rib.take_change_columns()
            calc.rebuild(replace(base, workloads=workloads, learned=cluster.remote_routes(rib.best())))
            continue
        if kind == "workloads":
            gone, came = workloads - arg, arg - workloads
            workloads = frozenset(arg)
            removed, added = cluster.learned_pairs(rib.take_change_columns())
            calc.update(workloads_removed=gone, learned_removed=removed,
                        workloads_added=came, learned_added=added)
            continue
        for op in arg:  # a burst: many RIB events, then one calculation update
            match op:
                case ("announce", peer, nexthop, ps, *via):
                    rib.apply(p.RoutesAnnounced(peer, nexthop, tuple(map(p.prefix_key, ps)),
                                                *(via or [(None, ())])[0]))
                case ("withdraw", peer, ps):
                    rib.apply(p.RoutesWithdrawn(peer, tuple(map(p.prefix_key, ps))))
                case ("down", peer):
                    rib.apply(p.PeerStateChanged(peer, "down"))
                case ("eor", peer):
                    rib.apply(p.EndOfRib(peer, p.IPV4_UNICAST))
                case ("tick", seconds):
                    clock.now += seconds
                    rib.expire()
                case ("origins", i):
                    rib.set_origins(*(ORIGINS[i] or (None, {})))
                case ("current", current):
                    rib.set_origins_current(current)
                case ("pools", wide):
                    rib.set_import_filter(frozenset({POOL, POOL2} if wide else {POOL}), frozenset({OWN}))
        before = dict(calc.desired)
        removed, added = cluster.learned_pairs(rib.take_change_columns())
        changed = calc.update(learned_removed=removed, learned_added=added)
        want = desired_routes(replace(base, workloads=workloads,
                                      learned=cluster.remote_routes(rib.best())))
        assert dict(calc.desired) == dict(want)
        assert sorted(calc.desired.routes(list(want)), key=lambda r: network_order(r.key)) == list(want.values())
        assert changed == {k for k in before.keys() | want.keys() if before.get(k) != want.get(k)}
    assert calc.learned_count == sum(1 for r in calc.desired.values() if r.reason.startswith("learned"))
