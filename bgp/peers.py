"""Which BGP sessions a node should have: a pure function of the nodes, the global config and the
BGPPeers (Calico's confd rules).

Purely computational; no I/O.

- Mesh (``nodeToNodeMeshEnabled``): every other node, except route reflectors (a node with a
  ``routeReflectorClusterID``), which leave the mesh on both sides.
- BGPPeers apply to this node when ``node`` names it, ``nodeSelector`` matches its labels, or
  neither is set (a global peer). ``peerIP`` is one session (to a router outside the cluster, say);
  ``peerSelector`` is one session per selected node (never to ourselves), and, unless
  ``reversePeering: Manual``, the selected node gets the reverse session to each node the peer
  applies to (so a reflector selected by its clients peers with them). To a selected node, a
  route reflector has a *client* when the node has no cluster ID or another one; reflectors sharing
  an ID peer as non-clients (RFC 4456).
- Peer types as ``calicoctl node status`` shows them: a BGPPeer with ``node`` or ``nodeSelector``
  (and every reverse session) is ``node specific``, one with neither ``global``, the mesh
  ``node-to-node mesh``.
- One session per address: node-specific BGPPeers win over global ones, which win over the mesh;
  ties go to the smallest name, so the result never depends on input order.
- Passwords (TCP MD5, RFC 2385): ``nodeMeshPassword`` for mesh sessions, a BGPPeer's ``password``
  for its sessions, both Secret references (``SecretRef``) resolved by the caller into
  ``passwords``. A session whose password cannot be resolved (Secret or key missing, or a value
  the kernel cannot take) is left out: it must never come up without its password.
  ``password_problems`` says why, naming the resource, the field and the Secret.
- Between two of our nodes only the lower address connects (the other is passive): two
  simultaneous connections collide, and resolving the collision tears down the session a restarting
  peer just opened, which defeats graceful restart. External peers are connected to.

>>> from ipaddress import IPv4Interface
>>> a = NodeInfo("a", IPv4Interface("10.0.0.1/24"), None)
>>> b = NodeInfo("b", IPv4Interface("10.0.0.2/24"), 64513)
>>> [(str(p.address), p.asn, p.local_asn, p.passive) for p in mesh_peers(a, [a, b], BGPGlobal())]
[('10.0.0.2', 64513, 64512, False)]
"""
from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Address

from crds.selector import Selector

MESH_PEER_TYPE = "node-to-node mesh"
GLOBAL_PEER_TYPE = "global"
NODE_PEER_TYPE = "node specific"
_PRECEDENCE = {NODE_PEER_TYPE: 0, GLOBAL_PEER_TYPE: 1, MESH_PEER_TYPE: 2}
_MAX_ASN = 2**32 - 1
MAX_PASSWORD_BYTES = 80  # TCP_MD5SIG_MAXKEYLEN (linux/tcp.h)


@dataclass(frozen=True, order=True)
class SecretRef:
    """A password's place: key ``key`` of Secret ``name`` in the agent's own namespace."""

    name: str
    key: str

    def __str__(self) -> str:
        return f"secret {self.name!r} key {self.key!r}"


def password_problem(value: str | None) -> str | None:
    """Why ``value`` cannot be a TCP MD5 key (None when it can): missing, empty, or too long."""
    if value is None:
        return "not found"
    if not value:
        return "is empty"
    if len(value.encode()) > MAX_PASSWORD_BYTES:
        return f"is {len(value.encode())} bytes, more than the kernel's {MAX_PASSWORD_BYTES}"
    return None


def _check_asn(field: str, asn: int | None) -> None:
    if asn is not None and not 1 <= asn <= _MAX_ASN:
        raise ValueError(f"{field}: AS number {asn} is outside 1..{_MAX_ASN}")


@dataclass(frozen=True)
class NodeInfo:
    """A node as BGP sees it. ``asn`` None means: inherit the global AS number."""

    name: str
    ipv4: ipaddress.IPv4Interface | None
    asn: int | None
    labels: frozenset[tuple[str, str]] = frozenset()
    rr_cluster_id: str | None = None  # set: this node is a route reflector

    def __post_init__(self) -> None:
        _check_asn(f"NodeInfo({self.name}).asn", self.asn)


@dataclass(frozen=True)
class BGPGlobal:
    asn: int = 64512
    mesh_enabled: bool = True
    listen_port: int = 179
    mesh_max_restart_time: float = 120.0  # nodeMeshMaxRestartTime, seconds
    mesh_password: SecretRef | None = None  # nodeMeshPassword

    def __post_init__(self) -> None:
        _check_asn("BGPGlobal.asn", self.asn)
        if self.mesh_max_restart_time < 0:
            raise ValueError(f"BGPGlobal.mesh_max_restart_time: {self.mesh_max_restart_time} is negative")
        if not 1 <= self.listen_port <= 65535:
            raise ValueError(f"BGPGlobal.listen_port: {self.listen_port} is outside 1..65535")


