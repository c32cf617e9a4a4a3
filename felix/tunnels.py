"""Tunnel devices of each encapsulation mode: ``vxlan.calico`` (with its neighbour and FDB entries)
and the kernel's ``tunl0``. Routes over them are someone else's (``felix.dataplane``).

Does kernel I/O (pyroute2 ``AsyncIPRoute``) in ``TunnelManager`` only; everything above it is pure:
``desired_vtep_entries`` (remote nodes -> wanted entries), ``plan_vxlan_device``, ``plan_vteps`` and
``plan_tunl0`` (kernel state read once + wanted state -> the list of netlink requests, ``Op``). An
empty plan is "in sync", so a second sync with the same input makes zero writes.

Rules, each from Felix's ``vxlan_mgr.go`` / ``ipip_mgr.go`` or from this kernel:

- Ownership is the exact device name, nothing else: ``vxlan.calico`` and ``tunl0``. Every neighbour
  and FDB entry we add, replace or delete is on ``vxlan.calico``; no request names another device.
- On ``vxlan.calico`` the permanent entries are all ours: one undesired is deleted. Entries the kernel
  makes itself (neighbour states other than permanent) are left to the kernel, which ages them out.
- VNI, UDP port, local IP, parent device and learning need a new device (the kernel refuses to
  change VNI and port in place: ``EOPNOTSUPP``); the device is deleted and re-created, which also
  drops its neighbours and FDB entries, and the same sync adds them back. MTU, MAC, up and the /32
  address are changed in place.
- ``tunl0`` is the fallback device of the ``ipip`` module and is never created: without it
  ``sync_ipip`` says so in ``TunnelResult.problem`` (for the status) instead of raising.
- The VTEP MAC, when the caller has none recorded, is ``vtep_mac_for(node)``: derived from the node
  name (sha256), locally administered unicast, so a re-created device or a restarted agent that lost
  its record gets the same MAC and remote nodes' FDB entries stay right.

Example (pure part)::

    >>> r = RemoteVtep("n2", "10.244.2.0", "66:00:00:00:00:02", "192.168.50.12")
    >>> [str(ip) for ip in desired_vtep_entries([r])]
    ['10.244.2.0']
    >>> [op.key for op in plan_vteps(desired_vtep_entries([r]), VtepState())]
    ['fdb 66:00:00:00:00:02', 'neigh 10.244.2.0']
    >>> tunnel_mtu(1500, VXLAN_OVERHEAD)
    1450
"""
from __future__ import annotations

import asyncio
import errno
import hashlib
import logging
import os
import re
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface

from pyroute2 import AsyncIPRoute
from pyroute2.netlink.exceptions import NetlinkError

__all__ = [
    "VXLAN_DEVICE", "IPIP_DEVICE", "VXLAN_OVERHEAD", "IPIP_OVERHEAD", "RemoteVtep", "VtepEntry",
    "VxlanConfig", "IpipConfig", "TunnelResult", "VtepState", "TunnelManager", "desired_vtep_entries",
    "vtep_mac_for", "tunnel_mtu", "plan_vxlan_device", "plan_vteps", "plan_tunl0",
]

log = logging.getLogger(__name__)

VXLAN_DEVICE = "vxlan.calico"
IPIP_DEVICE = "tunl0"
VXLAN_OVERHEAD = 50  # outer IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14
IPIP_OVERHEAD = 20  # outer IPv4
DEFAULT_VNI = 4096
DEFAULT_PORT = 4789
MIN_MTU = 68  # the smallest MTU IPv4 allows
NUD_NOARP, NUD_PERMANENT = 0x40, 0x80
NTF_SELF = 0x02
IFF_UP = 0x1
_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")


# -- validated inputs --------------------------------------------------------------------------

def _mac(value: str, name: str) -> str:
    """``value`` as lower-case colon form; ValueError naming ``name`` unless a unicast MAC."""
    text = str(value).strip().lower().replace("-", ":")
    if not _MAC.match(text):
        raise ValueError(f"{name}: {value!r} is not a MAC address (xx:xx:xx:xx:xx:xx)")
    if int(text[:2], 16) & 1 or text == "00:00:00:00:00:00":
        raise ValueError(f"{name}: {text} is multicast or zero, a VTEP needs a unicast MAC")
    return text


