"""The agent's view of the datastore, and its conversion into the pure inputs of calc and BGP.

Purely computational; no I/O. ``ClusterState.apply`` takes syncer batches (memory only, marks dirty:
``take_changes`` says which resources changed since it was last called, so the agent can update its
calculation incrementally); the functions below derive frozen values from the current state alone,
never from history.
"""
from __future__ import annotations

import ipaddress
import logging
import sys
from collections import Counter
from collections.abc import Iterable
from operator import itemgetter
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network

from bgp.peers import BGPGlobal, ExplicitPeer, NodeInfo, explicit_peer, secret_ref
from crds import BGPConfiguration, BGPPeer, FelixConfiguration, IPAMBlock, IPPool, Node, Resource, WorkloadEndpoint
from crds.duration import parse_duration
from datastore.syncer import Connection, InSync, Update
from felix.calc import Block, Borrowed, CalcInput, Host, PoolEncap, RemoteRoute, Workload

log = logging.getLogger(__name__)

WATCHED_KINDS = ("IPPool", "BGPConfiguration", "Node", "WorkloadEndpoint", "IPAMBlock", "BGPPeer",
                 "FelixConfiguration")


@dataclass(frozen=True, slots=True)
class BlockFacts:
    """What the agent uses of an IPAMBlock: its network, affine node, deleted flag and the
    addresses other nodes borrowed from it (the owner routes each to its holder). Kept instead of
    the model: at 100k blocks the models were ~2.5 kB each and most of the agent's memory, for
    these fields. The allocations, which change with every pod ADD and DEL on the block's node,
    are left out, so such an update is no change (no reconcile, and at 100k blocks no rebuild)."""

    cidr: IPv4Network | ipaddress.IPv6Network
    node: str | None  # the affine node (``affinity: host:<node>``)
    deleted: bool = False
    borrowed: frozenset[Borrowed] = frozenset()
    # The tunnel-address handles holding an address here (``holds_handle``). Not compared: they
    # change no route, so such an update is no change (the facts are still kept current).
    tunnel_handles: frozenset[str] = field(default=frozenset(), compare=False)

    @classmethod
    def of(cls, block: IPAMBlock) -> BlockFacts:
        spec = block.spec
        cidr = _network(spec.cidr)
        node = spec.affine_node
        return cls(cidr=cidr, node=sys.intern(node) if node else None, deleted=spec.deleted,
                   borrowed=block_borrowed(block, cidr), tunnel_handles=_tunnel_handles(block))


TUNNEL_HANDLE_PREFIXES = ("vxlan-tunnel-addr-", "ipip-tunnel-addr-")  # felix.encap's handles


def _tunnel_handles(block: IPAMBlock) -> frozenset[str]:
    spec = block.spec
    held = {i: a.handle_id for i, a in enumerate(spec.attributes)
            if a.handle_id and a.handle_id.startswith(TUNNEL_HANDLE_PREFIXES)}
    if not held:
        return frozenset()
    return frozenset(held[i] for i in spec.allocations if i in held)


def holds_handle(state: ClusterState, handle: str) -> bool:
    """Whether any block holds an address for ``handle``, one of ``TUNNEL_HANDLE_PREFIXES``: known
    from the state, where asking IPAM reads every block from the datastore (at 100k blocks ~15 s)."""
    if not handle.startswith(TUNNEL_HANDLE_PREFIXES):
        raise AssertionError(f"Bug: handle {handle!r} is not a tunnel handle: not tracked")
    return any(handle in held for held in state._tunnel_handles.values())


def reduce_resource(resource: Resource) -> Resource | BlockFacts:
    """What ``ClusterState`` keeps of a resource: an IPAMBlock's ``BlockFacts``, anything else as
    it is. The agent's syncer applies it as it reads, so each block model is freed at once."""
    return BlockFacts.of(resource) if isinstance(resource, IPAMBlock) else resource


def _network(cidr: str) -> IPv4Network | ipaddress.IPv6Network:
    return IPv4Network(cidr) if ":" not in cidr else ipaddress.IPv6Network(cidr)


