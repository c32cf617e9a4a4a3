"""The lab's fixed shapes: names, addresses, the seeded pool and BGP configuration, and what each
``--encap`` mode means (pool fields, one subnet or two behind a router). Purely computational.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

FABRIC_NET = "10.99.0"
SUBNET_B = "10.99.1"  # the second subnet of a *-crosssubnet lab
ETCD_IP = f"{FABRIC_NET}.254"
ROUTER_HOST = 253  # the router's host part on each subnet
POOL = {"apiVersion": "projectcalico.org/v3", "kind": "IPPool",
        "metadata": {"name": "default-ipv4-ippool"},
        "spec": {"cidr": "10.244.0.0/16", "blockSize": 26, "ipipMode": "Never",
                 "vxlanMode": "Never", "natOutgoing": True, "nodeSelector": "all()"}}
BGPCONFIG = {"apiVersion": "projectcalico.org/v3", "kind": "BGPConfiguration",
             "metadata": {"name": "default"},
             "spec": {"asNumber": 64512, "nodeToNodeMeshEnabled": True, "logSeverityScreen": "Info"}}
DATASTORES = ("kubernetes", "etcdv3")
# --route-reflectors: the source article's setup. The reflectors are extra nodes with this cluster
# ID and label; one global BGPPeer makes every node peer with them; the mesh is turned off.
RR_CLUSTER_ID = "244.0.0.1"
RR_LABEL = ("route-reflector", "true")
RR_PEER = {"apiVersion": "projectcalico.org/v3", "kind": "BGPPeer",
           "metadata": {"name": "peer-with-route-reflectors"},
           "spec": {"nodeSelector": "all()", "peerSelector": "route-reflector == 'true'"}}
# --encap MODE -> the pool's (ipipMode, vxlanMode). The ctl parser's choices must match (unit test).
ENCAPS = {"none": ("Never", "Never"), "vxlan": ("Never", "Always"),
          "vxlan-crosssubnet": ("Never", "CrossSubnet"), "ipip": ("Always", "Never"),
          "ipip-crosssubnet": ("CrossSubnet", "Never")}
_NAME_RE = re.compile(r"^[a-z][a-z0-9]{0,5}$")


class LabError(RuntimeError):
    pass


def check_name(name: str) -> str:
    """A lab name: 1-6 lowercase letters/digits starting with a letter. Namespace and interface
    names are built from it, and it is a path component (``down`` removes LAB_ROOT/<name>), so
    every entry point checks it before using it."""
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise LabError(f"--name: {name!r} must be 1-6 lowercase letters/digits starting with a "
                       "letter (namespace and interface names are built from it)")
    return name


def check_encap(mode: str, what: str = "--encap") -> str:
    if mode not in ENCAPS:
        raise LabError(f"{what}: {mode!r} is not one of {', '.join(ENCAPS)}")
    return mode


def pool_modes(mode: str) -> dict[str, str]:
    """The IPPool fields ``--encap mode`` sets."""
    ipip, vxlan = ENCAPS[check_encap(mode)]
    return {"ipipMode": ipip, "vxlanMode": vxlan}


def pool_for(mode: str) -> dict:
    """The lab's default pool as seeded under ``--encap mode``."""
    return {**POOL, "spec": {**POOL["spec"], **pool_modes(mode)}}


def two_subnets(mode: str) -> bool:
    """Whether ``mode`` runs on the two-subnet topology (the only one where CrossSubnet differs)."""
    return check_encap(mode).endswith("-crosssubnet")


def check_encap_change(old: str, new: str) -> None:
    """``set-encap`` may change the pool, never the topology: that is built once, by ``up``."""
    if two_subnets(check_encap(new, "MODE")) != two_subnets(old):
        have, need = ("two subnets", "one subnet") if two_subnets(old) else ("one subnet", "two subnets")
        raise LabError(f"set-encap {new}: {new} runs on {need}, but this lab was brought up with "
                       f"--encap {old} on {have}; the topology is fixed at 'lab up' (lab down, "
                       f"then lab up --encap {new})")


@dataclass(frozen=True)
class NodeLink:
    """Where node I is wired: its fabric bridge, its eth0 address and its default gateway."""
    bridge: str
    address: str
    gateway: str


def node_link(mode: str, i: int) -> NodeLink:
    if not two_subnets(mode):  # the gateway is only for proxy ARP: onlink, nothing forwards
        return NodeLink("br0", f"{FABRIC_NET}.{i}/24", ETCD_IP)
    net, bridge = (FABRIC_NET, "br0") if i % 2 else (SUBNET_B, "br1")
    return NodeLink(bridge, f"{net}.{i}/24", f"{net}.{ROUTER_HOST}")


def expected_peers(i: int, nodes: int, reflectors: int) -> int:
    """Sessions node ``i`` (1-based; the reflectors are the last ``reflectors``) should have up."""
    if not reflectors:
        return nodes - 1
    return nodes + reflectors - 1 if i > nodes else reflectors
