"""FelixConfiguration: the fields pycalico honours, plus the common Calico ones users write.

Purely computational; no I/O. ``default`` is global; ``node.<name>`` overrides it for one node.
Unknown fields are refused, as in every model: a misspelt setting must not be silently ignored.
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from crds.bgp import check_config_name
from crds.duration import parse_duration
from crds.models import Resource, _FieldError, _Wire, register


class RouteTableRange(_Wire):
    min: int = Field(ge=1, le=250)
    max: int = Field(ge=1, le=250)

    @model_validator(mode="after")
    def _ordered(self) -> RouteTableRange:
        if self.min > self.max:
            raise _FieldError("max", f"must be at least min ({self.min})")
        return self


class FelixConfigurationSpec(_Wire):
    # The agent honours routeRefreshInterval, ipipMTU and the vxlan MTU/VNI/port
    # (felix.cluster.HONOURED_FELIX_FIELDS); it names any other field set here in a warning.
    route_refresh_interval: str = "90s"
    route_table_range: RouteTableRange | None = None  # None: Calico's default, 1-250
    log_severity_screen: Literal["Debug", "Info", "Warning", "Error", "Fatal"] = "Info"
    # Accepted as Calico users write them (CALICO-REFERENCE: devices, encapsulation, route owner).
    interface_prefix: str | None = None
    ipip_enabled: bool | None = Field(default=None, alias="ipipEnabled")
    # MTUs: 0 means "detect", as in Calico.
    ipip_mtu: int | None = Field(default=None, alias="ipipMTU", ge=0, le=65535)
    vxlan_enabled: bool | None = Field(default=None, alias="vxlanEnabled")
    vxlan_mtu: int | None = Field(default=None, alias="vxlanMTU", ge=0, le=65535)
    vxlan_vni: int | None = Field(default=None, alias="vxlanVNI", ge=1, le=2**24 - 1)
    vxlan_port: int | None = Field(default=None, alias="vxlanPort", ge=1, le=65535)
    device_route_protocol: int | None = Field(default=None, ge=0, le=255)
    bpf_enabled: bool | None = Field(default=None, alias="bpfEnabled")
    iptables_backend: Literal["Legacy", "NFT", "Auto"] | None = None

    @field_validator("route_refresh_interval")
    @classmethod
    def _duration(cls, v: str) -> str:
        parse_duration(v)  # the agent's resync timer: a bad value must not reach it
        return v

    @property
    def route_refresh_seconds(self) -> float:
        return parse_duration(self.route_refresh_interval)


class FelixConfiguration(Resource):
    KIND = "FelixConfiguration"
    SHORT_NAMES = ("felixconfig", "felixconfigs")
    PLURAL = "felixconfigurations"
    kind: str = "FelixConfiguration"
    spec: FelixConfigurationSpec = Field(default_factory=FelixConfigurationSpec)

    @model_validator(mode="after")
    def _named(self) -> FelixConfiguration:
        check_config_name(self.name, self.KIND)
        return self


register(FelixConfiguration)