def block_borrowed(block: IPAMBlock, network=None) -> frozenset[Borrowed]:
    """The block's addresses allocated to another node than its affine one (the allocation's
    ``node`` attribute, which IPAM records; an allocation without one is the owner's). Cheap in
    the usual case: the attributes are looked at first, and hold no other node. ``network``: the
    block's, if the caller has it already."""
    spec = block.spec
    if spec.deleted or not spec.attributes:
        return frozenset()
    network = network if network is not None else _network(spec.cidr)
    if network.version != 4:
        return frozenset()
    owner = spec.affine_node
    holders = {i: a.secondary["node"] for i, a in enumerate(spec.attributes)
               if a.secondary.get("node") and a.secondary["node"] != owner}
    if not holders:
        return frozenset()
    base = network.network_address
    return frozenset(Borrowed(ip=base + ordinal, node=holders[idx])
                     for ordinal, idx in enumerate(spec.allocations) if idx in holders)


Key = tuple[str, str | None, str]  # (kind, namespace, name)
IN_SYNC = "InSync"  # in ``take_changes``: the first complete snapshot arrived


@dataclass
class ClusterState:
    """Every watched resource by key, except IPAM blocks: of those ``blocks`` holds the
    ``BlockFacts`` (the update may carry the model or, from ``reduce_resource``, the facts)."""

    resources: dict[Key, Resource] = field(default_factory=dict)
    in_sync: bool = False  # a complete snapshot arrived once (stays true while the datastore is away)
    revision: int = 0
    connection: Connection | None = None  # the datastore connection's latest state
    blocks: dict[Key, BlockFacts] = field(default_factory=dict, repr=False)
    # kind -> key -> resource: ``of_kind`` walks one kind, not 100k blocks to find three pools
    _by_kind: dict[str, dict[Key, Resource]] = field(default_factory=dict, repr=False)
    _changes: dict[str, set[Key]] = field(default_factory=dict, repr=False)
    # IPAM blocks with borrowed addresses only: a rebuild must not walk 100k blocks
    _borrowed: dict[Key, frozenset[Borrowed]] = field(default_factory=dict, repr=False)
    _tunnel_handles: dict[Key, frozenset[str]] = field(default_factory=dict, repr=False)  # likewise

    def apply(self, batch: Iterable[Update | InSync | Connection]) -> bool:
        """Take a batch; return whether anything the agent uses changed. An update that differs
        only in resourceVersion is no change: on Kubernetes every kubelet heartbeat rewrites its
        Node, and reconciling for each would keep every agent busy forever. Nor is an IPAM block
        whose allocations alone changed (every pod ADD and DEL does that)."""
        changed = False
        for item in batch:
            if isinstance(item, InSync):
                if not self.in_sync:
                    changed = True
                    self._changes.setdefault(IN_SYNC, set())
                self.in_sync, self.revision = True, item.revision
            elif isinstance(item, Connection):
                changed |= self.connection is None or item.state != self.connection.state
                self.connection = item
            else:
                changed |= self._update(item)
        return changed

    def take_changes(self) -> dict[str, set[Key]]:
        """The keys of the resources that changed since the last call, by kind (``IN_SYNC`` once
        the first snapshot is complete); the record starts again empty."""
        changes, self._changes = self._changes, {}
        return changes

    def _update(self, item: Update) -> bool:
        key = (item.kind, item.namespace, item.name)
        if item.kind == IPAMBlock.KIND:
            changed = self._update_block(key, item.resource)
        elif item.resource is None:
            changed = self.resources.pop(key, None) is not None
            self._by_kind.get(item.kind, {}).pop(key, None)
        else:
            old = self.resources.get(key)
            self.resources[key] = item.resource
            self._by_kind.setdefault(item.kind, {})[key] = item.resource
            changed = old is None or old.with_revision(None) != item.resource.with_revision(None)
        if changed:
            self._changes.setdefault(item.kind, set()).add(key)
        return changed

    def _update_block(self, key: Key, resource: IPAMBlock | BlockFacts | None) -> bool:
        if resource is None:
            self._borrowed.pop(key, None)
            self._tunnel_handles.pop(key, None)
            return self.blocks.pop(key, None) is not None
        facts = resource if isinstance(resource, BlockFacts) else BlockFacts.of(resource)
        old = self.blocks.get(key)
        self.blocks[key] = facts
        _note(self._tunnel_handles, key, facts.tunnel_handles)
        if old == facts:
            return False
        _note(self._borrowed, key, facts.borrowed)
        return True

    def of_kind(self, cls: type[Resource]) -> list:
        if cls.KIND == IPAMBlock.KIND:
            raise AssertionError("Bug: IPAM blocks are kept as BlockFacts: read ClusterState.blocks")
        return sorted(self._by_kind.get(cls.KIND, {}).values(), key=lambda r: r.key)

    def borrowed(self) -> frozenset[Borrowed]:
        """Every address borrowed from a block affine to another node than its holder."""
        return frozenset().union(*self._borrowed.values())


