"""Borrowed addresses (issue 8 item 5; CALICO-REFERENCE "Known Calico defects" 4): an address of
node Y's block allocated to a workload on node X.

1. X keeps its local ``/32 dev cali…`` and advertises the /32 (``cluster.export_prefixes``);
2. Y routes it to X from the datastore, directly or through the pool's tunnel;
3. every other node Z takes X's /32 from BGP (from the datastore in VXLAN pools / without BGP);
   Y keeps the datastore's route (BGP's copy, if its import policy takes it from X, loses to it);
4. never a blackhole for a /32 block or a borrowed /32.
The incremental ``RouteCalc`` equals ``desired_routes`` throughout.
"""
from __future__ import annotations

import random
from dataclasses import replace
from ipaddress import IPv4Address, IPv4Interface, IPv4Network

from hypothesis import given, settings
from hypothesis import strategies as st

from bgp.rib import Rib
from felix.calc import (
    ALWAYS, CROSS_SUBNET, IPIP_DEV, NEVER, VXLAN_DEV, Block, Borrowed, CalcInput, Host, PoolEncap,
    RemoteRoute, RouteCalc, Workload, desired_routes, dst_key, in_own_block, key_network, unroutable,
)

N, A = IPv4Network, IPv4Address
POOL = N("10.244.0.0/16")
BLOCK_Y = N("10.244.1.0/26")  # n1's (Y) block
BLOCK_X = N("10.244.2.0/26")  # n2's (X) block, full: X borrowed 10.244.1.5 from Y
IP = A("10.244.1.5")
DST = N(IP)
HOSTS = frozenset({
    Host("n1", IPv4Interface("10.99.0.1/24"), A("10.244.9.1"), "66:00:00:00:00:01"),
    Host("n2", IPv4Interface("10.99.0.2/24"), A("10.244.9.2"), "66:00:00:00:00:02"),
    Host("n3", IPv4Interface("10.99.1.3/24"), A("10.244.9.3"), "66:00:00:00:00:03"),
})
WORKLOAD = Workload(IP, "cali0123456789a", "n2", "default/borrower")


def inp(node: str, *, learned=(), encap=NEVER, ipip=NEVER, bgp=True, hosts=HOSTS,
        blocks=frozenset({Block(BLOCK_Y, "n1"), Block(BLOCK_X, "n2")})) -> CalcInput:
    return CalcInput(node=node, pools=frozenset({POOL}), blocks=blocks,
                     workloads=frozenset({WORKLOAD}), learned=frozenset(learned),
                     encap=frozenset({PoolEncap(POOL, ipip=ipip, vxlan=encap)}), hosts=hosts,
                     bgp=bgp, borrowed=frozenset({Borrowed(IP, "n2")}))


def via_rib(i: CalcInput) -> CalcInput:
    """``i`` with its learned routes as the agent passes them: what ``bgp.rib``, the one import
    filter, configured with the same pools and own blocks, keeps of them."""
    rib = Rib()
    rib.set_import_filter(i.pools, frozenset(b.cidr for b in i.blocks if b.node == i.node))
    for r in i.learned:
        rib.announce(r.gateway, r.prefix, r.gateway)
    return replace(i, learned=frozenset(RemoteRoute(dst_key(b.prefix), b.nexthop, str(b.peer))
                                        for b in rib.best()))


def routes(i: CalcInput):
    """``desired_routes``, checked against a rebuilt ``RouteCalc`` on the way; by ``IPv4Network``
    (``key_network`` of each key) for the assertions."""
    out = desired_routes(i)
    calc = RouteCalc()
    calc.rebuild(i)
    assert dict(calc.desired) == dict(out)
    return {key_network(k): route for k, route in out.items()}


FROM_X = RemoteRoute(dst_key(DST), A("10.99.0.2"), "10.99.0.2")
FROM_Y = RemoteRoute(dst_key(BLOCK_Y), A("10.99.0.1"), "10.99.0.1")


