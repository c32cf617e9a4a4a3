"""calico-node's IP_AUTODETECTION_METHOD, on given addresses (no kernel)."""
from ipaddress import IPv4Address as A, IPv4Interface as I

import pytest

from felix.autodetect import DetectionError, choose

ADDRS = [("lo", I("127.0.0.1/8")), ("docker0", I("172.17.0.1/16")), ("cali0123456789a", I("10.244.0.1/32")),
         ("eth0", I("10.0.0.5/24")), ("ens5", I("192.168.40.180/24")), ("eth1", I("100.64.3.4/10"))]


@pytest.mark.parametrize("method,want", [
    ("first-found", "10.0.0.5/24"),
    ("interface=ens.*", "192.168.40.180/24"),
    ("interface=eth1,ens5", "192.168.40.180/24"),
    ("skip-interface=eth0", "192.168.40.180/24"),
    ("cidr=192.168.0.0/16", "192.168.40.180/24"),
    ("cidr=100.64.0.0/10", "100.64.3.4/10"),  # shared address space is a node address too
])
def test_methods(method, want):
    assert choose(method, ADDRS) == I(want)


def test_can_reach_uses_the_kernels_source_address():
    assert choose("can-reach=8.8.8.8", ADDRS, lambda dest: A("192.168.40.180")) == I("192.168.40.180/24")


@pytest.mark.parametrize("method,words", [
    ("interface=wlan.*", "matched no IPv4 address"),
    ("cidr=172.30.0.0/16", "matched no IPv4 address"),
    ("can-reach=example.com", "needs an IPv4 address"),
    ("bogus", "is not one of"),
    ("interface=(", "bad regex"),
    ("cidr=10.0.0.0/33", "10.0.0.0/33"),
])
def test_a_method_that_finds_nothing_names_itself(method, words):
    with pytest.raises(DetectionError, match="IP_AUTODETECTION_METHOD") as err:
        choose(method, ADDRS, lambda dest: None)
    assert words in str(err.value)