def _ipv4(value, name: str) -> IPv4Address:
    try:
        return IPv4Address(value)
    except ValueError as err:
        raise ValueError(f"{name}: {value!r} is not an IPv4 address") from err


def _in_range(value: int, low: int, high: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{name}: {value!r} is outside {low}..{high}")
    return value


def vtep_mac_for(node: str) -> str:
    """The node's VTEP MAC when none is recorded: stable per node name, locally administered
    (bit 1 of the first octet set) and unicast (bit 0 clear), so it never clashes with a vendor MAC.

    >>> vtep_mac_for("n1") == vtep_mac_for("n1") != vtep_mac_for("n2")
    True
    """
    if not node:
        raise ValueError("node: a node name is needed to derive its VTEP MAC")
    raw = bytearray(hashlib.sha256(b"pycalico vxlan.calico " + node.encode()).digest()[:6])
    raw[0] = (raw[0] & 0xFC) | 0x02
    return ":".join(f"{b:02x}" for b in raw)


def tunnel_mtu(parent_mtu: int, overhead: int, configured: int | None = None) -> int:
    """The configured MTU, or (``None``/0, Felix's "auto") the parent's minus the encapsulation."""
    mtu = configured if configured else parent_mtu - overhead
    if not MIN_MTU <= mtu <= 65535:
        source = "configured" if configured else f"parent MTU {parent_mtu} - {overhead}"
        raise ValueError(f"mtu: {mtu} ({source}) is outside {MIN_MTU}..65535")
    return mtu


@dataclass(frozen=True)
class RemoteVtep:
    """Another node's VTEP, as recorded on its Node (``ipv4VXLANTunnelAddr``, ``vxlanTunnelMACAddr``)."""

    node: str
    vtep_ip: IPv4Address
    vtep_mac: str
    node_ip: IPv4Address

    def __post_init__(self) -> None:
        if not self.node:
            raise ValueError("node: empty node name")
        object.__setattr__(self, "vtep_ip", _ipv4(self.vtep_ip, "vtep_ip"))
        object.__setattr__(self, "vtep_mac", _mac(self.vtep_mac, "vtep_mac"))
        object.__setattr__(self, "node_ip", _ipv4(self.node_ip, "node_ip"))


@dataclass(frozen=True)
class VtepEntry:
    """What one remote VTEP needs on ``vxlan.calico``: neighbour ``ip -> mac`` (permanent) and FDB
    ``mac -> dst node_ip`` (self permanent)."""

    ip: IPv4Address
    mac: str
    node_ip: IPv4Address
    node: str = ""


@dataclass(frozen=True)
class VxlanConfig:
    """This node's VXLAN device. ``vtep_mac`` None: ``vtep_mac_for(node)``; ``mtu`` None/0: parent
    MTU - 50; ``parent`` None: the device that holds ``node_ip``."""

    node: str
    node_ip: IPv4Address
    vtep_ip: IPv4Address
    vtep_mac: str | None = None
    vni: int = DEFAULT_VNI
    port: int = DEFAULT_PORT
    mtu: int | None = None
    parent: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "node_ip", _ipv4(self.node_ip, "node_ip"))
        object.__setattr__(self, "vtep_ip", _ipv4(self.vtep_ip, "vtep_ip"))
        mac = _mac(self.vtep_mac, "vtep_mac") if self.vtep_mac else vtep_mac_for(self.node)
        object.__setattr__(self, "vtep_mac", mac)
        _in_range(self.vni, 1, 2**24 - 1, "vni")
        _in_range(self.port, 1, 65535, "port")
        if self.mtu:
            _in_range(self.mtu, MIN_MTU, 65535, "mtu")