def test_the_holder_keeps_its_local_route():
    r = routes(inp("n2", learned=[FROM_Y]))
    assert r[DST].dev == "cali0123456789a" and r[DST].scope == "link"
    assert r[BLOCK_X].type == "blackhole" and r[BLOCK_Y].gateway == A("10.99.0.1")


def test_the_owner_routes_the_borrowed_address_to_the_holder_not_into_its_blackhole():
    r = routes(inp("n1", learned=[FROM_X]))  # BGP's copy too: the import filter drops it
    assert r[BLOCK_Y].type == "blackhole"
    assert (r[DST].type, r[DST].gateway, r[DST].dev) == ("unicast", A("10.99.0.2"), None)
    assert r[DST].reason == "direct to n2 (borrowed from our block)"


def test_the_owner_uses_the_pools_tunnel():
    ipip = routes(inp("n1", ipip=ALWAYS))[DST]
    assert (ipip.gateway, ipip.dev, ipip.onlink) == (A("10.99.0.2"), IPIP_DEV, True)
    vxlan = routes(inp("n1", encap=ALWAYS))[DST]
    assert (vxlan.gateway, vxlan.dev, vxlan.onlink) == (A("10.244.9.2"), VXLAN_DEV, True)
    same_subnet = routes(inp("n1", encap=CROSS_SUBNET))[DST]
    assert (same_subnet.gateway, same_subnet.dev) == (A("10.99.0.2"), None)


def test_the_owner_without_the_holders_address_has_no_route_and_says_why():
    i = inp("n1", hosts=frozenset(h for h in HOSTS if h.name != "n2"))
    assert DST not in routes(i)
    assert unroutable(i)[DST] == "node n2 has no IPv4 address yet"


def test_other_nodes_learn_the_slash32_over_bgp():
    r = routes(inp("n3", learned=[FROM_X, FROM_Y]))
    assert (r[DST].gateway, r[DST].reason) == (A("10.99.0.2"), "learned from 10.99.0.2")
    assert r[BLOCK_Y].gateway == A("10.99.0.1")
    assert DST not in routes(inp("n3", learned=[FROM_Y]))  # from the datastore: not in BGP pools


def test_other_nodes_route_it_from_the_datastore_in_vxlan_pools_and_without_bgp():
    vxlan = routes(inp("n3", encap=ALWAYS, learned=[FROM_X]))[DST]
    assert (vxlan.gateway, vxlan.dev, vxlan.reason) == (A("10.244.9.2"), VXLAN_DEV,
                                                         "vxlan to n2 (borrowed)")
    direct = routes(inp("n3", bgp=False))[DST]
    assert (direct.gateway, direct.dev) == (A("10.99.0.2"), None)


def test_a_slash32_block_and_a_borrowed_slash32_never_get_a_blackhole():
    tiny = N("10.244.3.7/32")
    i = inp("n1", blocks=frozenset({Block(BLOCK_Y, "n1"), Block(tiny, "n1")}))
    r = routes(i)
    assert tiny not in r and r[DST].type == "unicast"


def test_the_import_filter_and_the_datastore_slash32_follow_one_rule():
    """Rule 3: what the owner drops from BGP (calc's filter, and the RIB's the agent configures
    with the same blocks) is exactly what it routes from the datastore."""
    own = frozenset({BLOCK_Y})
    rib = Rib()
    rib.set_import_filter(frozenset({POOL}), own)
    for prefix in (DST, BLOCK_Y, N("10.244.2.9/32"), N("10.244.1.0/25"), N("10.244.1.64/32")):
        assert in_own_block(prefix, own) == (rib.rejection(prefix) == "rejected_own_block")
    r = routes(inp("n1", learned=[FROM_X]))
    assert in_own_block(DST, own) and r[DST].reason.endswith("(borrowed from our block)")
    assert not in_own_block(DST, frozenset({BLOCK_X}))


# -- properties -----------------------------------------------------------------------------------

