"""IPAMHandle, IPReservation and IPAMConfig, with Calico's field names, defaults and validation.

Purely computational; no I/O. (IPAMBlock and BlockAffinity are in ``crds.models``.)
"""
from __future__ import annotations

import ipaddress

from pydantic import Field, field_validator, model_validator

from crds.models import Resource, _FieldError, _Wire, register


def _strict_cidr(v: str) -> str:
    try:
        ipaddress.ip_network(v, strict=True)
    except ValueError as exc:
        raise ValueError(f"{v!r} is not a valid CIDR with host bits zero ({exc})") from None
    return v


class IPAMHandleSpec(_Wire):
    handle_id: str = Field(alias="handleID", min_length=1)
    # block CIDR -> how many addresses this handle holds in it ("10.244.1.0/26": 1)
    block: dict[str, int] = Field(default_factory=dict)
    deleted: bool = False

    @field_validator("block")
    @classmethod
    def _block(cls, v: dict[str, int]) -> dict[str, int]:
        for cidr, count in v.items():
            _strict_cidr(cidr)
            if count < 0:
                raise ValueError(f"{cidr}: a handle holds 0 or more addresses, not {count}")
        return v


class IPAMHandle(Resource):
    KIND = "IPAMHandle"
    PLURAL = "ipamhandles"
    kind: str = "IPAMHandle"
    spec: IPAMHandleSpec


class IPReservationSpec(_Wire):
    reserved_cidrs: list[str] = Field(default_factory=list, alias="reservedCIDRs")

    @field_validator("reserved_cidrs")
    @classmethod
    def _cidrs(cls, v: list[str]) -> list[str]:
        # Calico takes single addresses as well as CIDRs; the text is kept as the user wrote it.
        return [item if "/" not in item and _is_address(item) else _strict_cidr(item) for item in v]


def _is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


class IPReservation(Resource):
    KIND = "IPReservation"
    SHORT_NAMES = ("reservation", "reservations")
    PLURAL = "ipreservations"
    kind: str = "IPReservation"
    spec: IPReservationSpec = Field(default_factory=IPReservationSpec)


class IPAMConfigSpec(_Wire):
    strict_affinity: bool = False
    auto_allocate_blocks: bool = True
    # 0 means Calico's built-in limit (20 blocks per host)
    max_blocks_per_host: int = Field(default=0, ge=0)


class IPAMConfig(Resource):
    KIND = "IPAMConfig"
    PLURAL = "ipamconfigs"
    kind: str = "IPAMConfig"
    spec: IPAMConfigSpec = Field(default_factory=IPAMConfigSpec)

    @model_validator(mode="after")
    def _singleton(self) -> IPAMConfig:
        # Calico reads only the one named "default": any other name would be silently ignored.
        if self.metadata.name != "default":
            raise _FieldError("metadata.name", "the IPAMConfig must be named 'default'")
        return self


register(IPAMHandle, IPReservation, IPAMConfig)
