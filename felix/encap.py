"""The node's tunnels and NAT, brought to match the pools: ``Encap.apply`` runs in every reconcile,
before the routes (the routes of a VXLAN pool go ``dev vxlan.calico onlink``, so the device must
be there first).

Does I/O: IPAM and Node writes through the datastore (in a worker thread: the datastore is
synchronous), ``felix.tunnels`` (netlink) and ``felix.nat`` (nft). Decisions are pure and live in
``felix.calc`` (which routes), ``felix.tunnels`` (what to write) and ``felix.nat`` (the ruleset).

- VXLAN (any pool with ``vxlanMode`` other than Never): this node's VTEP address comes from IPAM
  under the handle ``vxlan-tunnel-addr-<node>`` (an address of one of the node's blocks in a VXLAN
  pool, as Calico does), its MAC is the one on the Node or ``tunnels.vtep_mac_for(node)`` (stable
  across re-creations); both are recorded on the Node (``ipv4VXLANTunnelAddr``,
  ``vxlanTunnelMACAddr``), which is how other nodes learn them. Every other node with a VTEP gets
  a permanent neighbour and FDB entry. No VXLAN pool any more: the device is removed, the address
  released and the Node's fields cleared, but only ``TEARDOWN_GRACE`` seconds after the last VXLAN
  pool went: other nodes switch at their own pace and may still send us VXLAN packets meanwhile
  (removing it at once lost packets in a live switch from VXLAN to direct routing).
- IPIP: the same with ``ipip-tunnel-addr-<node>`` and the Node's ``bgp.ipv4IPIPTunnelAddr``;
  ``tunl0`` is the kernel's, never created: where the kernel has no ipip, that is a problem
  reported in status, not a crash.
- NAT: ``table ip pycalico`` masquerades natOutgoing pools' traffic leaving all pools.
Every problem is reported (``EncapResult.problems``) and retried on the next reconcile.
"""
from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface

from crds import IPPool, Node
from crds.models import NodeBGPSpec
from datastore.base import Conflict, Datastore, NotFound
from felix import cluster, tunnels
from felix.calc import NEVER
from felix.nat import NatTable, NftError
from ipam.allocator import IPAM
from ipam.errors import IPAMError

log = logging.getLogger(__name__)

VXLAN_HANDLE, IPIP_HANDLE = "vxlan-tunnel-addr-{node}", "ipip-tunnel-addr-{node}"
TEARDOWN_GRACE = 10.0  # seconds a tunnel no pool uses stays up: the other nodes are switching too


@dataclass
class EncapResult:
    problems: dict[str, str] = field(default_factory=dict)  # "vxlan" | "ipip" | "nat" -> why
    writes: int = 0
    recheck_after: float | None = None  # a tunnel waits out its teardown grace: apply again then