@dataclass(frozen=True)
class IpipConfig:
    """This node's ``tunl0``: the /32 tunnel address from IPAM; MTU as in ``VxlanConfig``."""

    tunnel_ip: IPv4Address
    node_ip: IPv4Address | None = None
    mtu: int | None = None
    parent: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "tunnel_ip", _ipv4(self.tunnel_ip, "tunnel_ip"))
        if self.node_ip is not None:
            object.__setattr__(self, "node_ip", _ipv4(self.node_ip, "node_ip"))
        if self.mtu:
            _in_range(self.mtu, MIN_MTU, 65535, "mtu")
        elif self.node_ip is None and self.parent is None:
            raise ValueError("mtu: neither an MTU nor a node_ip/parent to derive it from")


def desired_vtep_entries(remotes: Iterable[RemoteVtep]) -> dict[IPv4Address, VtepEntry]:
    """The entries ``vxlan.calico`` must hold, by VTEP IP. Pure; independent of input order.

    The set is rejected as a whole (ValueError naming the field) when two nodes claim one VTEP IP
    or one MAC, or one node appears twice with different values: either would make the kernel
    send one node's traffic to another.
    """
    by_node: dict[str, RemoteVtep] = {}
    for remote in remotes:
        if by_node.setdefault(remote.node, remote) != remote:
            raise ValueError(f"node: {remote.node} is listed twice with different VTEPs")
    entries: dict[IPv4Address, VtepEntry] = {}
    owner_of_mac: dict[str, str] = {}
    for node in sorted(by_node):
        r = by_node[node]
        if r.vtep_ip in entries:
            raise ValueError(f"vtep_ip: {r.vtep_ip} claimed by nodes {entries[r.vtep_ip].node} and {node}")
        if r.vtep_mac in owner_of_mac:
            raise ValueError(f"vtep_mac: {r.vtep_mac} claimed by nodes {owner_of_mac[r.vtep_mac]} and {node}")
        owner_of_mac[r.vtep_mac] = node
        entries[r.vtep_ip] = VtepEntry(r.vtep_ip, r.vtep_mac, r.node_ip, node)
    return entries


# -- kernel state (as read) and plans ----------------------------------------------------------

@dataclass(frozen=True)
class VxlanAttrs:
    vni: int | None
    port: int | None
    local: IPv4Address | None
    parent_index: int | None
    learning: bool


@dataclass(frozen=True)
class LinkState:
    index: int
    kind: str | None
    mtu: int
    mac: str
    up: bool
    addresses: frozenset[IPv4Interface] = frozenset()
    vxlan: VxlanAttrs | None = None


@dataclass(frozen=True)
class NeighEntry:
    ip: IPv4Address
    mac: str | None
    state: int


@dataclass(frozen=True)
class FdbEntry:
    mac: str
    dst: IPv4Address | None
    state: int
    port: int | None = None  # present only when not the device's default
    vni: int | None = None


@dataclass(frozen=True)
class VtepState:
    """Neighbour and FDB entries on ``vxlan.calico`` (empty when there is no such device)."""

    neighbours: tuple[NeighEntry, ...] = ()
    fdb: tuple[FdbEntry, ...] = ()

    def permanent(self) -> tuple[dict[IPv4Address, str | None], dict[str, list[IPv4Address | None]]]:
        """(neighbour ip -> mac, FDB mac -> dsts) of the permanent entries: for status and tests."""
        neigh = {n.ip: n.mac for n in self.neighbours if n.state & NUD_PERMANENT}
        fdb: dict[str, list[IPv4Address | None]] = {}
        for f in self.fdb:
            if f.state & NUD_PERMANENT:
                fdb.setdefault(f.mac, []).append(f.dst)
        return neigh, fdb


@dataclass(frozen=True)
class Op:
    """One netlink request: ``await ipr.<what>(command, **request(ifindex))``. ``key`` names the
    item for logs and ``TunnelResult.failed``; ``dev`` is the device whose index is filled in."""

    what: str
    command: str
    key: str
    dev: str
    args: tuple[tuple[str, object], ...] = ()

    def request(self, ifindex: int | None) -> dict:
        spec = dict(self.args)
        if ifindex is not None:
            spec["ifindex" if self.what in ("neigh", "fdb") else "index"] = ifindex
        return spec


