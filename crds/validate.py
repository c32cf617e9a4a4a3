"""Rules across a set of resources, which no single resource can check on its own, and the
fields that cannot change in place.

Purely computational; no I/O. A writer (the CLI, the API server stand-in) checks a file with
``validate_set(items)``, then the store as it would be with ``validate_set(merged(stored, items),
whole_store=True)`` and ``check_update(current, new)`` for each resource it replaces; the agent can
check what it has synced. The first broken rule raises ``InvalidResource`` naming the document, the
field and the reason.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence

from crds.bgp import BGPFilter, BGPPeer
from crds.models import InvalidResource, IPPool, Resource

# Fields Calico refuses to change in place: existing blocks and routes were cut from the old values.
IMMUTABLE = {"IPPool": (("cidr", "cidr"), ("block_size", "blockSize"))}


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


def merged(stored: Iterable[Resource], incoming: Iterable[Resource]) -> list[Resource]:
    """The store as it would be after writing ``incoming``: same keys replaced, new ones appended
    after the stored ones (so a conflict names the incoming resource). ``incoming`` naming one
    resource twice raises InvalidResource.

    >>> from crds import load
    >>> def pool(name, cidr):
    ...     return load({"apiVersion": "projectcalico.org/v3", "kind": "IPPool",
    ...                  "metadata": {"name": name}, "spec": {"cidr": cidr}})
    >>> [p.spec.cidr for p in merged([pool("a", "10.0.0.0/16")], [pool("a", "10.1.0.0/16")])]
    ['10.1.0.0/16']
    """
    incoming = list(incoming)
    check_unique(incoming)  # else a resource given twice would silently collapse into one
    replaced = {r.key: r for r in incoming}
    kept = [replaced.pop(r.key, r) for r in stored]
    return kept + [r for r in incoming if r.key in replaced]


def check_update(current: Resource, new: Resource) -> None:
    """Refuse changing a field Calico treats as immutable (an IPPool's cidr and blockSize)."""
    for attr, wire in IMMUTABLE.get(new.KIND, ()):
        was, now = getattr(current.spec, attr), getattr(new.spec, attr)
        if was != now:
            raise InvalidResource(new.KIND, new.name, f"spec.{wire}", f"cannot be changed (is {was}, "
                                  f"would be {now}); delete and re-create the {new.KIND}")
