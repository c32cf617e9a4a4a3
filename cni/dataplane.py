"""The pod's plumbing, Calico style, through pyroute2 (sync IPRoute: one short-lived process).

Host side (the node's namespace, where the plugin runs): ``cali<11 hex>`` with MAC ee:ee:ee:ee:ee:ee,
proxy_arp=1, neigh proxy_delay=0, forwarding=1, up; no address and no route (felix owns the /32).
Pod side: ``eth0`` with the /32, up, ``169.254.1.1 dev eth0 scope link`` then ``default via
169.254.1.1 dev eth0``; lo up. Both ends start with unique temporary names so nothing collides while
they exist; the pod end is created directly inside the pod's namespace.
``wired_pod`` tells a pair that is already complete (a repeated ADD keeps it, same ifindex) from one
that is missing or half made (wired again: ``wire_pod`` replaces a stale host end, and deleting a
veth end takes its peer along).
"""
from __future__ import annotations

import errno
import ipaddress
import logging
import os
import secrets
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl.ifinfmsg import IFF_UP

import hostio
from cni.errors import DATAPLANE_FAILURE, UNKNOWN_CONTAINER, CNIError

log = logging.getLogger(__name__)

HOST_MAC = "ee:ee:ee:ee:ee:ee"
GATEWAY = "169.254.1.1"
_HOST_SYSCTLS = (
    ("net/ipv4/conf/{}/proxy_arp", "1"),
    ("net/ipv4/neigh/{}/proxy_delay", "0"),
    ("net/ipv4/conf/{}/forwarding", "1"),
)


@dataclass(frozen=True)
class Wired:
    host_ifname: str
    host_mac: str
    pod_ifname: str
    pod_mac: str


def wire_pod(host_ifname: str, netns: str, pod_ifname: str, address: ipaddress.IPv4Address,
             mtu: int | None = None) -> Wired:
    """Create and configure the veth pair (both ends ``mtu`` when given). On failure, removes
    whatever it created, then raises."""
    if not os.path.exists(netns):
        raise CNIError(UNKNOWN_CONTAINER, f"network namespace {netns} does not exist")
    tmp_host, tmp_pod = f"pch{secrets.token_hex(5)}", f"pcp{secrets.token_hex(5)}"
    with _netlink("create the veth pair"), IPRoute() as host:
        _remove_stale(host, host_ifname)
        mtu_attr = {"mtu": mtu} if mtu else {}
        host.link("add", ifname=tmp_host, kind="veth", **mtu_attr,
                  peer={"ifname": tmp_pod, "net_ns_fd": netns, **mtu_attr})
        try:
            host_mac = _configure_host(host, tmp_host, host_ifname)
            pod_mac = _configure_pod(netns, tmp_pod, pod_ifname, address)
        except BaseException:
            _delete_link(host, tmp_host) or _delete_link(host, host_ifname)
            raise
    return Wired(host_ifname, host_mac, pod_ifname, pod_mac)


def wired_pod(host_ifname: str, netns: str, pod_ifname: str,
              address: ipaddress.IPv4Address) -> Wired | None:
    """The pair exactly as ``wire_pod`` leaves it, or None if anything is missing or differs."""
    if not os.path.exists(netns):
        return None
    with _netlink("read the veth pair"), IPRoute() as host:
        idx = _index(host, host_ifname)
        link = None if idx is None else host.get_links(idx)[0]
        if link is None or not _host_side_ok(link, host_ifname):
            return None
        with _in_netns(netns) as pod:
            pod_mac = _pod_side_mac(pod, pod_ifname, address, idx, link.get_attr("IFLA_LINK"))
    return None if pod_mac is None else Wired(host_ifname, HOST_MAC, pod_ifname, pod_mac)


def unwire_pod(netns: str | None, pod_ifname: str, host_ifname: str | None) -> None:
    """Remove the pair: from the pod end when the namespace exists, else by the host name. Idempotent."""
    with _netlink("delete the veth pair"):
        if netns and os.path.exists(netns):
            with _in_netns(netns) as pod:
                _delete_link(pod, pod_ifname)
        if host_ifname:
            with IPRoute() as host:
                _delete_link(host, host_ifname)


def pod_state(netns: str, pod_ifname: str) -> tuple[list[str], str | None]:
    """(IPv4 addresses on the pod interface in CIDR form, its MAC) — for CHECK and tests."""
    with _netlink("read the pod interface"), _in_netns(netns) as pod:
        idx = _index(pod, pod_ifname)
        if idx is None:
            return [], None
        addrs = [f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}" for a in pod.get_addr(family=socket.AF_INET, index=idx)]
        return addrs, pod.get_links(idx)[0].get_attr("IFLA_ADDRESS")


def host_link_exists(host_ifname: str) -> bool:
    with _netlink("read the host interface"), IPRoute() as host:
        return _index(host, host_ifname) is not None


