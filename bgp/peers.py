"""Which BGP sessions a node should have: a pure function of the node list and the global config.

Purely computational; no I/O.

>>> from ipaddress import IPv4Interface
>>> a = NodeInfo("a", IPv4Interface("10.0.0.1/24"), None)
>>> b = NodeInfo("b", IPv4Interface("10.0.0.2/24"), 64513)
>>> [(str(p.address), p.asn, p.local_asn, p.passive) for p in mesh_peers(a, [a, b], BGPGlobal())]
[('10.0.0.2', 64513, 64512, False)]
"""
from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address

MESH_PEER_TYPE = "node-to-node mesh"
_MAX_ASN = 2**32 - 1


def _check_asn(field: str, asn: int | None) -> None:
    if asn is not None and not 1 <= asn <= _MAX_ASN:
        raise ValueError(f"{field}: AS number {asn} is outside 1..{_MAX_ASN}")


@dataclass(frozen=True)
class NodeInfo:
    """A node as BGP sees it. ``asn`` None means: inherit the global AS number."""

    name: str
    ipv4: ipaddress.IPv4Interface | None
    asn: int | None

    def __post_init__(self) -> None:
        _check_asn(f"NodeInfo({self.name}).asn", self.asn)


@dataclass(frozen=True)
class BGPGlobal:
    asn: int = 64512
    mesh_enabled: bool = True
    listen_port: int = 179
    mesh_max_restart_time: float = 120.0  # nodeMeshMaxRestartTime, seconds

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


def mesh_peers(local: NodeInfo, nodes: Iterable[NodeInfo], cfg: BGPGlobal) -> frozenset[PeerSpec]:
    """Full mesh: one session to every other node that has an IPv4 address.

    Only the side with the lower address connects; the higher one is passive. Calico does this
    because two simultaneous connections collide, and the collision resolution tears down the
    session a restarting peer just opened, which defeats graceful restart.
    """
    if not cfg.mesh_enabled or local.ipv4 is None:
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
            )
        )
    return frozenset(peers)