@dataclass(frozen=True)
class PeerSpec:
    """One desired session. ``passive``: we only accept, never connect."""

    address: IPv4Address
    asn: int
    local_asn: int
    passive: bool
    peer_type: str
    name: str
    # The longest we keep this peer's routes after it goes down (graceful restart helper),
    # whatever restart time its OPEN offers.
    max_restart_time: float = 120.0
    rr_client: bool = False  # we reflect to it as a route-reflector client (RFC 4456)
    port: int = 179
    # TCP MD5 key; never in a repr (logs), only in ExaBGP's 0600 config.
    password: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class ExplicitPeer:
    """A BGPPeer resource as the peer computation needs it (selectors already parsed)."""

    name: str
    node: str | None = None
    node_selector: Selector | None = None
    peer_ip: IPv4Address | None = None
    peer_port: int | None = None
    peer_selector: Selector | None = None
    asn: int | None = None
    max_restart_time: float = 120.0
    reverse: bool = True  # reversePeering Auto (Calico's default); Manual: no reverse sessions
    password: SecretRef | None = None

    def __post_init__(self) -> None:
        _check_asn(f"BGPPeer {self.name}: asNumber", self.asn)
        if (self.peer_ip is None) == (self.peer_selector is None):
            raise ValueError(f"BGPPeer {self.name}: exactly one of peerIP and peerSelector is needed")
        if self.node is not None and self.node_selector is not None:
            raise ValueError(f"BGPPeer {self.name}: node and nodeSelector cannot both be set")

    def applies_to(self, node: NodeInfo) -> bool:
        if self.node is not None:
            return self.node == node.name
        return self.node_selector is None or self.node_selector.matches(dict(node.labels))

    @property
    def peer_type(self) -> str:
        """Calico's: a BGPPeer scoped by ``node`` or ``nodeSelector`` is per node ("node specific"
        in ``calicoctl node status``); only one with neither is global."""
        scoped = self.node is not None or self.node_selector is not None
        return NODE_PEER_TYPE if scoped else GLOBAL_PEER_TYPE


def mesh_peers(local: NodeInfo, nodes: Iterable[NodeInfo], cfg: BGPGlobal) -> frozenset[PeerSpec]:
    """Full mesh: one session to every other node that has an IPv4 address.

    Only the side with the lower address connects; the higher one is passive. Calico does this
    because two simultaneous connections collide, and the collision resolution tears down the
    session a restarting peer just opened, which defeats graceful restart.
    """
    if not cfg.mesh_enabled or local.ipv4 is None or local.rr_cluster_id is not None:
        return frozenset()
    me = local.ipv4.ip
    local_asn = local.asn if local.asn is not None else cfg.asn
    peers = []
    seen: set[IPv4Address] = {me}
    # Sorted so that two nodes claiming one address resolve the same way every time (lowest name
    # wins): ExaBGP cannot hold two neighbors with the same address.
    for node in sorted(nodes, key=lambda n: n.name):
        if node.name == local.name or node.ipv4 is None or node.ipv4.ip in seen:
            continue
        if node.rr_cluster_id is not None:
            continue  # route reflectors leave the mesh
        seen.add(node.ipv4.ip)
        peers.append(
            PeerSpec(
                address=node.ipv4.ip,
                asn=node.asn if node.asn is not None else cfg.asn,
                local_asn=local_asn,
                passive=me > node.ipv4.ip,
                peer_type=MESH_PEER_TYPE,
                name=node.name,
                max_restart_time=cfg.mesh_max_restart_time,
                port=cfg.listen_port,
            )
        )
    return frozenset(peers)


def bgp_peers(local: NodeInfo, nodes: Iterable[NodeInfo], cfg: BGPGlobal,
              explicit: Iterable[ExplicitPeer] = (),
              passwords: Mapping[SecretRef, str] | None = None) -> frozenset[PeerSpec]:
    """Every session this node should have: the mesh and its BGPPeers, one per address (see the
    module docstring for the rules). ``passwords``: the resolved values of the Secret references
    (a reference missing from it, or a value the kernel cannot take, leaves its sessions out)."""
    if local.ipv4 is None:
        return frozenset()
    passwords = passwords or {}
    blocked: set[PeerSpec] = set()
    nodes = sorted(nodes, key=lambda n: n.name)
    local_asn = local.asn if local.asn is not None else cfg.asn
    candidates = _with_password(mesh_peers(local, nodes, cfg), cfg.mesh_password, passwords, blocked)
    for peer in sorted(explicit, key=lambda p: p.name):
        if peer.applies_to(local):
            candidates.extend(_with_password(_explicit_sessions(local, local_asn, nodes, cfg, peer),
                                             peer.password, passwords, blocked))
        if peer.peer_selector is not None and peer.reverse and peer.peer_selector.matches(dict(local.labels)):
            # Selected by this peer: the reverse session to every node it applies to.
            selected_by = [n for n in nodes if peer.applies_to(n)]
            reverse = _node_sessions(local, local_asn, selected_by, cfg, peer, NODE_PEER_TYPE)
            candidates.extend(_with_password(reverse,
                                             peer.password, passwords, blocked))
    best: dict[IPv4Address, PeerSpec] = {}
    for spec in candidates:
        have = best.get(spec.address)
        if have is None or (_PRECEDENCE[spec.peer_type], spec.name) < (_PRECEDENCE[have.peer_type], have.name):
            best[spec.address] = spec
    best.pop(local.ipv4.ip, None)  # never a session to ourselves, whatever a BGPPeer says
    return frozenset(s for s in best.values() if s not in blocked)


