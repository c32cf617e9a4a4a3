"""Resource models: the projectcalico.org/v3 wire types, validated.

Purely computational; no I/O. Every resource a user or the datastore hands us passes ``load()``, which
rejects bad input with ``InvalidResource`` naming the field and the reason, before anything is stored.
Other packages convert these wire types once into their own frozen inputs; they do not pass them deep.
"""
from crds.models import (
    API_VERSION,
    DEFAULT_ASN,
    KINDS,
    BGPConfiguration,
    BlockAffinity,
    IPAMBlock,
    IPPool,
    InvalidResource,
    Node,
    ObjectMeta,
    Resource,
    WorkloadEndpoint,
    kind_class,
    load,
)

__all__ = [
    "API_VERSION", "DEFAULT_ASN", "KINDS", "BGPConfiguration", "BlockAffinity", "IPAMBlock", "IPPool",
    "InvalidResource", "Node", "ObjectMeta", "Resource", "WorkloadEndpoint", "kind_class", "load",
]