def _note(index: dict[Key, frozenset], key: Key, items: frozenset) -> None:
    """Keep ``index`` to the blocks with any ``items`` (a few among 100k)."""
    if items:
        index[key] = items
    else:
        index.pop(key, None)


def ipv4_pools(state: ClusterState) -> list[IPPool]:
    """Every IPv4 pool, disabled ones included: ``disabled`` only stops new allocations (Calico),
    so a disabled pool's pods keep their routes, imported and exported alike."""
    return [p for p in state.of_kind(IPPool) if p.spec.network.version == 4]


def pool_cidrs(state: ClusterState) -> frozenset[IPv4Network]:
    return frozenset(p.spec.network for p in ipv4_pools(state))


def local_blocks(state: ClusterState, node: str) -> frozenset[IPv4Network]:
    return frozenset(b.cidr for b in state.blocks.values()
                     if b.node == node and not b.deleted and b.cidr.version == 4)


def export_prefixes(state: ClusterState, node: str, workloads: Iterable[Workload] | None = None,
                    own: Iterable[IPv4Network] | None = None) -> frozenset[IPv4Network]:
    """Our own blocks, and the /32 of every local workload outside them (an address borrowed
    from another node's block), except in pools marked disableBGPExport (Calico's rules); a /32
    outside every pool is not exported (no peer would import it). ``workloads`` and ``own``
    default to ``local_workloads`` and ``local_blocks`` (the agent passes its own, kept ones)."""
    own = local_blocks(state, node) if own is None else frozenset(own)
    workloads = local_workloads(state, node) if workloads is None else workloads
    pools = [p.spec.network for p in ipv4_pools(state)]
    hidden = [p.spec.network for p in ipv4_pools(state) if p.spec.disable_bgp_export]
    # In integers, one set lookup per block length: ``in_own_block`` and ``subnet_of`` per
    # workload and block were ~5 ms at 200 pods and 50 blocks, on a new block's way to the peers.
    own_nets: dict[int, set[int]] = {}
    for block in own:
        own_nets.setdefault(block.netmask._ip, set()).add(block.network_address._ip)
    pool_nets = [(p.netmask._ip, p.network_address._ip) for p in pools]
    borrowed = set()
    for address in {w.ip._ip for w in workloads if w.node == node}:
        if (not any((address & mask) in nets for mask, nets in own_nets.items())
                and any(address & mask == net for mask, net in pool_nets)):
            borrowed.add(IPv4Network(address))
    return frozenset(b for b in own | borrowed if not any(b.subnet_of(h) for h in hidden))


def bgp_origins(state: ClusterState) -> tuple[dict[IPv4Network, ipaddress.IPv4Address],
                                               dict[ipaddress.IPv4Address, ipaddress.IPv4Address]]:
    """Who may announce what over BGP (``bgp.rib`` origin validation): each IPv4 block with an
    affinity -> its node's address, each borrowed address -> its holder's address. A node whose
    address is not known yet owns nothing here (its routes wait until its Node says where it is)."""
    addresses = _node_addresses(state)
    blocks = {b.cidr: addresses[b.node] for b in state.blocks.values()
              if b.node in addresses and not b.deleted and b.cidr.version == 4}
    borrowed = {b.ip: addresses[b.node] for b in state.borrowed() if b.node in addresses}
    return blocks, borrowed