def _with_password(specs: Iterable[PeerSpec], ref: SecretRef | None,
                   passwords: Mapping[SecretRef, str], blocked: set[PeerSpec]) -> list[PeerSpec]:
    """``specs`` with their password. When ``ref`` cannot be resolved they stay candidates (so a
    lower-precedence session to the same address cannot take their place without the password)
    and go into ``blocked``: a blocked winner is no session at all."""
    specs = list(specs)
    if ref is None:
        return specs
    value = passwords.get(ref)
    if password_problem(value) is not None:
        blocked.update(specs)
        return specs
    return [replace(s, password=value) for s in specs]


def password_problems(cfg: BGPGlobal, explicit: Iterable[ExplicitPeer],
                      passwords: Mapping[SecretRef, str]) -> list[str]:
    """One line per password that cannot be used, naming the resource, the field and the Secret
    (never the value); sorted, so a caller can compare and log only changes."""
    wanted = [("BGPConfiguration default: nodeMeshPassword", cfg.mesh_password)]
    wanted += [(f"BGPPeer {p.name}: password", p.password) for p in explicit]
    out = []
    for where, ref in wanted:
        problem = None if ref is None else password_problem(passwords.get(ref))
        if problem is not None:
            out.append(f"{where}: {ref} {problem}; its sessions are not configured")
    return sorted(out)


def secret_refs(cfg: BGPGlobal, explicit: Iterable[ExplicitPeer]) -> frozenset[SecretRef]:
    """Every Secret reference the sessions need (what the caller must resolve)."""
    refs = {cfg.mesh_password} | {p.password for p in explicit}
    return frozenset(r for r in refs if r is not None)


def _explicit_sessions(local: NodeInfo, local_asn: int, nodes: list[NodeInfo], cfg: BGPGlobal,
                       peer: ExplicitPeer) -> list[PeerSpec]:
    if peer.peer_ip is not None:
        return [PeerSpec(address=peer.peer_ip, asn=peer.asn if peer.asn is not None else cfg.asn,
                         local_asn=local_asn, passive=False, peer_type=peer.peer_type,
                         name=peer.name, max_restart_time=peer.max_restart_time,
                         port=peer.peer_port or 179)]
    selected = [n for n in nodes if peer.peer_selector.matches(dict(n.labels))]
    return _node_sessions(local, local_asn, selected, cfg, peer)


def _node_sessions(local: NodeInfo, local_asn: int, nodes: list[NodeInfo], cfg: BGPGlobal,
                   peer: ExplicitPeer, peer_type: str | None = None) -> list[PeerSpec]:
    """Sessions to ``nodes`` for ``peer``; ``peer_type`` overrides the peer's own (a reverse
    session is configured for this node alone, as Calico does: node specific)."""
    me = local.ipv4.ip
    out = []
    for node in nodes:
        if node.name == local.name or node.ipv4 is None:
            continue
        asn = node.asn if node.asn is not None else cfg.asn
        client = (local.rr_cluster_id is not None and asn == local_asn
                  and node.rr_cluster_id != local.rr_cluster_id)
        out.append(PeerSpec(address=node.ipv4.ip, asn=asn, local_asn=local_asn,
                            passive=me > node.ipv4.ip, peer_type=peer_type or peer.peer_type,
                            name=f"{peer.name}/{node.name}", max_restart_time=peer.max_restart_time,
                            rr_client=client, port=cfg.listen_port))
    return out


def explicit_peer(name: str, spec, max_restart_time: float) -> ExplicitPeer:
    """An ``ExplicitPeer`` from a BGPPeer's spec (``crds.bgp.BGPPeerSpec``, already validated);
    IPv6 peers are not ours yet (IPv4 only): ValueError naming the field."""
    from crds.bgp import parse_peer_ip
    from crds.selector import parse_selector

    peer_ip = port = None
    if spec.peer_ip is not None:
        host, port = parse_peer_ip(spec.peer_ip)
        address = ipaddress.ip_address(host)
        if address.version != 4:
            raise ValueError(f"BGPPeer {name}: peerIP: {spec.peer_ip} is IPv6, not supported yet")
        peer_ip = address
    return ExplicitPeer(
        name=name, node=spec.node,
        node_selector=parse_selector(spec.node_selector) if spec.node_selector else None,
        peer_ip=peer_ip, peer_port=port,
        peer_selector=parse_selector(spec.peer_selector) if spec.peer_selector else None,
        asn=spec.as_number, max_restart_time=max_restart_time,
        reverse=spec.reverse_peering != "Manual", password=secret_ref(spec.password))


def secret_ref(password) -> SecretRef | None:
    """The ``SecretRef`` of a ``crds.bgp.BGPPassword`` (None for no password)."""
    if password is None:
        return None
    ref = password.secret_key_ref
    return SecretRef(ref.name, ref.key)