NODES = ["n1", "n2", "n3"]
IPS = [A(a) for a in ("10.244.1.5", "10.244.1.9", "10.244.2.7", "10.244.3.7", "10.98.0.1")]
BLOCKS = [N(c) for c in ("10.244.1.0/26", "10.244.2.0/26", "10.244.3.7/32", "10.244.1.0/30")]
MODES = st.sampled_from([NEVER, ALWAYS, CROSS_SUBNET])


@st.composite
def inputs(draw) -> CalcInput:
    vxlan = draw(MODES)
    return CalcInput(
        node="n1", pools=frozenset({POOL}),
        blocks=draw(st.frozensets(st.builds(Block, st.sampled_from(BLOCKS), st.sampled_from(NODES)),
                                  max_size=4)),
        workloads=draw(st.frozensets(st.builds(Workload, st.sampled_from(IPS), st.just("calia"),
                                               st.sampled_from(NODES), st.just("ns/w")), max_size=3)),
        learned=draw(st.frozensets(st.builds(RemoteRoute, st.sampled_from([dst_key(N(i)) for i in IPS] + list(map(dst_key, BLOCKS))),
                                             st.sampled_from([A("10.99.0.2"), A("10.99.0.3")]),
                                             st.just("peer")), max_size=4)),
        encap=frozenset({PoolEncap(POOL, ipip=draw(MODES) if vxlan == NEVER else NEVER, vxlan=vxlan)}),
        hosts=frozenset(draw(st.lists(st.sampled_from(sorted(HOSTS, key=lambda h: h.name)),
                                      unique=True))),
        bgp=draw(st.booleans()),
        borrowed=draw(st.frozensets(st.builds(Borrowed, st.sampled_from(IPS), st.sampled_from(NODES)),
                                    max_size=4)))


@settings(max_examples=300, deadline=None)
@given(inputs())
def test_never_a_blackhole_on_a_slash32_and_the_owner_always_routes_what_it_lent(i):
    i = via_rib(i)
    r = routes(i)
    assert not [d for d, route in r.items() if route.type == "blackhole" and d.prefixlen == 32]
    own = [b.cidr for b in i.blocks if b.node == i.node]
    local = {w.ip for w in i.workloads if w.node == i.node}
    holders = {}
    for b in i.borrowed:
        holders.setdefault(b.ip, set()).add(b.node)
    for ip, nodes in holders.items():
        dst, others = N(ip), nodes - {i.node}
        if ip in local or not others or not in_own_block(dst, own):
            continue  # our own workload's route wins, or not ours to route from the datastore
        holder = min(others)  # two holders of one address: a datastore error, decided by value
        if any(h.name == holder for h in i.hosts) and ip in POOL:
            assert r[dst].type == "unicast" and f"to {holder} " in r[dst].reason
            assert "borrowed from our block" in r[dst].reason
        else:
            assert dst not in r or r[dst].type == "unicast"
    for d, route in r.items():  # nothing learned inside our own blocks, ever
        assert not (route.reason.startswith("learned") and in_own_block(d, own))


@settings(max_examples=200, deadline=None)
@given(inputs(), st.randoms(use_true_random=False))
def test_order_independent_and_the_incremental_calc_agrees(i, rnd: random.Random):
    """The same input built in any order, and reached by updates from a rebuild without its
    workloads and learned routes, gives one result: ``desired_routes``'."""
    expected = dict(desired_routes(i))
    items = list(i.borrowed)
    rnd.shuffle(items)
    assert dict(desired_routes(CalcInput(**{**i.__dict__, "borrowed": frozenset(items)}))) == expected
    calc = RouteCalc()
    calc.rebuild(CalcInput(**{**i.__dict__, "workloads": frozenset(), "learned": frozenset()}))
    events = [("w", w) for w in i.workloads] + [("l", r) for r in i.learned]
    rnd.shuffle(events)
    for kind, item in events:
        calc.update(**{"workloads_added" if kind == "w" else "learned_added": [item]})
    assert dict(calc.desired) == expected
    assert calc.problems == unroutable(i)
