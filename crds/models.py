"""pydantic v2 models of the projectcalico.org/v3 resources, with Calico's field names and defaults.

Python attributes are snake_case; the wire form (YAML/JSON) is Calico's camelCase. ``load()`` turns a
wire dict into a validated resource or raises ``InvalidResource`` naming the field and the reason.
"""
from __future__ import annotations

import ipaddress
import re
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.alias_generators import to_camel

from crds.selector import SelectorError, parse_selector

API_VERSION = "projectcalico.org/v3"
DEFAULT_ASN = 64512

_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")


class InvalidResource(ValueError):
    """A resource failed validation: ``field`` is the dotted wire path, ``reason`` says why."""

    def __init__(self, kind: str, name: str | None, field: str, reason: str) -> None:
        self.kind, self.name, self.field, self.reason = kind, name, field, reason
        super().__init__(f"{kind} {name or '<unnamed>'}: {field}: {reason}")


class _Wire(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )


class ObjectMeta(BaseModel):
    """Kubernetes' ObjectMeta field set, nothing else: an unknown field is an error, as in Kubernetes.

    (Allowing extra fields let a YAML alias bomb under ``metadata`` through to serialisation.)
    """

    model_config = ConfigDict(populate_by_name=True, extra="forbid", frozen=True)

    name: str
    namespace: str | None = None
    resource_version: str | None = Field(default=None, alias="resourceVersion")
    uid: str | None = None
    creation_timestamp: str | None = Field(default=None, alias="creationTimestamp")
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    # The rest of Kubernetes' set. None, not [], so that what we write is unchanged by declaring them.
    generate_name: str | None = Field(default=None, alias="generateName")
    self_link: str | None = Field(default=None, alias="selfLink")
    generation: int | None = None
    deletion_timestamp: str | None = Field(default=None, alias="deletionTimestamp")
    deletion_grace_period_seconds: int | None = Field(default=None, alias="deletionGracePeriodSeconds")
    owner_references: list[dict[str, Any]] | None = Field(default=None, alias="ownerReferences")
    finalizers: list[str] | None = None
    managed_fields: list[dict[str, Any]] | None = Field(default=None, alias="managedFields")

    @field_validator("name")
    @classmethod
    def _dns_name(cls, v: str) -> str:
        if len(v) > 253 or not _NAME_RE.match(v):
            raise ValueError("must be a lowercase DNS subdomain name (a-z, 0-9, '-', '.')")
        return v

    @field_validator("labels")
    @classmethod
    def _labels(cls, v: dict[str, str]) -> dict[str, str]:
        # Kubernetes' label syntax: selectors can only name keys and values of this shape.
        for key, value in v.items():
            prefix, _, name = key.rpartition("/")
            if (prefix and (len(prefix) > 253 or not _NAME_RE.match(prefix))) or not _label_word(name):
                raise ValueError(f"label key {key!r} must be [prefix/]name, name 1-63 of "
                                 "[A-Za-z0-9-_.] starting and ending alphanumeric")
            if value and not _label_word(value):
                raise ValueError(f"label {key}: value {value!r} must be at most 63 of "
                                 "[A-Za-z0-9-_.] starting and ending alphanumeric")
        return v


_LABEL_RE = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")


def _label_word(text: str) -> bool:
    return len(text) <= 63 and bool(_LABEL_RE.match(text))


def check_selector(v: str) -> str:
    """A Calico selector, syntax-checked now so a typo is refused at apply, not ignored at runtime."""
    try:
        parse_selector(v)
    except SelectorError as exc:
        raise ValueError(f"{v!r} is not a valid selector: {exc}") from None
    return v


_ASN_RE = re.compile(r"^(\d+)(?:\.(\d+))?$")


def _parse_asn(v: Any) -> int:
    """Calico accepts a plain 32-bit number or the dotted form ``high.low`` (each half 0-65535)."""
    if isinstance(v, bool) or not isinstance(v, (int, str)):
        raise ValueError(f"{v!r} is not an AS number (a number, or 'high.low')")
    match = _ASN_RE.match(v) if isinstance(v, str) else None
    if isinstance(v, str) and match is None:
        raise ValueError(f"{v!r} is not an AS number (a number, or 'high.low')")
    if match and match.group(2) is not None:
        high, low = int(match.group(1)), int(match.group(2))
        if high > 0xFFFF or low > 0xFFFF:
            raise ValueError(f"{v!r}: each half of a dotted AS number is 0-65535")
        v = (high << 16) + low
    asn = int(v)
    if not 0 < asn < 2**32:
        raise ValueError("AS number must be between 1 and 4294967295")
    return asn


