"""Resource models: the projectcalico.org/v3 wire types, validated.

Purely computational; no I/O. Every resource a user or the datastore hands us passes ``load()``, which
rejects bad input with ``InvalidResource`` naming the field and the reason, before anything is stored.
``validate_set()`` checks the rules across resources (duplicates, overlapping pools, missing filters).
Other packages convert these wire types once into their own frozen inputs; they do not pass them deep.
"""
from crds.models import (
    API_VERSION,
    DEFAULT_ASN,
    KINDS,
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
# Imported for their registration in KINDS as much as for their names.
from crds.bgp import BGPConfiguration, BGPFilter, BGPPeer  # noqa: E402
from crds.felixconfig import FelixConfiguration  # noqa: E402
from crds.ipamobjects import IPAMConfig, IPAMHandle, IPReservation  # noqa: E402
from crds.selector import Selector, SelectorError, parse_selector  # noqa: E402
from crds.validate import check_update, merged, validate_set  # noqa: E402

__all__ = [
    "API_VERSION", "DEFAULT_ASN", "KINDS", "BGPConfiguration", "BGPFilter", "BGPPeer", "BlockAffinity",
    "FelixConfiguration", "IPAMBlock", "IPAMConfig", "IPAMHandle", "IPPool", "IPReservation",
    "InvalidResource", "Node", "ObjectMeta", "Resource", "Selector", "SelectorError",
    "WorkloadEndpoint", "check_update", "kind_class", "load", "merged", "parse_selector",
    "validate_set",
]
