"""felix.calc: routes per encapsulation mode (IPIP, VXLAN, CrossSubnet, no BGP), order-independent."""
from __future__ import annotations

from ipaddress import IPv4Address, IPv4Interface, IPv4Network

from hypothesis import given, settings
from hypothesis import strategies as st

from felix.calc import (
    ALWAYS, CROSS_SUBNET, IPIP_DEV, NEVER, VXLAN_DEV, Block, CalcInput, Host, PoolEncap,
    RemoteRoute, desired_routes, dst_key, key_text, unroutable,
)

N, A, I, K = IPv4Network, IPv4Address, IPv4Interface, dst_key
POOL = N("10.244.0.0/16")
ME = Host("n1", I("192.168.1.11/24"), A("10.244.1.0"), "66:00:00:00:00:01")
NEAR = Host("n2", I("192.168.1.12/24"), A("10.244.2.0"), "66:00:00:00:00:02")  # our subnet
FAR = Host("n3", I("192.168.2.13/24"), A("10.244.3.0"), "66:00:00:00:00:03")  # behind a router
BLOCKS = [Block(N("10.244.1.0/26"), "n1"), Block(N("10.244.2.0/26"), "n2"),
          Block(N("10.244.3.0/26"), "n3")]
LEARNED = [RemoteRoute(K("10.244.2.0/26"), A("192.168.1.12"), "n2"),
           RemoteRoute(K("10.244.3.0/26"), A("192.168.2.13"), "n3")]


def inp(*, ipip=NEVER, vxlan=NEVER, hosts=(ME, NEAR, FAR), bgp=True, learned=LEARNED, blocks=BLOCKS):
    return CalcInput(node="n1", pools=frozenset({POOL}), blocks=frozenset(blocks),
                     workloads=frozenset(), learned=frozenset(learned) if bgp else frozenset(),
                     encap=frozenset({PoolEncap(POOL, ipip, vxlan)}), hosts=frozenset(hosts), bgp=bgp)


def remote(routes):
    """{dst: (gateway, dev, onlink)} of the two remote blocks."""
    return {key_text(k): (str(r.gateway), r.dev, r.onlink) for k, r in routes.items() if r.gateway}


def test_no_encapsulation_routes_come_from_bgp_as_before():
    assert remote(desired_routes(inp())) == {
        "10.244.2.0/26": ("192.168.1.12", None, False), "10.244.3.0/26": ("192.168.2.13", None, False)}


def test_ipip_always_and_crosssubnet():
    assert remote(desired_routes(inp(ipip=ALWAYS))) == {
        "10.244.2.0/26": ("192.168.1.12", IPIP_DEV, True), "10.244.3.0/26": ("192.168.2.13", IPIP_DEV, True)}
    assert remote(desired_routes(inp(ipip=CROSS_SUBNET))) == {
        "10.244.2.0/26": ("192.168.1.12", None, False), "10.244.3.0/26": ("192.168.2.13", IPIP_DEV, True)}


def test_vxlan_always_routes_every_remote_block_to_its_vtep_from_affinities_not_bgp():
    routes = desired_routes(inp(vxlan=ALWAYS, learned=[]))  # no BGP route at all: still routed
    assert remote(routes) == {
        "10.244.2.0/26": ("10.244.2.0", VXLAN_DEV, True), "10.244.3.0/26": ("10.244.3.0", VXLAN_DEV, True)}
    assert routes[K("10.244.2.0/26")].reason == "vxlan to n2"
    assert desired_routes(inp(vxlan=ALWAYS)) == routes  # learned routes in a VXLAN pool are ignored


def test_vxlan_crosssubnet_is_direct_inside_our_subnet_and_tunnelled_outside():
    assert remote(desired_routes(inp(vxlan=CROSS_SUBNET))) == {
        "10.244.2.0/26": ("192.168.1.12", None, False), "10.244.3.0/26": ("10.244.3.0", VXLAN_DEV, True)}


def test_a_node_without_a_vtep_keeps_its_bgp_route_or_gets_none_and_the_reason_is_told():
    """Regression (live switch to VXLAN lost packets): until a node has its VTEP, its block keeps
    the learned route; with none learned it gets no route, never a broken one."""
    bare = Host("n3", I("192.168.2.13/24"))
    i = inp(vxlan=ALWAYS, hosts=(ME, NEAR, bare))
    assert remote(desired_routes(i))["10.244.3.0/26"] == ("192.168.2.13", None, False)
    assert K("10.244.3.0/26") not in desired_routes(inp(vxlan=ALWAYS, hosts=(ME, NEAR, bare), learned=[]))
    assert unroutable(i) == {N("10.244.3.0/26"): "node n3 has no VXLAN tunnel address and MAC yet"}
    assert unroutable(inp(vxlan=ALWAYS)) == {}


def test_without_bgp_blocks_are_routed_directly_from_affinities():
    assert remote(desired_routes(inp(bgp=False))) == {
        "10.244.2.0/26": ("192.168.1.12", None, False), "10.244.3.0/26": ("192.168.2.13", None, False)}
    assert remote(desired_routes(inp(bgp=False, ipip=CROSS_SUBNET)))["10.244.3.0/26"] == (
        "192.168.2.13", IPIP_DEV, True)


def test_own_block_is_never_routed_away_and_blocks_outside_pools_are_ignored():
    stray = Block(N("10.9.0.0/26"), "n2")
    routes = desired_routes(inp(vxlan=ALWAYS, blocks=[*BLOCKS, stray]))
    assert routes[K("10.244.1.0/26")].type == "blackhole" and K("10.9.0.0/26") not in routes


MODES = st.sampled_from([NEVER, ALWAYS, CROSS_SUBNET])


@settings(max_examples=150, deadline=None)
@given(ipip=MODES, vxlan=MODES, bgp=st.booleans(), data=st.data())
def test_any_order_of_the_same_inputs_gives_the_same_routes(ipip, vxlan, bgp, data):
    if ipip != NEVER and vxlan != NEVER:
        vxlan = NEVER  # a pool cannot have both (crds rejects it)
    hosts = data.draw(st.permutations([ME, NEAR, FAR]))
    blocks = data.draw(st.permutations(BLOCKS))
    first = desired_routes(inp(ipip=ipip, vxlan=vxlan, bgp=bgp))
    again = desired_routes(inp(ipip=ipip, vxlan=vxlan, bgp=bgp, hosts=hosts, blocks=blocks))
    assert first == again
    for route in first.values():  # a tunnel route is always onlink, and only a tunnel route
        assert route.onlink == (route.dev in (IPIP_DEV, VXLAN_DEV))