# --- IPPool ----------------------------------------------------------------------------------------

EncapMode = Literal["Never", "Always", "CrossSubnet"]
_ALLOWED_USES = ({"Tunnel", "Workload"}, {"Tunnel"}, {"Workload"}, {"LoadBalancer"})
_LINK_LOCAL_V4 = ipaddress.ip_network("169.254.0.0/16")
_LINK_LOCAL_V6 = ipaddress.ip_network("fe80::/10")


class IPPoolSpec(_Wire):
    cidr: str
    block_size: int | None = None
    ipip_mode: EncapMode = "Never"
    vxlan_mode: EncapMode = "Never"
    nat_outgoing: bool = False
    disabled: bool = False
    disable_bgp_export: bool = Field(default=False, alias="disableBGPExport")
    node_selector: str = "all()"
    allowed_uses: list[Literal["Workload", "Tunnel", "LoadBalancer"]] = Field(
        default_factory=lambda: ["Workload", "Tunnel"]
    )

    @field_validator("node_selector")
    @classmethod
    def _selector(cls, v: str) -> str:
        return check_selector(v)

    @field_validator("cidr")
    @classmethod
    def _cidr(cls, v: str) -> str:
        try:
            net = ipaddress.ip_network(v, strict=True)
        except ValueError as exc:
            raise ValueError(f"{v!r} is not a valid CIDR with host bits zero ({exc})") from None
        link_local = _LINK_LOCAL_V4 if net.version == 4 else _LINK_LOCAL_V6
        if net.overlaps(link_local):
            raise ValueError(f"{v} overlaps the link-local range {link_local}")
        return str(net)

    @model_validator(mode="after")
    def _consistent(self) -> IPPoolSpec:
        net = ipaddress.ip_network(self.cidr)
        low, high, default = (20, 32, 26) if net.version == 4 else (116, 128, 122)
        if self.block_size is None:
            object.__setattr__(self, "block_size", default)
        if not low <= self.block_size <= high:
            raise _FieldError("blockSize", f"must be between {low} and {high} for IPv{net.version}")
        if net.prefixlen > self.block_size:
            raise _FieldError("blockSize", f"{self.block_size} is larger than the pool /{net.prefixlen}")
        if self.ipip_mode != "Never" and self.vxlan_mode != "Never":
            raise _FieldError("vxlanMode", "IPIP and VXLAN cannot both be enabled on one pool")
        if net.version == 6 and self.ipip_mode != "Never":
            raise _FieldError("ipipMode", "IPIP is IPv4 only")
        if set(self.allowed_uses) not in _ALLOWED_USES:
            raise _FieldError("allowedUses", f"{self.allowed_uses} is not a supported combination")
        return self

    @property
    def network(self) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
        return ipaddress.ip_network(self.cidr)

    def selects_node(self, labels: dict[str, str]) -> bool:
        """Whether IPAM may use this pool for a node with ``labels`` (its nodeSelector matches)."""
        return parse_selector(self.node_selector).matches(labels)


class _FieldError(ValueError):
    """Raised inside a model validator to name a field other than the one being validated."""

    def __init__(self, field: str, reason: str) -> None:
        self.field, self.reason = field, reason
        super().__init__(f"{field}: {reason}")


# --- Node ------------------------------------------------------------------------------------------


class NodeBGPSpec(_Wire):
    ipv4_address: str | None = Field(default=None, alias="ipv4Address")
    ipv6_address: str | None = Field(default=None, alias="ipv6Address")
    as_number: int | None = Field(default=None, alias="asNumber")
    route_reflector_cluster_id: str | None = Field(default=None, alias="routeReflectorClusterID")
    ipv4_ipip_tunnel_addr: str | None = Field(default=None, alias="ipv4IPIPTunnelAddr")

    @field_validator("ipv4_address")
    @classmethod
    def _v4(cls, v: str | None) -> str | None:
        if v is None:
            return v
        iface = ipaddress.ip_interface(v if "/" in v else f"{v}/32")
        if iface.version != 4:
            raise ValueError(f"{v} is not an IPv4 address")
        return str(iface)

    @field_validator("route_reflector_cluster_id")
    @classmethod
    def _cluster_id(cls, v: str | None) -> str | None:
        if v is not None:
            ipaddress.IPv4Address(v)
        return v

    @field_validator("as_number", mode="before")
    @classmethod
    def _asn(cls, v: Any) -> int | None:
        return None if v is None else _parse_asn(v)


class NodeAddress(_Wire):
    address: str
    type: str = "InternalIP"


