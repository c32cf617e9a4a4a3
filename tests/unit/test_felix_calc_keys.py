"""felix.calc's destination keys (``prefix length << 32 | address``): the one int per destination
that every desired map, ``RouteTable.apply`` and ``felix.rtnl`` use, and its conversions."""
from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

import pytest
from hypothesis import given
from hypothesis import strategies as st

from felix import rtnl
from felix.calc import (
    HOST, DesiredRoute, RemoteRoute, desired_routes, dst_key, key_network, key_text, network_key,
    network_order,
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
def test_network_order_sorts_keys_as_the_networks_sort(a, b):
    assert (network_order(dst_key(a)) < network_order(dst_key(b))) == (a < b)
    assert (dst_key(a) == dst_key(b)) == (a == b)


@given(st.integers(0, 2**26 - 1))
def test_the_low_bits_of_a_key_are_its_address(block):
    """What a dict or set indexes by (an int hashes to itself; a table of 2**k slots starts at
    its low k bits): the address, so that consecutive blocks of one length differ there."""
    key = dst_key(IPv4Network((block << 6, 26)))
    assert (key & 0xFFFFFFFF, key >> 32) == (block << 6, 26)
    assert dst_key(f"{IPv4Address(block)}/32") == block | HOST


def test_consecutive_blocks_differ_in_the_low_bits_a_dict_indexes_by():
    """100k consecutive /26 keys take 2**11 values in their low 17 bits (a 2**17-slot table's
    first probe): every address bit above the host bits (with the length in the low 8 bits they
    would take 8, and chains of ~12k keys)."""
    keys = [dst_key(IPv4Network((0x0A000000 + 64 * i, 26))) for i in range(100_000)]
    assert len({k & (2**17 - 1) for k in keys}) == 2**11


@given(st.integers(0, 2**32 - 1), st.integers(0, 31))
def test_host_bits_are_rejected_in_text_and_integers_and_normalised_from_a_network(address, plen):
    host_bits = address & (0xFFFFFFFF >> plen)
    net = IPv4Network((address, plen), strict=False)  # what calc is given: already a network
    assert dst_key(net) == plen << 32 | (address - host_bits)
    if host_bits:
        text = f"{IPv4Address(address)}/{plen}"
        with pytest.raises(ValueError, match="host bits set"):
            dst_key(text)
        with pytest.raises(ValueError, match="host bits set"):
            network_key(address, plen)
        with pytest.raises(ValueError, match="not a valid key"):
            DesiredRoute(plen << 32 | address, "blackhole", None, None, "universe", "x")


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


@pytest.mark.parametrize("name", ["felix", "felix.calc", "felix.rtnl", "bgp.protocol", "bgp.policy"])
def test_the_key_helpers_docstrings_run(name):
    """The modules that hold the key layout: their examples pin it (and ``network_order``)."""
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(name))
    assert result.attempted and not result.failed
