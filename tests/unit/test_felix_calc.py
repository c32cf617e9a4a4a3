"""felix.calc: Calico's route rules, and order independence."""
from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bgp.rib import Rib
from felix.calc import (Block, CalcInput, DesiredRoute, RemoteRoute, Workload, desired_routes, dst_key,
                        key_network)

N = IPv4Network
K = dst_key
A = IPv4Address
POOL = N("10.244.0.0/16")


def calc(*, node="n1", pools=(POOL,), blocks=(), workloads=(), learned=()):
    return desired_routes(
        CalcInput(node=node, pools=frozenset(pools), blocks=frozenset(blocks),
                  workloads=frozenset(workloads), learned=frozenset(learned))
    )


def test_local_workload_gets_a_link_scope_host_route():
    routes = calc(workloads=[Workload(A("10.244.1.5"), "cali0123456789a", "n1", "default/web")])
    assert dict(routes) == {
        K("10.244.1.5/32"): DesiredRoute(
            key=K("10.244.1.5/32"), type="unicast", dev="cali0123456789a", gateway=None,
            scope="link", reason="local workload default/web",
        )
    }


def test_workloads_of_other_nodes_produce_nothing():
    assert dict(calc(workloads=[Workload(A("10.244.2.5"), "cali0123456789b", "n2", "x")])) == {}


def test_local_block_gets_a_blackhole_other_nodes_blocks_do_not():
    routes = calc(blocks=[Block(N("10.244.1.0/26"), "n1"), Block(N("10.244.2.0/26"), "n2")])
    assert list(routes) == [K("10.244.1.0/26")]
    route = routes[K("10.244.1.0/26")]
    assert (route.type, route.dev, route.gateway, route.scope, route.reason) == (
        "blackhole", None, None, "universe", "local block")


def test_no_blackhole_for_a_slash32_block():
    assert dict(calc(blocks=[Block(N("10.244.1.7/32"), "n1")])) == {}


def test_learned_route_via_gateway_without_dev():
    routes = calc(learned=[RemoteRoute(K("10.244.2.0/26"), A("192.168.5.2"), "192.168.5.2")])
    route = routes[K("10.244.2.0/26")]
    assert (route.type, route.dev, route.gateway, route.scope, route.reason) == (
        "unicast", None, A("192.168.5.2"), "universe", "learned from 192.168.5.2")


def through_rib(prefix: str, own=()) -> list[RemoteRoute]:
    """What reaches the calculation of a route a peer sent: bgp.rib is the one import filter."""
    rib = Rib()
    rib.set_import_filter(frozenset({POOL}), frozenset(own))
    rib.announce(A("192.168.5.2"), N(prefix), A("192.168.5.2"))
    return [RemoteRoute(K(r.prefix), r.nexthop, "peer") for r in rib.best()]


@pytest.mark.parametrize("prefix", ["10.244.1.0/26", "10.244.1.8/29", "10.244.1.9/32"])
def test_learned_prefix_equal_to_or_inside_own_block_is_ignored(prefix):
    routes = calc(blocks=[Block(N("10.244.1.0/26"), "n1")],
                  learned=through_rib(prefix, own=[N("10.244.1.0/26")]))
    assert list(routes) == [K("10.244.1.0/26")]
    assert routes[K("10.244.1.0/26")].type == "blackhole"


def test_learned_prefix_inside_another_nodes_block_is_kept():
    routes = calc(blocks=[Block(N("10.244.2.0/26"), "n2")],
                  learned=[RemoteRoute(K("10.244.2.0/26"), A("192.168.5.2"), "peer")])
    assert routes[K("10.244.2.0/26")].gateway == A("192.168.5.2")


@pytest.mark.parametrize("prefix", ["0.0.0.0/0", "10.0.0.0/8", "172.16.0.0/26"])
def test_learned_route_outside_every_pool_is_ignored(prefix):
    assert dict(calc(learned=through_rib(prefix))) == {}