class NodeSpec(_Wire):
    bgp: NodeBGPSpec | None = None
    ipv4_vxlan_tunnel_addr: str | None = Field(default=None, alias="ipv4VXLANTunnelAddr")
    vxlan_tunnel_mac_addr: str | None = Field(default=None, alias="vxlanTunnelMACAddr")
    addresses: list[NodeAddress] = Field(default_factory=list)
    orch_refs: list[dict[str, str]] = Field(default_factory=list)


# --- WorkloadEndpoint ------------------------------------------------------------------------------


class WorkloadEndpointSpec(_Wire):
    orchestrator: str = "k8s"
    workload: str = ""
    node: str
    container_id: str = Field(default="", alias="containerID")
    pod: str
    endpoint: str = "eth0"
    ip_networks: list[str] = Field(default_factory=list)
    interface_name: str
    mac: str = ""
    profiles: list[str] = Field(default_factory=list)

    @field_validator("ip_networks")
    @classmethod
    def _host_nets(cls, v: list[str]) -> list[str]:
        out = []
        for item in v:
            net = ipaddress.ip_network(item, strict=True)
            if net.prefixlen != net.max_prefixlen:
                raise ValueError(f"{item} must be a single address (/32 or /128)")
            out.append(str(net))
        return out

    @field_validator("interface_name")
    @classmethod
    def _ifname(cls, v: str) -> str:
        if not 0 < len(v) <= 15:
            raise ValueError("interface names are 1 to 15 characters")
        return v


# --- IPAM objects ----------------------------------------------------------------------------------


class AllocationAttribute(_Wire):
    handle_id: str | None = Field(default=None, alias="handle_id")
    secondary: dict[str, str] = Field(default_factory=dict, alias="secondary")


class IPAMBlockSpec(_Wire):
    cidr: str
    affinity: str | None = None  # "host:<node>"
    strict_affinity: bool = False
    allocations: list[int | None] = Field(default_factory=list)
    unallocated: list[int] = Field(default_factory=list)
    attributes: list[AllocationAttribute] = Field(default_factory=list)
    sequence_number: int = 0
    deleted: bool = False

    @field_validator("cidr")
    @classmethod
    def _cidr(cls, v: str) -> str:
        return str(ipaddress.ip_network(v, strict=True))

    @property
    def network(self) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
        return ipaddress.ip_network(self.cidr)

    @model_validator(mode="after")
    def _ordinals(self) -> IPAMBlockSpec:
        # A block read back corrupt must fail here, naming the field, not as an IndexError in IPAM.
        # Calico always writes one slot per address; a shorter list is tolerated (a functional test
        # fixture still writes one) as long as every free ordinal has its slot.
        size = self.network.num_addresses
        if len(self.allocations) > size:
            raise _FieldError("allocations", f"has {len(self.allocations)} slots; a "
                                             f"/{self.network.prefixlen} block has {size} addresses")
        if len(set(self.unallocated)) != len(self.unallocated):
            raise _FieldError("unallocated", "lists an ordinal twice")
        slots = len(self.allocations) or size
        for ordinal in self.unallocated:
            if not 0 <= ordinal < slots:
                raise _FieldError("unallocated", f"ordinal {ordinal} is outside the block (0-{slots - 1})")
            if self.allocations and self.allocations[ordinal] is not None:
                raise _FieldError("unallocated", f"ordinal {ordinal} is free and allocated at once")
        return self

    @property
    def affine_node(self) -> str | None:
        if self.affinity and self.affinity.startswith("host:"):
            return self.affinity[len("host:"):]
        return None


class BlockAffinitySpec(_Wire):
    state: Literal["pending", "confirmed", "pendingDeletion"] = "pending"
    node: str
    cidr: str
    deleted: bool = False

    @field_validator("cidr")
    @classmethod
    def _cidr(cls, v: str) -> str:
        return str(ipaddress.ip_network(v, strict=True))


# --- resources -------------------------------------------------------------------------------------


class Resource(BaseModel):
    """Common envelope: apiVersion, kind, metadata, spec."""

    model_config = ConfigDict(populate_by_name=True, extra="forbid", frozen=True)

    KIND: ClassVar[str]
    PLURAL: ClassVar[str]
    NAMESPACED: ClassVar[bool] = False
    # calicoctl's other names for the kind (``get bgpconfig``, as the source article types it).
    SHORT_NAMES: ClassVar[tuple[str, ...]] = ()

    api_version: Literal["projectcalico.org/v3"] = Field(default=API_VERSION, alias="apiVersion")
    kind: str
    metadata: ObjectMeta

    @field_validator("kind")
    @classmethod
    def _kind(cls, v: str) -> str:
        if v != cls.KIND:
            raise ValueError(f"expected {cls.KIND}, got {v}")
        return v

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def key(self) -> tuple[str, str | None, str]:
        return (self.KIND, self.metadata.namespace, self.metadata.name)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")

    def with_revision(self, revision: str | None) -> Resource:
        meta = self.metadata.model_copy(update={"resource_version": revision})
        return self.model_copy(update={"metadata": meta})


