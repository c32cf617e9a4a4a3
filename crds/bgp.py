"""BGPConfiguration, BGPPeer and BGPFilter, with Calico's field names, defaults and validation.

Purely computational; no I/O.
"""
from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from crds.duration import parse_duration
from crds.models import (
    _NAME_RE, DEFAULT_ASN, Resource, _FieldError, _parse_asn, _Wire, check_selector, register,
)
from crds.selector import parse_selector


def parse_peer_ip(text: str) -> tuple[str, int | None]:
    """(address, port or None) from Calico's ``ip``, ``ip:port`` or ``[v6]:port``.

    >>> parse_peer_ip("192.168.40.181"), parse_peer_ip("10.0.0.1:1179"), parse_peer_ip("[fd00::1]:179")
    (('192.168.40.181', None), ('10.0.0.1', 1179), ('fd00::1', 179))
    """
    host, port = text, None
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]:")
        if not sep:
            raise ValueError(f"{text!r}: an IPv6 peer with a port is written [address]:port")
        port = _port(rest, text)
        if ipaddress.ip_address(_address(host, text)).version != 6:
            raise ValueError(f"{text!r}: only IPv6 addresses go in brackets")
    elif text.count(":") == 1:
        host, _, rest = text.partition(":")
        port = _port(rest, text)
        if ipaddress.ip_address(_address(host, text)).version != 4:
            raise ValueError(f"{text!r} is not an IPv4 address with a port")
    return str(ipaddress.ip_address(_address(host, text))), port


def _address(host: str, text: str) -> str:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{text!r} is not an IP address, ip:port or [IPv6]:port") from None
    return host


def _port(text: str, whole: str) -> int:
    if not text.isdigit() or not 0 < int(text) <= 65535:
        raise ValueError(f"{whole!r}: the port must be a number from 1 to 65535")
    return int(text)


def _dns_name(v: str) -> str:
    if len(v) > 253 or not _NAME_RE.match(v):
        raise ValueError(f"{v!r} is not a resource name (lowercase DNS subdomain)")
    return v


# --- BGPPeer ---------------------------------------------------------------------------------------


class SecretKeyRef(_Wire):
    """Kubernetes' SecretKeySelector: the BGP password is the ``key`` entry of Secret ``name``."""

    name: str
    key: str
    optional: bool | None = None


class BGPPassword(_Wire):
    secret_key_ref: SecretKeyRef = Field(alias="secretKeyRef")


class BGPPeerSpec(_Wire):
    node: str | None = None
    node_selector: str | None = None
    peer_ip: str | None = Field(default=None, alias="peerIP")
    peer_selector: str | None = None
    as_number: int | None = Field(default=None, alias="asNumber")
    password: BGPPassword | None = None
    keep_original_next_hop: bool = False
    next_hop_mode: Literal["Auto", "Self", "Keep"] | None = None
    source_address: Literal["UseNodeIP", "None"] = "UseNodeIP"
    max_restart_time: str = "120s"
    # BIRD's "allow local as N": Calico sets no upper bound, so neither do we.
    num_allowed_local_as_numbers: int | None = Field(default=None, alias="numAllowedLocalASNumbers",
                                                     ge=0, lt=2**32)
    ttl_security: int | None = Field(default=None, ge=0, le=255)
    filters: list[str] = Field(default_factory=list)
    reverse_peering: Literal["Auto", "Manual"] | None = None

    @field_validator("node_selector", "peer_selector")
    @classmethod
    def _selector(cls, v: str | None) -> str | None:
        return None if v is None else check_selector(v)

    @field_validator("peer_ip")
    @classmethod
    def _peer_ip(cls, v: str | None) -> str | None:
        if v is not None:
            parse_peer_ip(v)
        return v

    @field_validator("as_number", mode="before")
    @classmethod
    def _asn(cls, v: Any) -> int | None:
        return None if v is None else _parse_asn(v)

    @field_validator("max_restart_time")
    @classmethod
    def _duration(cls, v: str) -> str:
        parse_duration(v)  # the speaker uses it as a timer: a bad value must not get that far
        return v

    @field_validator("filters")
    @classmethod
    def _filters(cls, v: list[str]) -> list[str]:
        return [_dns_name(name) for name in v]

    @model_validator(mode="after")
    def _consistent(self) -> BGPPeerSpec:
        # The first three rules, their fields and their wording are Calico's (validateBGPPeerSpec).
        if self.node and self.node_selector:
            raise _FieldError("node", "must be empty when nodeSelector is specified")
        if self.peer_ip and self.peer_selector:
            raise _FieldError("peerIP", "must be empty when peerSelector is specified")
        if self.peer_selector and self.as_number is not None:
            raise _FieldError("asNumber", "must be empty when peerSelector is specified (the "
                                          "selected nodes' own AS numbers are used)")
        # Stricter than Calico on purpose: both would render a BGP session BIRD cannot open.
        if not self.peer_ip and not self.peer_selector:
            raise _FieldError("peerIP", "one of peerIP or peerSelector is required")
        if self.peer_ip and self.as_number is None:
            raise _FieldError("asNumber", "is required with peerIP (the remote peer's AS)")
        if self.keep_original_next_hop and self.next_hop_mode not in (None, "Keep"):
            raise _FieldError("nextHopMode", f"{self.next_hop_mode} contradicts "
                                             "keepOriginalNextHop: true")
        return self

    @property
    def effective_next_hop_mode(self) -> str:
        """nextHopMode, with the legacy ``keepOriginalNextHop: true`` meaning Keep."""
        return self.next_hop_mode or ("Keep" if self.keep_original_next_hop else "Auto")

    @property
    def is_global(self) -> bool:
        return not self.node and not self.node_selector

    def applies_to(self, node: str, labels: Mapping[str, str]) -> bool:
        """Whether the node named ``node`` with ``labels`` runs this peering (Calico's scope rule)."""
        if self.node:
            return self.node == node
        return self.node_selector is None or parse_selector(self.node_selector).matches(labels)

    def selects_peer(self, labels: Mapping[str, str]) -> bool:
        """For a peerSelector peering: whether a node with ``labels`` is one of the remotes."""
        return self.peer_selector is not None and parse_selector(self.peer_selector).matches(labels)