class Encap:
    def __init__(self, ds: Datastore, node: str, *, netns: str | None = None,
                 teardown_grace: float = TEARDOWN_GRACE,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ds, self.node = ds, node
        self._grace, self._clock = teardown_grace, clock
        self._unused_since: dict[str, float] = {}
        self._held: dict[str, IPv4Address] = {}  # tunnel addresses we assigned, by "vxlan"/"ipip"
        self.tunnels = tunnels.TunnelManager(netns=netns)
        self.nat = NatTable(netns=netns)
        # True: in use, or maybe left by a past run (the first apply cleans that up at once).
        self._vxlan_was_on = self._ipip_was_on = True
        self._first = True  # no grace in the first apply: nothing of ours is switching yet

    async def open(self) -> None:
        await self.tunnels.open()

    async def close(self) -> None:
        await self.tunnels.close()

    async def apply(self, state: cluster.ClusterState, me: IPv4Interface) -> EncapResult:
        result = EncapResult()
        pools = cluster.ipv4_pools(state)
        try:
            if await self.nat.apply(cluster.nat_pools(state)):
                result.writes += 1
        except (NftError, OSError) as exc:
            result.problems["nat"] = f"nat: {exc}"
        node = state.resources.get(("Node", None, self.node))
        await self._vxlan(state, [p for p in pools if p.spec.vxlan_mode != NEVER], node, me, result)
        felix = cluster.felix_settings(state, self.node)
        await self._ipip(state, [p for p in pools if p.spec.ipip_mode != NEVER], node, me, result,
                         mtu=felix.ipip_mtu if felix is not None else None)
        self._first = False
        return result

    # -- VXLAN --

    async def _vxlan(self, state, vxlan_pools: list[IPPool], node: Node | None, me: IPv4Interface,
                     result: EncapResult) -> None:
        handle = VXLAN_HANDLE.format(node=self.node)
        if not vxlan_pools:
            if self._vxlan_was_on and self._grace_over("vxlan", result):
                removed = await self.tunnels.remove_vxlan()
                await asyncio.to_thread(self._release, handle, cluster.holds_handle(state, handle),
                                        vxlan=True)
                self._held.pop("vxlan", None)
                result.writes += int(removed)
                self._vxlan_was_on = False
            return
        self._vxlan_was_on = True
        self._unused_since.pop("vxlan", None)
        try:
            vtep = await self._address("vxlan", handle, vxlan_pools,
                                       node.spec.ipv4_vxlan_tunnel_addr if node else None)
        except IPAMError as exc:
            result.problems["vxlan"] = f"vxlan: no tunnel address: {exc}"
            return
        mac = (node.spec.vxlan_tunnel_mac_addr if node else None) or tunnels.vtep_mac_for(self.node)
        remotes = []
        for h in cluster.hosts(state):
            if h.name != self.node and h.ip is not None and h.vtep_ip and h.vtep_mac:
                remotes.append(tunnels.RemoteVtep(h.name, h.vtep_ip, h.vtep_mac, h.ip.ip))
        try:
            desired = tunnels.desired_vtep_entries(remotes)
        except ValueError as exc:
            result.problems["vxlan"] = f"vxlan: conflicting VTEPs in the datastore: {exc}"
            return
        felix = cluster.felix_settings(state, self.node)  # vxlanVNI / vxlanPort / vxlanMTU
        extra = {k: v for k, v in (("vni", felix and felix.vxlan_vni), ("port", felix and felix.vxlan_port),
                                   ("mtu", felix and felix.vxlan_mtu)) if v}
        res = await self.tunnels.sync_vxlan(
            tunnels.VxlanConfig(node=self.node, node_ip=me.ip, vtep_ip=vtep, vtep_mac=mac, **extra),
            desired)
        result.writes += res.writes
        if res.problem or res.failed:
            result.problems["vxlan"] = "vxlan: " + (res.problem or "; ".join(
                f"{k}: {v}" for k, v in sorted(res.failed.items(), key=str)))
        recorded = (node.spec.ipv4_vxlan_tunnel_addr, node.spec.vxlan_tunnel_mac_addr) if node else None
        if recorded != (str(vtep), res.mac or mac):
            await asyncio.to_thread(self._record, vxlan=(str(vtep), res.mac or mac))

    # -- IPIP --

    async def _ipip(self, state, ipip_pools: list[IPPool], node: Node | None, me: IPv4Interface,
                    result: EncapResult, mtu: int | None = None) -> None:
        handle = IPIP_HANDLE.format(node=self.node)
        if not ipip_pools:
            if self._ipip_was_on and self._grace_over("ipip", result):
                await self.tunnels.remove_ipip()
                await asyncio.to_thread(self._release, handle, cluster.holds_handle(state, handle),
                                        vxlan=False)
                self._held.pop("ipip", None)
                self._ipip_was_on = False
            return
        self._ipip_was_on = True
        self._unused_since.pop("ipip", None)
        current = node.spec.bgp.ipv4_ipip_tunnel_addr if node and node.spec.bgp else None
        try:
            addr = await self._address("ipip", handle, ipip_pools, current)
        except IPAMError as exc:
            result.problems["ipip"] = f"ipip: no tunnel address: {exc}"
            return
        if current != str(addr):
            await asyncio.to_thread(self._record, ipip=str(addr))
        res = await self.tunnels.sync_ipip(tunnels.IpipConfig(tunnel_ip=addr, node_ip=me.ip, mtu=mtu or None))
        result.writes += res.writes
        if res.problem:
            result.problems["ipip"] = f"ipip: {res.problem}"

    async def _address(self, kind: str, handle: str, pools: list[IPPool],
                       recorded: str | None) -> IPv4Address:
        """Our tunnel address. Once assigned and recorded on our Node it costs nothing: asking IPAM
        reads every block, which every reconcile of a VXLAN node did before."""
        held = self._held.get(kind)
        if held is not None and recorded == str(held):
            return held
        address = await asyncio.to_thread(self._tunnel_address, handle, pools, recorded)
        self._held[kind] = address
        return address

    def _grace_over(self, tunnel: str, result: EncapResult) -> bool:
        if self._first:
            return True
        now = self._clock()
        left = self._unused_since.setdefault(tunnel, now) + self._grace - now
        if left <= 0:
            del self._unused_since[tunnel]
            return True
        result.recheck_after = min(left, result.recheck_after or left)
        return False

    # -- datastore (worker thread) --

    def _tunnel_address(self, handle: str, pools: list[IPPool], recorded: str | None) -> IPv4Address:
        ipam = IPAM(self.ds)
        held = ipam.addresses(handle)
        if recorded and ipaddress.IPv4Address(recorded) in held:
            return ipaddress.IPv4Address(recorded)
        if held:
            return held[0]
        return ipam.assign(node=self.node, handle=handle, attrs={"node": self.node, "type": handle.split("-")[0]},
                           pools=[p.name for p in pools if not p.spec.disabled] or None)

    def _release(self, handle: str, held: bool, *, vxlan: bool) -> None:
        """Release ``handle``'s addresses if any block ``held`` one (IPAM reads every block to
        find them: at 100k blocks each release cost ~15 s of start-up), and clear our Node's."""
        if held:
            IPAM(self.ds).release(handle)
        self._record(**({"vxlan": None} if vxlan else {"ipip": None}))

    def _record(self, **fields) -> None:
        """Write our tunnel fields on our Node (compare-and-swap, re-read on conflict); no write
        when they are already right."""
        for _ in range(10):
            try:
                node = self.ds.get("Node", self.node)
            except NotFound:
                return  # registered at start; gone means being deleted: nothing to record
            spec = node.spec
            if "vxlan" in fields:
                addr, mac = fields["vxlan"] or (None, None)
                spec = spec.model_copy(update={"ipv4_vxlan_tunnel_addr": addr,
                                               "vxlan_tunnel_mac_addr": mac})
            if "ipip" in fields:
                bgp = (spec.bgp or NodeBGPSpec()).model_copy(
                    update={"ipv4_ipip_tunnel_addr": fields["ipip"]})
                spec = spec.model_copy(update={"bgp": bgp})
            if spec == node.spec:
                return
            try:
                self.ds.update(node.model_copy(update={"spec": spec}))
                log.info("recorded tunnel addresses on our Node", extra={"node": self.node, **{
                    k: str(v) for k, v in fields.items()}})
                return
            except Conflict:
                continue
        raise RuntimeError(f"Node {self.node}: could not record tunnel fields after repeated conflicts")
