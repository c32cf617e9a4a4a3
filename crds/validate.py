"""Rules across a set of resources, which no single resource can check on its own.

Purely computational; no I/O. The CLI calls ``validate_set`` on a file's documents (and on the file
merged with the store), the agent on what it has synced; the first broken rule raises
``InvalidResource`` naming the document, the field and the reason.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence

from crds.bgp import BGPFilter, BGPPeer
from crds.models import InvalidResource, IPPool, Resource


def validate_set(resources: Iterable[Resource], whole_store: bool = False) -> None:
    """Reject the set if it names one resource twice, has overlapping pools (IPv4 and IPv6 each),
    or two peers for the same session; with ``whole_store`` (the set is everything there is), also
    a BGPPeer whose ``filters`` names a BGPFilter that is not in it."""
    items = list(resources)
    check_unique(items)
    check_pools_disjoint([r for r in items if isinstance(r, IPPool)])
    peers = [r for r in items if isinstance(r, BGPPeer)]
    check_peers_distinct(peers)
    if whole_store:
        check_filters_exist(peers, {r.name for r in items if isinstance(r, BGPFilter)})


def check_unique(items: Sequence[Resource]) -> None:
    seen: set[tuple] = set()
    for r in items:
        if r.key in seen:
            raise InvalidResource(r.KIND, r.name, "metadata.name", f"{r.KIND} {r.name} appears twice")
        seen.add(r.key)


def check_pools_disjoint(pools: Sequence[IPPool]) -> None:
    for i, new in enumerate(pools):
        for earlier in pools[:i]:
            a, b = new.spec.network, earlier.spec.network
            if a.version == b.version and a.overlaps(b):
                raise InvalidResource("IPPool", new.name, "spec.cidr", f"{new.spec.cidr} overlaps "
                                      f"IPPool {earlier.name} ({earlier.spec.cidr})")


def check_peers_distinct(peers: Sequence[BGPPeer]) -> None:
    """Two peers with the same scope and the same remote would be one BGP session configured twice,
    with whichever settings won the race."""
    seen: dict[tuple, str] = {}
    for p in peers:
        s = p.spec
        session = (s.node, s.node_selector, s.peer_ip, s.peer_selector)
        if session in seen:
            field = "spec.peerIP" if s.peer_ip else "spec.peerSelector"
            raise InvalidResource("BGPPeer", p.name, field, f"the same peering as BGPPeer {seen[session]}")
        seen[session] = p.name


def check_filters_exist(peers: Sequence[BGPPeer], filters: set[str]) -> None:
    for p in peers:
        for index, name in enumerate(p.spec.filters):
            if name not in filters:
                raise InvalidResource("BGPPeer", p.name, f"spec.filters.{index}",
                                      f"no BGPFilter named {name}")