def _device_ops(have: LinkState | None, dev: str, mtu: int, mac: str | None,
                address: IPv4Interface) -> list[Op]:
    """MTU/MAC/up in one ``link set``, then exactly ``address`` as the device's IPv4 address."""
    changes: list[tuple[str, object]] = []
    if have is None or have.mtu != mtu:
        changes.append(("mtu", mtu))
    if mac is not None and (have is None or have.mac != mac):
        changes.append(("address", mac))
    if have is None or not have.up:
        changes.append(("state", "up"))
    ops = [Op("link", "set", f"link {dev}", dev, tuple(changes))] if changes else []
    present = have.addresses if have is not None else frozenset()
    if address not in present:
        ops.append(Op("addr", "add", f"addr {address}", dev,
                      (("address", str(address.ip)), ("prefixlen", address.network.prefixlen))))
    for other in sorted(present - {address}):
        ops.append(Op("addr", "del", f"addr {other}", dev,
                      (("address", str(other.ip)), ("prefixlen", other.network.prefixlen))))
    return ops


def plan_vxlan_device(have: LinkState | None, config: VxlanConfig, parent_index: int, mtu: int) -> list[Op]:
    """Requests that make ``vxlan.calico`` match ``config`` (empty: in sync)."""
    want = VxlanAttrs(config.vni, config.port, config.node_ip, parent_index, False)
    ops = []
    if have is not None and (have.kind != "vxlan" or have.vxlan != want):
        ops.append(Op("link", "del", f"link {VXLAN_DEVICE} (recreate: {_why_recreate(have, want)})",
                      VXLAN_DEVICE))
        have = None
    if have is None:
        ops.append(Op("link", "add", f"link {VXLAN_DEVICE}", "", (
            ("ifname", VXLAN_DEVICE), ("kind", "vxlan"), ("vxlan_id", config.vni),
            ("vxlan_port", config.port), ("vxlan_local", str(config.node_ip)),
            ("vxlan_link", parent_index), ("vxlan_learning", 0),
            ("address", config.vtep_mac), ("mtu", mtu))))
        have = LinkState(0, "vxlan", mtu, config.vtep_mac, False)
    return ops + _device_ops(have, VXLAN_DEVICE, mtu, config.vtep_mac, IPv4Interface(f"{config.vtep_ip}/32"))


def _why_recreate(have: LinkState, want: VxlanAttrs) -> str:
    if have.kind != "vxlan" or have.vxlan is None:
        return f"kind {have.kind}"
    return ", ".join(f"{name} {getattr(have.vxlan, name)} -> {getattr(want, name)}"
                     for name in ("vni", "port", "local", "parent_index", "learning")
                     if getattr(have.vxlan, name) != getattr(want, name))


def plan_tunl0(have: LinkState, config: IpipConfig, mtu: int) -> list[Op]:
    """Requests that make the existing ``tunl0`` up, with ``mtu`` and only the /32 tunnel address."""
    return _device_ops(have, IPIP_DEVICE, mtu, None, IPv4Interface(f"{config.tunnel_ip}/32"))


def plan_vteps(desired: Mapping[IPv4Address, VtepEntry], have: VtepState) -> list[Op]:
    """Deletes first, then FDB replaces, then neighbour replaces (empty: in sync)."""
    dev = VXLAN_DEVICE
    deletes, fdb_writes, neigh_writes = [], [], []
    neigh = {n.ip: n for n in have.neighbours}
    for ip, entry in sorted(desired.items()):
        cur = neigh.get(ip)
        if cur is None or cur.mac != entry.mac or not cur.state & NUD_PERMANENT:
            neigh_writes.append(Op("neigh", "replace", f"neigh {ip}", dev, (
                ("dst", str(ip)), ("lladdr", entry.mac), ("state", NUD_PERMANENT))))
    for ip, cur in sorted(neigh.items()):
        if ip not in desired and cur.state & NUD_PERMANENT:
            deletes.append(Op("neigh", "del", f"neigh {ip}", dev, (("dst", str(ip)),)))
    want_fdb = {e.mac: e.node_ip for e in desired.values()}
    rows: dict[str, list[FdbEntry]] = {}
    for f in have.fdb:
        if f.state & NUD_PERMANENT:
            rows.setdefault(f.mac, []).append(f)
    for mac, node_ip in sorted(want_fdb.items()):
        current = rows.get(mac, [])
        good = [f for f in current if _fdb_good(f, node_ip)]
        if len(current) > 1:  # several remotes for one unicast MAC: keep only a right one
            deletes += [_fdb_del(f) for f in current if f not in good[:1]]
        if not good or len(current) == 1 and current != good:
            fdb_writes.append(Op("fdb", "replace", f"fdb {mac}", dev, (
                ("lladdr", mac), ("dst", str(node_ip)), ("flags", NTF_SELF),
                ("state", NUD_PERMANENT | NUD_NOARP))))
    for mac in sorted(rows.keys() - want_fdb.keys()):
        deletes += [_fdb_del(f) for f in rows[mac]]
    return deletes + fdb_writes + neigh_writes