def _configure_host(host: IPRoute, tmp: str, final: str) -> str:
    idx = _index(host, tmp)
    host.link("set", index=idx, ifname=final, address=HOST_MAC)
    for path, value in _HOST_SYSCTLS:
        _write_sysctl(path.format(final), value)
    host.link("set", index=idx, state="up")
    return HOST_MAC


def _configure_pod(netns: str, tmp: str, ifname: str, address: ipaddress.IPv4Address) -> str:
    with _in_netns(netns) as pod:
        idx = _index(pod, tmp)
        if idx is None:
            raise CNIError(DATAPLANE_FAILURE, f"veth end {tmp} did not appear in {netns}")
        pod.link("set", index=idx, ifname=ifname)
        pod.addr("add", index=idx, address=str(address), prefixlen=32)
        pod.link("set", index=idx, state="up")
        pod.link("set", index=_index(pod, "lo"), state="up")
        pod.route("add", dst=f"{GATEWAY}/32", oif=idx, scope="link", proto="boot")
        pod.route("add", dst="0.0.0.0/0", gateway=GATEWAY, oif=idx, proto="boot")
        return pod.get_links(idx)[0].get_attr("IFLA_ADDRESS")


def _host_side_ok(link, ifname: str) -> bool:
    info = link.get_attr("IFLA_LINKINFO")
    return (info is not None and info.get_attr("IFLA_INFO_KIND") == "veth"
            and link.get_attr("IFLA_ADDRESS") == HOST_MAC and bool(link["flags"] & IFF_UP)
            and all(_read_sysctl(path.format(ifname)) == value for path, value in _HOST_SYSCTLS))


def _pod_side_mac(pod: IPRoute, ifname: str, address: ipaddress.IPv4Address, host_idx: int,
                  peer_idx: int | None) -> str | None:
    """The pod end's MAC if it is the host end's peer, up, with only ``address``/32 and both routes."""
    idx = _index(pod, ifname)
    if idx is None or idx != peer_idx:  # no interface, or someone else's (not our host end's peer)
        return None
    link = pod.get_links(idx)[0]
    addrs = [(a.get_attr("IFA_ADDRESS"), a["prefixlen"])
             for a in pod.get_addr(family=socket.AF_INET, index=idx)]
    routes = {(r.get_attr("RTA_DST"), r["dst_len"], r.get_attr("RTA_GATEWAY"))
              for r in pod.get_routes(family=socket.AF_INET, table=254, oif=idx)}
    lo = pod.get_links(_index(pod, "lo"))[0]
    complete = (link.get_attr("IFLA_LINK") == host_idx and bool(link["flags"] & IFF_UP)
                and bool(lo["flags"] & IFF_UP) and addrs == [(str(address), 32)]
                and {(GATEWAY, 32, None), (None, 0, GATEWAY)} <= routes)
    return link.get_attr("IFLA_ADDRESS") if complete else None


def _remove_stale(host: IPRoute, host_ifname: str) -> None:
    # Same pod name, earlier sandbox whose DEL never came: Calico replaces it too.
    if _delete_link(host, host_ifname):
        log.warning("removed stale host interface %s", host_ifname)


def _delete_link(ipr: IPRoute, ifname: str) -> bool:
    idx = _index(ipr, ifname)
    if idx is None:
        return False
    try:
        ipr.link("del", index=idx)
    except NetlinkError as exc:
        if exc.code != errno.ENODEV:  # gone meanwhile (its peer's deletion took it along)
            raise
    return True


def _index(ipr: IPRoute, ifname: str) -> int | None:
    found = ipr.link_lookup(ifname=ifname)
    return found[0] if found else None


def _read_sysctl(path: str) -> str | None:
    try:
        with open(f"/proc/sys/{path}") as f:
            return f.read().strip()
    except FileNotFoundError:
        return None


def _write_sysctl(path: str, value: str) -> None:
    with open(f"/proc/sys/{path}", "w") as f:
        f.write(value)


@contextmanager
def _in_netns(netns: str) -> Iterator[IPRoute]:
    """A netlink socket inside the pod's namespace, opened by this thread entering it and coming
    back (hostio.netns_entered). Not pyroute2's IPRoute(netns=...): that forks a helper, and in
    the agent the helper's SIGTERM was taken for the agent's own (it inherits asyncio's signal
    wakeup fd), so the agent shut down after its first ADD. Also faster: no fork per socket."""
    with hostio.netns_entered(netns):
        ipr = IPRoute()
    with ipr:
        yield ipr


@contextmanager
def _netlink(what: str) -> Iterator[None]:
    try:
        yield
    except (NetlinkError, OSError) as exc:
        raise CNIError(DATAPLANE_FAILURE, f"failed to {what}", str(exc)) from None
