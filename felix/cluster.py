"""The agent's view of the datastore, and its conversion into the pure inputs of calc and BGP.

Purely computational; no I/O. ``ClusterState.apply`` takes syncer batches (memory only, marks dirty);
the functions below derive frozen values from the current state alone, never from history.
"""
from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field
from ipaddress import IPv4Network

from bgp.peers import BGPGlobal, NodeInfo
from crds import BGPConfiguration, IPAMBlock, IPPool, Node, Resource, WorkloadEndpoint
from crds.duration import parse_duration
from datastore.syncer import Connection, InSync, Update
from felix.calc import Block, CalcInput, Host, PoolEncap, RemoteRoute, Workload

WATCHED_KINDS = ("IPPool", "BGPConfiguration", "Node", "WorkloadEndpoint", "IPAMBlock")


@dataclass
class ClusterState:
    resources: dict[tuple[str, str | None, str], Resource] = field(default_factory=dict)
    in_sync: bool = False  # a complete snapshot arrived once (stays true while the datastore is away)
    revision: int = 0
    connection: Connection | None = None  # the datastore connection's latest state

    def apply(self, batch: Iterable[Update | InSync | Connection]) -> bool:
        """Take a batch; return whether anything the agent uses changed. An update that differs
        only in resourceVersion is no change: on Kubernetes every kubelet heartbeat rewrites its
        Node, and reconciling for each would keep every agent busy forever."""
        changed = False
        for item in batch:
            if isinstance(item, InSync):
                changed |= not self.in_sync
                self.in_sync, self.revision = True, item.revision
            elif isinstance(item, Connection):
                changed |= self.connection is None or item.state != self.connection.state
                self.connection = item
            else:
                changed |= self._update(item)
        return changed

    def _update(self, item: Update) -> bool:
        key = (item.kind, item.namespace, item.name)
        old = self.resources.get(key)
        if item.resource is None:
            self.resources.pop(key, None)
            return old is not None
        self.resources[key] = item.resource
        return old is None or old.with_revision(None) != item.resource.with_revision(None)

    def of_kind(self, cls: type[Resource]) -> list:
        return sorted((r for (k, _, _), r in self.resources.items() if k == cls.KIND),
                      key=lambda r: r.key)


def ipv4_pools(state: ClusterState) -> list[IPPool]:
    """Every IPv4 pool, disabled ones included: ``disabled`` only stops new allocations (Calico),
    so a disabled pool's pods keep their routes, imported and exported alike."""
    return [p for p in state.of_kind(IPPool) if p.spec.network.version == 4]


def pool_cidrs(state: ClusterState) -> frozenset[IPv4Network]:
    return frozenset(p.spec.network for p in ipv4_pools(state))


def local_blocks(state: ClusterState, node: str) -> frozenset[IPv4Network]:
    return frozenset(b.spec.network for b in state.of_kind(IPAMBlock)
                     if b.spec.affine_node == node and not b.spec.deleted
                     and b.spec.network.version == 4)


def export_prefixes(state: ClusterState, node: str) -> frozenset[IPv4Network]:
    """Our own blocks, except those in pools marked disableBGPExport (Calico's rule)."""
    hidden = [p.spec.network for p in ipv4_pools(state) if p.spec.disable_bgp_export]
    return frozenset(b for b in local_blocks(state, node)
                     if not any(b.subnet_of(h) for h in hidden))


def bgp_global(state: ClusterState) -> BGPGlobal:
    cfg = state.resources.get(("BGPConfiguration", None, "default"))
    if not isinstance(cfg, BGPConfiguration):
        return BGPGlobal()
    return BGPGlobal(asn=cfg.spec.as_number, mesh_enabled=cfg.spec.node_to_node_mesh_enabled,
                     listen_port=cfg.spec.listen_port,
                     mesh_max_restart_time=parse_duration(cfg.spec.node_mesh_max_restart_time))


def node_info(node: Node) -> NodeInfo:
    bgp = node.spec.bgp
    addr = ipaddress.IPv4Interface(bgp.ipv4_address) if bgp and bgp.ipv4_address else None
    return NodeInfo(name=node.name, ipv4=addr, asn=bgp.as_number if bgp else None)


def node_infos(state: ClusterState) -> list[NodeInfo]:
    return [node_info(n) for n in state.of_kind(Node)]


def local_workloads(state: ClusterState, node: str) -> frozenset[Workload]:
    out = set()
    for wep in state.of_kind(WorkloadEndpoint):
        if wep.spec.node != node:
            continue
        for net in wep.spec.ip_networks:
            ip = ipaddress.ip_network(net).network_address
            if ip.version == 4:
                out.add(Workload(ip=ip, iface=wep.spec.interface_name, node=node,
                                 name=f"{wep.metadata.namespace}/{wep.spec.pod}"))
    return frozenset(out)


def pool_encaps(state: ClusterState) -> frozenset[PoolEncap]:
    return frozenset(PoolEncap(p.spec.network, p.spec.ipip_mode, p.spec.vxlan_mode)
                     for p in ipv4_pools(state))


def hosts(state: ClusterState) -> frozenset[Host]:
    """Every node's IPv4 address (with prefix) and VXLAN tunnel endpoint, as far as known."""
    out = set()
    for n in state.of_kind(Node):
        info = node_info(n)
        vtep = n.spec.ipv4_vxlan_tunnel_addr
        out.add(Host(name=n.name, ip=info.ipv4,
                     vtep_ip=ipaddress.IPv4Address(vtep) if vtep else None,
                     vtep_mac=n.spec.vxlan_tunnel_mac_addr or None))
    return frozenset(out)


def nat_pools(state: ClusterState) -> list[tuple[IPv4Network, bool]]:
    """(cidr, natOutgoing) of every pool, disabled ones included (their pods still exist)."""
    return [(p.spec.network, p.spec.nat_outgoing) for p in state.of_kind(IPPool)]


def calc_input(state: ClusterState, node: str, learned: Iterable, *, bgp: bool = True) -> CalcInput:
    """``learned``: bgp.rib.LearnedRoute values (prefix, nexthop, peer)."""
    blocks = frozenset(Block(cidr=b.spec.network, node=b.spec.affine_node)
                       for b in state.of_kind(IPAMBlock)
                       if b.spec.affine_node and b.spec.network.version == 4 and not b.spec.deleted)
    remote = frozenset(RemoteRoute(prefix=r.prefix, gateway=r.nexthop, source=str(r.peer))
                       for r in learned)
    return CalcInput(node=node, pools=pool_cidrs(state), blocks=blocks,
                     workloads=local_workloads(state, node), learned=remote,
                     encap=pool_encaps(state), hosts=hosts(state), bgp=bgp)