def _fdb_good(f: FdbEntry, node_ip: IPv4Address) -> bool:
    return f.dst == node_ip and f.port is None and f.vni is None


def _fdb_del(f: FdbEntry) -> Op:
    args = (("lladdr", f.mac),) + ((("dst", str(f.dst)),) if f.dst is not None else ())
    return Op("fdb", "del", f"fdb {f.mac} dst {f.dst}", VXLAN_DEVICE, args)


@dataclass
class TunnelResult:
    """What one sync did. ``problem``: the device could not be made right (nothing further was
    tried; show it in status, retry later); ``failed``: entries that failed, the rest went on."""

    writes: int = 0
    failed: dict[str, str] = field(default_factory=dict)
    problem: str | None = None
    mac: str | None = None  # VXLAN: the VTEP MAC in use, to record as the Node's vxlanTunnelMACAddr

    @property
    def ok(self) -> bool:
        return self.problem is None and not self.failed


class TunnelError(Exception):
    """A tunnel device cannot be made right now (no parent device, no kernel support, ...)."""


# -- the manager (kernel I/O) ------------------------------------------------------------------

class TunnelManager:
    """Keeps ``vxlan.calico`` / ``tunl0`` of one network namespace as desired.

    ``netns`` given: work inside that named namespace (tests, the lab). ``None``: the current one.
    ``writes`` counts successful netlink writes, cumulatively: an idle agent must not move it.
    """

    def __init__(self, *, netns: str | None = None) -> None:
        self.netns = netns
        self._ipr: AsyncIPRoute | None = None
        self._lock = asyncio.Lock()
        self.writes = 0

    async def open(self) -> None:
        # flags=0: never create a namespace by accident (pyroute2's default is O_CREAT).
        self._ipr = AsyncIPRoute(netns=self.netns, flags=0) if self.netns else AsyncIPRoute()
        await self._ipr.setup_endpoint()

    async def close(self) -> None:
        if self._ipr is not None:
            self._ipr.close()
            self._ipr = None

    async def __aenter__(self) -> TunnelManager:
        await self.open()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    # -- VXLAN ---------------------------------------------------------------------------------

    async def sync_vxlan(self, config: VxlanConfig, desired: Mapping[IPv4Address, VtepEntry]) -> TunnelResult:
        """Make ``vxlan.calico`` and its entries match; ``desired`` from ``desired_vtep_entries``."""
        async with self._lock:
            result = TunnelResult(mac=config.vtep_mac)
            try:
                ops = await self._vxlan_device_plan(config)
            except TunnelError as err:
                result.problem = str(err)
                return result
            if not await self._apply(ops, result, stop_on_error=True):
                return result
            desired = self._without_own_vtep(config, desired, result)
            await self._apply(plan_vteps(desired, await self._vtep_state()), result)
            return result

    async def remove_vxlan(self) -> bool:
        """Delete ``vxlan.calico`` (no pool uses VXLAN any more); False when it was not there."""
        async with self._lock:
            have = await self._link(VXLAN_DEVICE)
            if have is None:
                return False
            try:
                await self._ipr.link("del", index=have.index)
            except NetlinkError as err:
                if err.code == errno.ENODEV:  # deleted meanwhile: the goal is met
                    return False
                raise
            self.writes += 1
            log.info("deleted tunnel device", extra={"dev": VXLAN_DEVICE})
            return True

    async def vtep_state(self) -> VtepState:
        """The neighbour and FDB entries on ``vxlan.calico`` now (for status and drift checks)."""
        async with self._lock:
            return await self._vtep_state()

    async def in_sync(self, desired: Mapping[IPv4Address, VtepEntry], config: VxlanConfig | None = None) -> bool:
        """True when no neighbour/FDB write is needed (and, with ``config``, no device write)."""
        async with self._lock:
            if config is not None:
                try:
                    if await self._vxlan_device_plan(config):
                        return False
                except TunnelError:
                    return False
            return not plan_vteps(desired, await self._vtep_state())

    async def _vxlan_device_plan(self, config: VxlanConfig) -> list[Op]:
        parent = await self._parent(config.parent, config.node_ip)
        mtu = _checked_mtu(parent.mtu, VXLAN_OVERHEAD, config.mtu)
        return plan_vxlan_device(await self._link(VXLAN_DEVICE), config, parent.index, mtu)

    @staticmethod
    def _without_own_vtep(config: VxlanConfig, desired, result: TunnelResult) -> dict:
        kept = {}
        for ip, entry in desired.items():
            if ip == config.vtep_ip or entry.mac == config.vtep_mac:
                result.failed[f"neigh {ip}"] = f"node {entry.node} claims our own VTEP IP or MAC"
            else:
                kept[ip] = entry
        return kept

    async def _vtep_state(self) -> VtepState:
        have = await self._link(VXLAN_DEVICE)
        if have is None:
            return VtepState()
        neighbours = tuple([
            NeighEntry(IPv4Address(m.get("dst")), m.get("lladdr"), m["state"])
            async for m in await self._ipr.neigh("dump", family=socket.AF_INET)
            if m["ifindex"] == have.index and m.get("dst")])
        fdb = tuple([
            FdbEntry(m.get("lladdr"), _ip_or_none(m.get("dst")), m["state"], m.get("NDA_PORT"), m.get("NDA_VNI"))
            async for m in await self._ipr.fdb("dump")
            if m["ifindex"] == have.index and m["flags"] & NTF_SELF and m.get("lladdr")])
        return VtepState(neighbours, fdb)

    # -- IPIP ----------------------------------------------------------------------------------

    async def sync_ipip(self, config: IpipConfig) -> TunnelResult:
        """Make the kernel's ``tunl0`` up, with its MTU and the /32 tunnel address. Never creates
        it: without the ``ipip`` module ``problem`` says the kernel has no ipip support."""
        async with self._lock:
            result = TunnelResult()
            try:
                ops = await self._tunl0_plan(config)
            except TunnelError as err:
                result.problem = str(err)
                return result
            await self._apply(ops, result, stop_on_error=True)
            return result

    async def remove_ipip(self) -> int:
        """Take the tunnel addresses off ``tunl0`` (it cannot be deleted: the module owns it)."""
        async with self._lock:
            have = await self._link(IPIP_DEVICE)
            if have is None or have.kind != "ipip":
                return 0
            ops = [Op("addr", "del", f"addr {a}", IPIP_DEVICE,
                      (("address", str(a.ip)), ("prefixlen", a.network.prefixlen)))
                   for a in sorted(have.addresses)]
            result = TunnelResult()
            await self._apply(ops, result)
            return result.writes

    async def _tunl0_plan(self, config: IpipConfig) -> list[Op]:
        have = await self._link(IPIP_DEVICE)
        if have is None:
            raise TunnelError(f"the kernel has no ipip support: {IPIP_DEVICE} does not exist "
                              f"({_ipip_module_hint()}); IPIP pools cannot work on this node")
        if have.kind != "ipip":
            raise TunnelError(f"{IPIP_DEVICE} is a {have.kind} device, not the kernel's ipip "
                              "fallback device; left alone")
        if config.mtu:
            mtu = config.mtu
        else:
            parent = await self._parent(config.parent, config.node_ip)
            mtu = _checked_mtu(parent.mtu, IPIP_OVERHEAD, None)
        return plan_tunl0(have, config, mtu)

    # -- reading and writing -------------------------------------------------------------------

    async def _link(self, name: str) -> LinkState | None:
        try:
            msg = (await self._ipr.link("get", ifname=name))[0]
        except NetlinkError as err:
            if err.code == errno.ENODEV:
                return None
            raise
        addresses = frozenset([
            IPv4Interface(f"{a.get('address')}/{a['prefixlen']}")
            async for a in await self._ipr.addr("dump", family=socket.AF_INET) if a["index"] == msg["index"]])
        return _link_state(msg, addresses)

    async def _parent(self, name: str | None, node_ip: IPv4Address | None) -> LinkState:
        if name is not None:
            found = await self._link(name)
            if found is None:
                raise TunnelError(f"parent device {name} does not exist")
            return found
        async for a in await self._ipr.addr("dump", family=socket.AF_INET):
            if a.get("address") == str(node_ip):
                msg = (await self._ipr.link("get", index=a["index"]))[0]
                return _link_state(msg, frozenset())
        raise TunnelError(f"no device holds the node IP {node_ip}: cannot choose the tunnel's parent")

    async def _apply(self, ops: list[Op], result: TunnelResult, *, stop_on_error: bool = False) -> bool:
        """Run ``ops`` in order; a failed entry is recorded and the rest go on (a failed device
        request with ``stop_on_error`` ends the run: what follows depends on it)."""
        indexes: dict[str, int] = {}
        for op in ops:
            try:
                await self._run(op, indexes)
            except NetlinkError as err:
                if op.command == "del" and err.code in (errno.ENOENT, errno.ESRCH, errno.ENODEV):
                    continue  # already gone: the goal is met
                reason = _describe(err)
                if stop_on_error:
                    result.problem = f"{op.key}: {reason}"
                    log.warning("tunnel device not programmed: %s", result.problem)
                    return False
                result.failed[op.key] = reason
                log.warning("tunnel entry not programmed: %s: %s", op.key, reason)
                continue
            result.writes += 1
            self.writes += 1
            log.debug("tunnel write", extra={"op": op.key, "command": op.command})
        return True

    async def _run(self, op: Op, indexes: dict[str, int]) -> None:
        if op.what == "link" and op.command in ("add", "del"):
            indexes.clear()  # an index read before is stale now
        ifindex = None
        if op.dev:
            if op.dev not in indexes:
                indexes[op.dev] = (await self._ipr.link("get", ifname=op.dev))[0]["index"]
            ifindex = indexes[op.dev]
        await getattr(self._ipr, op.what)(op.command, **op.request(ifindex))