class BgpOrigins:
    """``bgp_origins`` kept current from ``ClusterState.take_changes()``, at a cost proportional
    to the change: a changed IPAM block recomputes its own entries, a Node whose address changed
    those of the blocks affine to it or lending it addresses; every block only on the first
    ``update``. ``take_changes`` says what changed since it was last called (None for a block or
    address no longer owned), for ``Speaker.change_origins``."""

    def __init__(self) -> None:
        self.blocks: dict[IPv4Network, ipaddress.IPv4Address] = {}
        self.borrowed: dict[ipaddress.IPv4Address, ipaddress.IPv4Address] = {}
        self._addresses: dict[str, ipaddress.IPv4Address] | None = None  # None: not built yet
        # What each block gave: (its block entry, its borrowed entries, the nodes it names).
        self._gave: dict[Key, tuple[dict, dict, frozenset[str]]] = {}
        self._by_node: dict[str, set[Key]] = {}  # node name -> the blocks naming it
        self._changed: tuple[dict, dict] = ({}, {})

    def update(self, state: ClusterState, changes: dict[str, set[Key]]) -> None:
        if self._addresses is None:
            self._addresses = _node_addresses(state)
            keys = set(state.blocks)
        else:
            keys = set(changes.get(IPAMBlock.KIND, ()))
            if Node.KIND in changes:
                old, self._addresses = self._addresses, _node_addresses(state)
                for name in old.keys() | self._addresses.keys():
                    if old.get(name) != self._addresses.get(name):
                        keys |= self._by_node.get(name, set())
        for key in keys:
            self._refresh(state, key)

    def take_changes(self) -> tuple[dict, dict]:
        changed, self._changed = self._changed, ({}, {})
        return changed

    def _refresh(self, state: ClusterState, key: Key) -> None:
        old_block, old_borrowed, old_nodes = self._gave.pop(key, ({}, {}, frozenset()))
        for name in old_nodes:
            self._by_node[name].discard(key)
        block, borrowed, nodes = self._entries(state.blocks.get(key))
        if nodes:
            self._gave[key] = (block, borrowed, nodes)
            for name in nodes:
                self._by_node.setdefault(name, set()).add(key)
        for mine, old, new, changed in ((self.blocks, old_block, block, self._changed[0]),
                                        (self.borrowed, old_borrowed, borrowed, self._changed[1])):
            for item in old.keys() - new.keys():
                del mine[item]
                changed[item] = None
            for item, address in new.items():
                if old.get(item) != address:
                    mine[item] = changed[item] = address

    def _entries(self, facts: BlockFacts | None) -> tuple[dict, dict, frozenset[str]]:
        """As ``bgp_origins`` counts a block: its entry, its borrowed ones, the nodes it names."""
        if facts is None:
            return {}, {}, frozenset()
        addresses, block = self._addresses, {}
        if facts.node in addresses and not facts.deleted and facts.cidr.version == 4:
            block = {facts.cidr: addresses[facts.node]}
        borrowed = {b.ip: addresses[b.node] for b in facts.borrowed if b.node in addresses}
        nodes = frozenset({facts.node} if facts.node else ()) | {b.node for b in facts.borrowed}
        return block, borrowed, nodes


def _node_addresses(state: ClusterState) -> dict[str, ipaddress.IPv4Address]:
    return {n.name: n.ipv4.ip for n in node_infos(state) if n.ipv4 is not None}


def bgp_global(state: ClusterState) -> BGPGlobal:
    cfg = state.resources.get(("BGPConfiguration", None, "default"))
    if not isinstance(cfg, BGPConfiguration):
        return BGPGlobal()
    return BGPGlobal(asn=cfg.spec.as_number, mesh_enabled=cfg.spec.node_to_node_mesh_enabled,
                     listen_port=cfg.spec.listen_port,
                     mesh_max_restart_time=parse_duration(cfg.spec.node_mesh_max_restart_time),
                     mesh_password=secret_ref(cfg.spec.node_mesh_password))