class IPPool(Resource):
    KIND = "IPPool"
    SHORT_NAMES = ("ipp", "ipps", "pool", "pools")
    PLURAL = "ippools"
    kind: str = "IPPool"
    spec: IPPoolSpec


class Node(Resource):
    KIND = "Node"
    SHORT_NAMES = ("no", "nos")
    PLURAL = "nodes"
    kind: str = "Node"
    spec: NodeSpec = Field(default_factory=NodeSpec)


class WorkloadEndpoint(Resource):
    KIND = "WorkloadEndpoint"
    SHORT_NAMES = ("wep", "weps")
    PLURAL = "workloadendpoints"
    NAMESPACED = True
    kind: str = "WorkloadEndpoint"
    spec: WorkloadEndpointSpec


class IPAMBlock(Resource):
    KIND = "IPAMBlock"
    PLURAL = "ipamblocks"
    kind: str = "IPAMBlock"
    spec: IPAMBlockSpec


class BlockAffinity(Resource):
    KIND = "BlockAffinity"
    PLURAL = "blockaffinities"
    kind: str = "BlockAffinity"
    spec: BlockAffinitySpec


KINDS: dict[str, type[Resource]] = {}


def register(*classes: type[Resource]) -> None:
    """Make kinds known to ``load``/``kind_class`` (and so to the datastore key layout and the CLI).
    The kinds defined in other crds modules register themselves when ``crds`` is imported."""
    for cls in classes:
        KINDS[cls.KIND] = cls


register(IPPool, Node, WorkloadEndpoint, IPAMBlock, BlockAffinity)  # BGPConfiguration: crds.bgp


def kind_class(kind: str) -> type[Resource]:
    """Resolve ``IPPool``, ``ippool``, ``ippools`` (as calicoctl does) to the model class."""
    by_lower = {k.lower(): v for k, v in KINDS.items()} | {v.PLURAL: v for v in KINDS.values()} \
        | {short: v for v in KINDS.values() for short in v.SHORT_NAMES}
    cls = KINDS.get(kind) or by_lower.get(kind.lower()) or by_lower.get(kind.lower() + "s")
    if cls is None:
        raise InvalidResource(kind, None, "kind", f"unknown kind; known: {', '.join(KINDS)}")
    return cls


def load(data: dict[str, Any]) -> Resource:
    """Validate a wire dict (as calicoctl accepts it) into a resource; raise InvalidResource."""
    if not isinstance(data, dict):
        raise InvalidResource("?", None, "", "a resource must be a mapping")
    kind = data.get("kind")
    name = (data.get("metadata") or {}).get("name") if isinstance(data.get("metadata"), dict) else None
    if not isinstance(kind, str):
        raise InvalidResource("?", name, "kind", "missing")
    cls = _document_kind(kind, name)
    if data.get("apiVersion") != API_VERSION:
        raise InvalidResource(kind, name, "apiVersion", f"must be {API_VERSION}")
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        raise _first_error(cls.KIND, name, exc) from None


def _document_kind(kind: str, name: str | None) -> type[Resource]:
    """A document's kind is spelt exactly; calicoctl's short names are for the command line only."""
    if kind in KINDS:
        return KINDS[kind]
    try:
        hint = f"; did you mean {kind_class(kind).KIND}?"
    except InvalidResource:
        hint = f"; known: {', '.join(KINDS)}"
    raise InvalidResource(kind, name, "kind", f"unknown kind{hint}")


def _first_error(kind: str, name: str | None, exc: ValidationError) -> InvalidResource:
    err = exc.errors()[0]
    path = [str(p) for p in err["loc"]]
    ctx_error = (err.get("ctx") or {}).get("error")
    if isinstance(ctx_error, _FieldError):
        path = path + [ctx_error.field]
        reason = ctx_error.reason
    elif err["type"] == "extra_forbidden":
        reason = "unknown field, not permitted"
    else:
        reason = err["msg"].removeprefix("Value error, ")
    return InvalidResource(kind, name, ".".join(path) or "<root>", reason)