def _describe(err: NetlinkError) -> str:
    name = errno.errorcode.get(err.code, str(err.code))
    return f"{name}: {err.args[1]}" if len(err.args) > 1 else name


def _checked_mtu(parent_mtu: int, overhead: int, configured: int | None) -> int:
    try:
        return tunnel_mtu(parent_mtu, overhead, configured)
    except ValueError as err:
        raise TunnelError(str(err)) from None


def _link_state(msg, addresses: frozenset[IPv4Interface]) -> LinkState:
    info = msg.get("IFLA_LINKINFO")
    kind = info.get("IFLA_INFO_KIND") if info is not None else None
    vxlan = None
    if kind == "vxlan":
        data = info.get("IFLA_INFO_DATA")
        local = data.get("IFLA_VXLAN_LOCAL")
        vxlan = VxlanAttrs(data.get("IFLA_VXLAN_ID"), data.get("IFLA_VXLAN_PORT"),
                           IPv4Address(local) if local else None, data.get("IFLA_VXLAN_LINK"),
                           bool(data.get("IFLA_VXLAN_LEARNING")))
    return LinkState(msg["index"], kind, msg.get("mtu"), msg.get("address"),
                     bool(msg["flags"] & IFF_UP), addresses, vxlan)


def _ip_or_none(value) -> IPv4Address | None:
    return IPv4Address(value) if value else None


def _ipip_module_hint() -> str:
    if os.path.isdir("/sys/module/ipip"):
        return "the ipip module is loaded but gives this namespace no tunl0 (net.core.fb_tunnels_only_for_init_net?)"
    return "the ipip module is not loaded and tunl0 is never created here; load it with 'modprobe ipip'"
