"""calico-node's ``IP=autodetect`` with ``IP_AUTODETECTION_METHOD``: which IPv4 address is the node's.

``choose`` is purely computational (the addresses and a route lookup are given); ``detect`` reads
them from the kernel with pyroute2. Methods, as Calico's:

- ``first-found`` (default): the first global address on an interface Calico would not skip;
- ``interface=REGEX[,REGEX]``: the first address on an interface whose whole name matches;
- ``skip-interface=REGEX[,REGEX]``: first-found, also skipping those interfaces;
- ``cidr=CIDR[,CIDR]``: the first address inside one of the CIDRs;
- ``can-reach=DEST``: the source address the kernel would use towards DEST (an IP address).

>>> from ipaddress import IPv4Interface as I
>>> addrs = [("lo", I("127.0.0.1/8")), ("docker0", I("172.17.0.1/16")), ("eth0", I("10.0.0.5/24"))]
>>> choose("first-found", addrs)
IPv4Interface('10.0.0.5/24')
>>> choose("cidr=172.16.0.0/12", addrs)
IPv4Interface('172.17.0.1/16')
"""
from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Sequence
from ipaddress import IPv4Address, IPv4Interface

# Calico's default skip list for first-found (container bridges, tunnels, our own devices).
SKIPPED = [r"docker.*", r"cbr.*", r"dummy.*", r"virbr.*", r"lxcbr.*", r"veth.*", r"lo",
           r"cali.*", r"tunl.*", r"flannel.*", r"kube-ipvs.*", r"cni.*", r"vxlan\.calico.*",
           r"vxlan-v6\.calico.*", r"wireguard\.cali.*", r"wg-v6\.cali.*", r"nodelocaldns.*"]

Addresses = Sequence[tuple[str, IPv4Interface]]
RouteSource = Callable[[IPv4Address], IPv4Address | None]


class DetectionError(ValueError):
    """No address found, or a bad method: the message names IP_AUTODETECTION_METHOD."""


def choose(method: str, addrs: Addresses, route_source: RouteSource | None = None) -> IPv4Interface:
    kind, _, arg = method.strip().partition("=")
    usable = [(name, a) for name, a in addrs if not (a.ip.is_loopback or a.ip.is_link_local
                                                     or a.ip.is_multicast or a.ip.is_unspecified)]
    if kind == "first-found" and not arg:
        found = _first(usable, skip=SKIPPED)
    elif kind == "skip-interface" and arg:
        found = _first(usable, skip=SKIPPED + _patterns(method, arg))
    elif kind == "interface" and arg:
        wanted = _patterns(method, arg)
        found = next((a for name, a in usable if any(re.fullmatch(p, name) for p in wanted)), None)
    elif kind == "cidr" and arg:
        nets = _cidrs(method, arg)
        found = next((a for _, a in usable if any(a.ip in n for n in nets)), None)
    elif kind == "can-reach" and arg:
        found = _reaching(method, arg, usable, route_source)
    else:
        raise DetectionError(f"IP_AUTODETECTION_METHOD: {method!r} is not one of first-found, "
                             "interface=REGEX, skip-interface=REGEX, cidr=CIDR, can-reach=DEST")
    if found is None:
        raise DetectionError(f"IP_AUTODETECTION_METHOD: {method!r} matched no IPv4 address on this "
                             f"node (have: {', '.join(f'{n} {a}' for n, a in addrs) or 'none'})")
    return found


def _first(addrs: Addresses, skip: list[str]) -> IPv4Interface | None:
    return next((a for name, a in addrs if not any(re.fullmatch(p, name) for p in skip)), None)


def _patterns(method: str, arg: str) -> list[str]:
    patterns = [p.strip() for p in arg.split(",") if p.strip()]
    for p in patterns:
        try:
            re.compile(p)
        except re.error as exc:
            raise DetectionError(f"IP_AUTODETECTION_METHOD: {method!r}: bad regex {p!r}: {exc}") from None
    return patterns


def _cidrs(method: str, arg: str) -> list[ipaddress.IPv4Network]:
    try:
        return [ipaddress.IPv4Network(c.strip(), strict=False) for c in arg.split(",") if c.strip()]
    except ValueError as exc:
        raise DetectionError(f"IP_AUTODETECTION_METHOD: {method!r}: {exc}") from None


def _reaching(method: str, arg: str, addrs: Addresses,
              route_source: RouteSource | None) -> IPv4Interface | None:
    try:
        dest = IPv4Address(arg.strip())
    except ValueError:
        raise DetectionError(f"IP_AUTODETECTION_METHOD: {method!r}: can-reach needs an IPv4 "
                             "address") from None
    source = route_source(dest) if route_source is not None else None
    return next((a for _, a in addrs if a.ip == source), None)


def detect(method: str = "first-found") -> IPv4Interface:
    """The node's address by ``method``, read from this network namespace's kernel."""
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    with IPRoute() as ipr:
        names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
        addrs = [(names.get(a["index"], ""),
                  IPv4Interface(f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}"))
                 for a in ipr.get_addr(family=2) if a["scope"] == 0]

        def route_source(dest: IPv4Address) -> IPv4Address | None:
            try:
                [route] = ipr.route("get", dst=str(dest))
            except (NetlinkError, ValueError):
                return None
            src = route.get_attr("RTA_PREFSRC")
            return IPv4Address(src) if src else None

        return choose(method, addrs, route_source)