class BGPPeer(Resource):
    KIND = "BGPPeer"
    SHORT_NAMES = ("bgpp", "bgpps", "bp", "bps")
    PLURAL = "bgppeers"
    kind: str = "BGPPeer"
    spec: BGPPeerSpec


# --- BGPConfiguration ------------------------------------------------------------------------------


class CIDRRef(_Wire):
    cidr: str

    @field_validator("cidr")
    @classmethod
    def _cidr(cls, v: str) -> str:
        return str(ipaddress.ip_network(v, strict=False))


def community_error(value: str) -> str | None:
    """Why ``value`` is not a BGP community (standard ``aa:nn``, 16-bit parts; large ``aa:nn:mm``,
    32-bit parts), or None if it is one."""
    parts = value.split(":")
    if len(parts) not in (2, 3) or not all(p.isdigit() for p in parts):
        return "must be aa:nn (standard) or aa:nn:mm (large)"
    limit = 0xFFFF if len(parts) == 2 else 0xFFFFFFFF
    if any(int(p) > limit for p in parts):
        return f"each part of a {'standard' if limit == 0xFFFF else 'large'} community is 0-{limit}"
    return None


class Community(_Wire):
    name: str
    value: str

    @field_validator("value")
    @classmethod
    def _value(cls, v: str) -> str:
        error = community_error(v)
        if error:
            raise ValueError(error)
        return v


class PrefixAdvertisement(_Wire):
    cidr: str
    communities: list[str] = Field(default_factory=list)

    @field_validator("cidr")
    @classmethod
    def _cidr(cls, v: str) -> str:
        try:  # Calico: a CIDR or a single address
            ipaddress.ip_network(v, strict=False)
        except ValueError:
            raise ValueError(f"{v!r} is not a CIDR or an IP address") from None
        return v


class BGPConfigurationSpec(_Wire):
    log_severity_screen: Literal["Debug", "Info", "Warning", "Error", "Fatal"] = "Info"
    node_to_node_mesh_enabled: bool = True
    as_number: int = Field(default=DEFAULT_ASN, alias="asNumber")
    service_cluster_i_ps: list[CIDRRef] = Field(default_factory=list, alias="serviceClusterIPs")
    service_external_i_ps: list[CIDRRef] = Field(default_factory=list, alias="serviceExternalIPs")
    service_load_balancer_i_ps: list[CIDRRef] = Field(
        default_factory=list, alias="serviceLoadBalancerIPs"
    )
    listen_port: int = Field(default=179, ge=1, le=65535)
    bind_mode: Literal["None", "NodeIP"] = "None"
    communities: list[Community] = Field(default_factory=list)
    prefix_advertisements: list[PrefixAdvertisement] = Field(default_factory=list)
    node_mesh_password: BGPPassword | None = None
    node_mesh_max_restart_time: str = "120s"
    ignored_interfaces: list[str] = Field(default_factory=list)

    @field_validator("node_mesh_max_restart_time")
    @classmethod
    def _duration(cls, v: str) -> str:
        parse_duration(v)  # a bad value must not reach the agent, which uses it as a timer
        return v

    @field_validator("as_number", mode="before")
    @classmethod
    def _asn(cls, v: Any) -> int:
        return _parse_asn(v)

    @model_validator(mode="after")
    def _communities_used(self) -> BGPConfigurationSpec:
        # Calico's rules (validateBGPConfigurationSpec): named communities exist to be used by a
        # prefix advertisement, and an advertisement's community is a value or a defined name.
        if self.communities and not self.prefix_advertisements:
            raise _FieldError("communities", "communities are defined but not used in "
                                             "prefixAdvertisements")
        names = {c.name for c in self.communities}
        for i, adv in enumerate(self.prefix_advertisements):
            for j, community in enumerate(adv.communities):
                if community not in names and community_error(community):
                    raise _FieldError(f"prefixAdvertisements.{i}.communities.{j}",
                                      f"{community!r} is neither a community value (aa:nn or "
                                      "aa:nn:mm) nor the name of one in communities")
        return self