def node_info(node: Node) -> NodeInfo:
    bgp = node.spec.bgp
    addr = ipaddress.IPv4Interface(bgp.ipv4_address) if bgp and bgp.ipv4_address else None
    return NodeInfo(name=node.name, ipv4=addr, asn=bgp.as_number if bgp else None,
                    labels=frozenset(node.metadata.labels.items()),
                    rr_cluster_id=bgp.route_reflector_cluster_id if bgp else None)


def explicit_peers(state: ClusterState) -> list[ExplicitPeer]:
    """Every BGPPeer this agent can use; one it cannot (an IPv6 peer for now) is logged and left
    out, never a reason to drop the others."""
    out = []
    for peer in state.of_kind(BGPPeer):
        try:
            out.append(explicit_peer(peer.name, peer.spec, parse_duration(peer.spec.max_restart_time)))
        except ValueError as exc:
            log.warning("BGPPeer not used: %s", exc)
    return out


def node_infos(state: ClusterState) -> list[NodeInfo]:
    return [node_info(n) for n in state.of_kind(Node)]


def local_workloads(state: ClusterState, node: str) -> frozenset[Workload]:
    out = set()
    for wep in state.of_kind(WorkloadEndpoint):
        out |= endpoint_workloads(wep, node)
    return frozenset(out)


def endpoint_workloads(wep: WorkloadEndpoint | None, node: str) -> frozenset[Workload]:
    """The IPv4 workloads of one endpoint if it is on ``node`` (none for ``None``: deleted)."""
    if wep is None or wep.spec.node != node:
        return frozenset()
    out = set()
    for net in wep.spec.ip_networks:
        ip = ipaddress.ip_network(net).network_address
        if ip.version == 4:
            out.add(Workload(ip=ip, iface=wep.spec.interface_name, node=node,
                             name=f"{wep.metadata.namespace}/{wep.spec.pod}"))
    return frozenset(out)


class LocalWorkloads:
    """``local_workloads`` kept per endpoint, so a changed endpoint yields the workloads that
    appeared and went. Counted: two endpoints may yield one identical workload, which goes only
    with the last of them."""

    def __init__(self, node: str) -> None:
        self.node = node
        self._by_key: dict[Key, frozenset[Workload]] = {}
        self._count: Counter[Workload] = Counter()

    def reset(self, state: ClusterState) -> frozenset[Workload]:
        """Start again from the whole state; return every local workload."""
        self._by_key, self._count = {}, Counter()
        for wep in state.of_kind(WorkloadEndpoint):
            self.update(state, [(WorkloadEndpoint.KIND, wep.metadata.namespace, wep.name)])
        return frozenset(self._count)

    def update(self, state: ClusterState, keys: Iterable[Key]
               ) -> tuple[set[Workload], set[Workload]]:
        """Take the endpoints at ``keys`` as they are now; return (workloads gone, appeared)."""
        before: dict[Workload, bool] = {}  # touched workload -> was it there
        for key in keys:
            new = endpoint_workloads(state.resources.get(key), self.node)
            old = self._by_key.pop(key, frozenset())
            if new:
                self._by_key[key] = new
            for w in old ^ new:
                before.setdefault(w, w in self._count)
                self._count[w] += 1 if w in new else -1
                if not self._count[w]:
                    del self._count[w]
        gone = {w for w, was in before.items() if was and w not in self._count}
        return gone, {w for w, was in before.items() if not was and w in self._count}

    def __iter__(self):
        return iter(self._count)


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


def remote_routes(learned: Iterable) -> frozenset[RemoteRoute]:
    """``learned``: bgp.rib.LearnedRoute values (prefix, nexthop, peer)."""
    return frozenset(remote_route_list(learned))