def test_local_workload_beats_learned_route_on_same_dst():
    routes = calc(workloads=[Workload(A("10.244.9.1"), "cali0123456789a", "n1", "borrowed")],
                  learned=[RemoteRoute(K("10.244.9.1/32"), A("192.168.5.2"), "peer")])
    assert routes[K("10.244.9.1/32")].dev == "cali0123456789a"


def test_conflicts_resolved_by_value():
    routes = calc(
        workloads=[Workload(A("10.244.1.5"), "calib", "n1", "b"), Workload(A("10.244.1.5"), "calia", "n1", "a")],
        learned=[RemoteRoute(K("10.244.2.0/26"), A("192.168.5.9"), "p9"),
                 RemoteRoute(K("10.244.2.0/26"), A("192.168.5.3"), "p3")],
    )
    assert routes[K("10.244.1.5/32")].dev == "calia"
    assert routes[K("10.244.2.0/26")].gateway == A("192.168.5.3")


def test_result_is_read_only():
    routes = calc(blocks=[Block(N("10.244.1.0/26"), "n1")])
    with pytest.raises(TypeError):
        routes[K("10.244.3.0/26")] = routes[K("10.244.1.0/26")]  # type: ignore[index]


def test_bad_route_shape_is_rejected():
    with pytest.raises(ValueError):
        DesiredRoute(key=K("10.0.0.0/8"), type="local", dev=None, gateway=None, scope="link", reason="x")


# -- order independence ----------------------------------------------------------------------
# A small domain so that collisions (same ip, same prefix, block vs learned) are frequent.

nodes = st.sampled_from(["n1", "n2"])
ips = st.integers(0, 127).map(lambda i: A("10.244.1.0") + i)
prefixes = st.builds(
    lambda base, plen: N(f"{base}/{plen}", strict=False),
    st.sampled_from(["10.244.1.0", "10.244.1.64", "10.244.2.0", "10.245.0.0"]),
    st.sampled_from([24, 26, 28, 32]),
)
gateways = st.sampled_from([A("192.168.5.2"), A("192.168.5.3")])
workloads = st.builds(Workload, ips, st.sampled_from(["calia", "calib"]), nodes, st.sampled_from(["p", "q"]))
blocks = st.builds(Block, prefixes, nodes)
learned = st.builds(RemoteRoute, prefixes.map(K), gateways, st.sampled_from(["peer-a", "peer-b"]))


def build(items, pools):
    return CalcInput(
        node="n1", pools=frozenset(pools),
        blocks=frozenset(i for i in items if isinstance(i, Block)),
        workloads=frozenset(i for i in items if isinstance(i, Workload)),
        learned=frozenset(i for i in items if isinstance(i, RemoteRoute)),
    )


@settings(max_examples=300, deadline=None)
@given(
    items=st.lists(st.one_of(workloads, blocks, learned), max_size=25),
    pools=st.lists(st.sampled_from([POOL, N("10.245.0.0/16")]), min_size=1, max_size=2),
    perm=st.randoms(use_true_random=False),
)
def test_order_and_duplicates_do_not_matter(items, pools, perm):
    shuffled = items + items[: len(items) // 2]
    perm.shuffle(shuffled)
    first = desired_routes(build(items, pools))
    second = desired_routes(build(list(reversed(shuffled)), list(reversed(pools))))
    assert dict(first) == dict(second)
    assert list(map(key_network, first)) == sorted(map(key_network, first))  # network order, too
    for key, route in first.items():
        assert key == route.key
        assert not (route.type == "blackhole" and route.dst.prefixlen == 32)


def test_learned_routes_of_one_peer_share_their_reason_string():
    """One string per (pool, gateway, peer), not per route: 100k learned routes held 100k copies."""
    learned = [RemoteRoute(K(N((int(A("10.244.2.0")) + 64 * i, 26))), A(f"192.168.5.{2 + i % 2}"),
                           f"peer-{i % 2}") for i in range(40)]
    routes = calc(learned=learned)
    assert len(routes) == 40
    assert len({id(r.reason) for r in routes.values()}) == 2
    assert {r.reason for r in routes.values()} == {"learned from peer-0", "learned from peer-1"}
