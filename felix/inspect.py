"""Compare desired routes with what the kernel holds. Pure: no I/O, no pyroute2.

``compare`` feeds ``pycalicoctl node routes``; ``route_matches`` is the one equality test that
``felix.dataplane`` also uses to decide "no write needed", so the CLI and the writer never disagree.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network

from felix.calc import DesiredRoute, dst_key, key_network, network_order


@dataclass(frozen=True)
class KernelRoute:
    """An IPv4 route as dumped from the kernel (type/scope as names: 'unicast', 'link', ...)."""

    dst: IPv4Network
    type: str
    dev: str | None
    gateway: IPv4Address | None
    scope: str
    proto: int
    onlink: bool = False


# RouteStatus.state: one machine-readable word per route, so no client parses the reason text.
OK, MISSING, DIFFERS, NOT_DESIRED_STATE = "ok", "missing", "differs", "not-desired"


@dataclass(frozen=True)
class RouteStatus:
    dst: IPv4Network
    reason: str
    desired: DesiredRoute | None
    kernel: KernelRoute | None
    in_sync: bool

    @property
    def state(self) -> str:
        """``ok`` | ``missing`` (desired, not in the kernel) | ``differs`` | ``not-desired``."""
        if self.desired is None:
            return NOT_DESIRED_STATE
        if self.kernel is None:
            return MISSING
        return OK if self.in_sync else DIFFERS


NOT_DESIRED = "not desired (stale: removed on the next apply)"


def route_matches(desired: DesiredRoute, kernel: KernelRoute) -> bool:
    """True when the kernel route already is the desired one (so no write is needed).

    A desired gateway route carries no dev: the kernel resolves the next hop to a device, and any
    device it picked is fine.
    """
    return (
        desired.key == dst_key(kernel.dst)
        and desired.type == kernel.type
        and desired.gateway == kernel.gateway
        and desired.scope == kernel.scope
        and (desired.dev is None or desired.dev == kernel.dev)
        and desired.onlink == kernel.onlink
    )


def compare(
    desired: Mapping[int, DesiredRoute], kernel: Mapping[int, KernelRoute]
) -> list[RouteStatus]:
    """One status per destination that is desired or in the kernel, in network order (address,
    then length: ``calc.network_order``; both mappings by ``calc.dst_key``, as
    ``RouteCalc.desired`` and ``RouteTable.kernel_routes``)."""
    keys = sorted(desired.keys() | kernel.keys(), key=network_order)
    return [_status(key, desired.get(key), kernel.get(key)) for key in keys]


def _status(key: int, want: DesiredRoute | None, have: KernelRoute | None) -> RouteStatus:
    in_sync = want is not None and have is not None and route_matches(want, have)
    reason = want.reason if want is not None else NOT_DESIRED
    dst = have.dst if have is not None else key_network(key)
    return RouteStatus(dst=dst, reason=reason, desired=want, kernel=have, in_sync=in_sync)
