"""felix.calc's destination keys (``address << 8 | prefix length``): the one int per destination
that every desired map, ``RouteTable.apply`` and ``felix.rtnl`` use, and its conversions."""
from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

import pytest
from hypothesis import given
from hypothesis import strategies as st

from felix import rtnl
from felix.calc import (
    DesiredRoute, RemoteRoute, desired_routes, dst_key, key_network, key_text, network_key,
)

networks = st.builds(
    lambda address, plen: IPv4Network((address, plen), strict=False),
    st.integers(0, 2**32 - 1), st.integers(0, 32))


@given(networks)
def test_round_trip_at_every_prefix_length(net):
    key = dst_key(net)
    assert key_network(key) == net
    assert key_text(key) == str(net) and dst_key(str(net)) == key
    assert network_key(int(net.network_address), net.prefixlen) == key
    assert key == rtnl.route_key(int(net.network_address), net.prefixlen)
    assert rtnl.key_parts(key) == (int(net.network_address), net.prefixlen)


@given(networks, networks)
def test_keys_sort_as_the_networks_do(a, b):
    assert (dst_key(a) < dst_key(b)) == (a < b)
    assert (dst_key(a) == dst_key(b)) == (a == b)


@given(st.integers(0, 2**32 - 1), st.integers(0, 31))
def test_host_bits_are_rejected_in_text_and_integers_and_normalised_from_a_network(address, plen):
    host_bits = address & (0xFFFFFFFF >> plen)
    net = IPv4Network((address, plen), strict=False)  # what calc is given: already a network
    assert dst_key(net) == (address - host_bits) << 8 | plen
    if host_bits:
        text = f"{IPv4Address(address)}/{plen}"
        with pytest.raises(ValueError, match="host bits set"):
            dst_key(text)
        with pytest.raises(ValueError, match="host bits set"):
            network_key(address, plen)
        with pytest.raises(ValueError, match="not a valid key"):
            DesiredRoute(address << 8 | plen, "blackhole", None, None, "universe", "x")


@pytest.mark.parametrize("address, plen", [(0, 33), (-1, 8), (2**32, 0)])
def test_out_of_range_is_rejected(address, plen):
    with pytest.raises(ValueError, match="out of range"):
        network_key(address, plen)


def test_a_bad_route_names_itself_and_why():
    with pytest.raises(ValueError, match=r"bad route 10\.0\.0\.0/8: type='local'"):
        DesiredRoute(dst_key("10.0.0.0/8"), "local", None, None, "link", "x")
    with pytest.raises(ValueError, match="prefix length above 32"):
        DesiredRoute(10 << 32 | 33, "unicast", None, None, "link", "x")
    with pytest.raises(TypeError, match=r"IPv4Network\('10\.0\.0\.0/8'\): want an int key"):
        DesiredRoute(IPv4Network("10.0.0.0/8"), "unicast", None, None, "link", "x")
    with pytest.raises(ValueError, match="not a valid key"):
        DesiredRoute(-1, "unicast", None, None, "link", "x")
    with pytest.raises(ValueError, match="not a valid key"):
        DesiredRoute(1 << 40, "unicast", None, None, "link", "x")
    with pytest.raises(TypeError, match="learned route destination"):
        RemoteRoute(IPv4Network("10.0.0.0/8"), IPv4Address("10.1.0.1"), "peer")


def test_routes_show_their_destination_as_a_network():
    route = DesiredRoute(dst_key("10.244.1.0/26"), "blackhole", None, None, "universe", "b")
    learned = RemoteRoute(dst_key("10.244.2.0/26"), IPv4Address("10.1.0.1"), "peer")
    assert (route.dst, learned.prefix) == (IPv4Network("10.244.1.0/26"), IPv4Network("10.244.2.0/26"))


def test_the_calculation_builds_no_network_per_route():
    """Its result holds keys and routes only: an ``IPv4Network`` per route was ~260 bytes of the
    100k-route footprint."""
    from felix.calc import Block, CalcInput, Workload

    inp = CalcInput(node="n1", pools=frozenset({IPv4Network("10.244.0.0/16")}),
                    blocks=frozenset({Block(IPv4Network("10.244.1.0/26"), "n1")}),
                    workloads=frozenset({Workload(IPv4Address("10.244.1.5"), "cali1", "n1", "p")}),
                    learned=frozenset({RemoteRoute(dst_key("10.244.2.0/26"), IPv4Address("10.0.0.2"),
                                                   "n2")}))
    routes = desired_routes(inp)
    assert all(type(k) is int and type(r.key) is int for k, r in routes.items())
    assert [key_text(k) for k in routes] == ["10.244.1.0/26", "10.244.1.5/32", "10.244.2.0/26"]