def remote_route_list(learned: Iterable) -> list[RemoteRoute]:
    """``remote_routes`` as a list (the speaker's changes hold one route per prefix: nothing to
    deduplicate). ``learned``: ``bgp.rib.LearnedRoute`` values, each a ``(key, path)`` tuple."""
    routes = learned if isinstance(learned, list) else list(learned)
    paths = list(map(itemgetter(1), routes))
    return RemoteRoute.many(map(itemgetter(0), routes), map(_vias(paths).__getitem__, paths))


LearnedPairs = list[tuple[int, tuple[IPv4Address, str]]]


def learned_pairs(changes: tuple[tuple[list, list], tuple[list, list]]) -> tuple[LearnedPairs, LearnedPairs]:
    """(removed, added) ``(key, via)`` pairs, the calculation's input (``RouteCalc.update``), of
    ``bgp.rib.Rib.take_change_columns``'s ((keys, paths), (keys, paths)): each via
    (``RemoteRoute.via``) made once per path and shared by its routes, the pairs made in C."""
    (gone, old), (came, new) = changes
    via = _vias(set(old).union(new)).__getitem__
    return list(zip(gone, map(via, old))), list(zip(came, map(via, new)))


def _vias(paths: Iterable) -> dict:
    """``{path: (nexthop, source)}`` for the distinct ``bgp.rib`` paths among ``paths`` (hashed
    by identity; the routes of one UPDATE share one). A withdrawal does not come in the order
    of the announcements, so a burst's paths are interleaved: not runs."""
    names: dict[int, str] = {}  # by the address's integer: its own hash is Python code too
    vias = {}
    for path in paths if isinstance(paths, set) else set(paths):
        peer = path.peer
        source = names.get(peer._ip)
        if source is None:
            source = names[peer._ip] = str(peer)
        vias[path] = (path.nexthop, source)
    return vias


def calc_input(state: ClusterState, node: str, learned: Iterable, *, bgp: bool = True,
               workloads: frozenset[Workload] | None = None) -> CalcInput:
    """``learned``: bgp.rib.LearnedRoute values (prefix, nexthop, peer); ``workloads``: the
    ``local_workloads`` of ``state`` when the caller has them already (the agent keeps them)."""
    blocks = frozenset(Block(cidr=b.cidr, node=b.node) for b in state.blocks.values()
                       if b.node and b.cidr.version == 4 and not b.deleted)
    workloads = local_workloads(state, node) if workloads is None else workloads
    return CalcInput(node=node, pools=pool_cidrs(state), blocks=blocks,
                     workloads=workloads, learned=remote_routes(learned),
                     encap=pool_encaps(state), hosts=hosts(state), bgp=bgp,
                     borrowed=state.borrowed())


def felix_settings(state: ClusterState, node: str):
    """Our FelixConfiguration: ``node.<name>`` if it exists, else ``default``, else None (Felix's
    defaults). Felix reads the environment first; the agent does that where it uses a field."""
    res = felix_configuration(state, node)
    return res.spec if res is not None else None


def felix_configuration(state: ClusterState, node: str) -> FelixConfiguration | None:
    """The FelixConfiguration resource ``felix_settings`` reads (``node.<name>``, else ``default``)."""
    for name in (f"node.{node}", "default"):
        res = state.resources.get(("FelixConfiguration", None, name))
        if isinstance(res, FelixConfiguration):
            return res
    return None


# The FelixConfiguration fields the agent acts on (agent.refresh_interval, encap); every other
# field the model accepts (Calico users write them) has no effect here.
HONOURED_FELIX_FIELDS = frozenset({"route_refresh_interval", "ipip_mtu", "vxlan_mtu", "vxlan_vni",
                                   "vxlan_port"})


def unhonoured_felix_fields(spec) -> list[str]:
    """The fields of a FelixConfiguration spec set to anything but their default that the agent
    does not act on, by the names operators write (camelCase), sorted. A field is compared with
    its default rather than asked whether it was given: a stored resource carries every default."""
    out = []
    for name, info in type(spec).model_fields.items():
        if name not in HONOURED_FELIX_FIELDS and getattr(spec, name) != info.get_default(
                call_default_factory=True):
            out.append(info.alias or name)
    return sorted(out)