def check_config_name(name: str, kind: str) -> None:
    """Calico reads ``default`` and ``node.<node>`` only: any other name would be silently ignored."""
    node = name.removeprefix("node.")
    if name != "default" and (node == name or not node):
        raise _FieldError("metadata.name", f"a {kind} is named 'default' (global) or "
                                           "'node.<node name>' (one node); others are never read")


# What a node.<name> BGPConfiguration may override (CALICO-REFERENCE); the rest is global only and
# would be ignored there, so setting it is refused rather than silently dropped.
_PER_NODE = {"listen_port", "log_severity_screen", "prefix_advertisements", "communities"}


class BGPConfiguration(Resource):
    KIND = "BGPConfiguration"
    SHORT_NAMES = ("bgpconfig", "bgpconfigs")
    PLURAL = "bgpconfigurations"
    kind: str = "BGPConfiguration"
    spec: BGPConfigurationSpec = Field(default_factory=BGPConfigurationSpec)

    @model_validator(mode="after")
    def _scope(self) -> BGPConfiguration:
        check_config_name(self.name, self.KIND)
        if self.name == "default":
            return self
        # Compared with the defaults, not model_fields_set: what we store has every field written.
        defaults = BGPConfigurationSpec()
        for attr in sorted(set(BGPConfigurationSpec.model_fields) - _PER_NODE):
            if getattr(self.spec, attr) != getattr(defaults, attr):
                wire = BGPConfigurationSpec.model_fields[attr].alias
                raise _FieldError(f"spec.{wire}", "is global: set it in the 'default' "
                                                  "BGPConfiguration (node.<name> may set listenPort, "
                                                  "logSeverityScreen, prefixAdvertisements, communities)")
        return self


# --- BGPFilter -------------------------------------------------------------------------------------


class FilterPrefixLength(_Wire):
    """Matched routes' prefix lengths, inclusive; bounded per family by the rule."""

    min: int | None = Field(default=None, ge=0)
    max: int | None = Field(default=None, ge=0)


class _FilterRule(_Wire):
    action: Literal["Accept", "Reject"]
    match_operator: Literal["Equal", "NotEqual", "In", "NotIn"] | None = None
    cidr: str | None = None
    prefix_length: FilterPrefixLength | None = None
    source: Literal["RemotePeers"] | None = None
    interface: str | None = None

    VERSION: ClassVar[int] = 4

    @field_validator("cidr")
    @classmethod
    def _cidr(cls, v: str | None) -> str | None:
        if v is None:
            return v
        try:
            net = ipaddress.ip_network(v, strict=True)
        except ValueError as exc:
            raise ValueError(f"{v!r} is not a valid CIDR with host bits zero ({exc})") from None
        if net.version != cls.VERSION:
            raise ValueError(f"{v} is not an IPv{cls.VERSION} CIDR")
        return str(net)

    @model_validator(mode="after")
    def _paired(self) -> _FilterRule:
        # Calico: a rule matches everything, or a CIDR with an operator; never half of one.
        if (self.cidr is None) != (self.match_operator is None):
            missing = "matchOperator" if self.match_operator is None else "cidr"
            raise _FieldError(missing, "cidr and matchOperator go together (set both or neither)")
        self._check_prefix_length()
        return self

    def _check_prefix_length(self) -> None:
        bounds, top = self.prefix_length, 32 if self.VERSION == 4 else 128
        if bounds is None:
            return
        for name in ("min", "max"):
            value = getattr(bounds, name)
            if value is not None and value > top:
                raise _FieldError(f"prefixLength.{name}", f"{value} is longer than an IPv{self.VERSION} "
                                                          f"prefix (at most {top})")
        if bounds.min is not None and bounds.max is not None and bounds.min > bounds.max:
            raise _FieldError("prefixLength.max", f"must be at least min ({bounds.min})")


class BGPFilterRuleV4(_FilterRule):
    VERSION: ClassVar[int] = 4


class BGPFilterRuleV6(_FilterRule):
    VERSION: ClassVar[int] = 6


class BGPFilterSpec(_Wire):
    export_v4: list[BGPFilterRuleV4] = Field(default_factory=list, alias="exportV4")
    import_v4: list[BGPFilterRuleV4] = Field(default_factory=list, alias="importV4")
    export_v6: list[BGPFilterRuleV6] = Field(default_factory=list, alias="exportV6")
    import_v6: list[BGPFilterRuleV6] = Field(default_factory=list, alias="importV6")


class BGPFilter(Resource):
    KIND = "BGPFilter"
    PLURAL = "bgpfilters"
    kind: str = "BGPFilter"
    spec: BGPFilterSpec = Field(default_factory=BGPFilterSpec)


register(BGPConfiguration, BGPPeer, BGPFilter)
