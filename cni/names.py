"""Calico's names for a pod's objects: purely computational.

    >>> host_ifname("default", "pod-1")
    'cali83dbd022cd5'
    >>> wep_name("node1", "pod-1", "eth0")
    'node1-k8s-pod--1-eth0'
    >>> handle_id("k8s-pod-network", "abc123")
    'k8s-pod-network.abc123'
"""
from __future__ import annotations

import hashlib

HOST_PREFIX = "cali"


def host_ifname(namespace: str, pod: str) -> str:
    """``cali`` + the first 11 hex digits of sha1("<namespace>.<pod>"): 15 characters, stable."""
    return HOST_PREFIX + hashlib.sha1(f"{namespace}.{pod}".encode()).hexdigest()[:11]


def wep_name(node: str, pod: str, endpoint: str) -> str:
    """``<node>-k8s-<pod>-<endpoint>``, each segment's '-' doubled so the split is unambiguous."""
    return "-".join(part.replace("-", "--") for part in (node, "k8s", pod, endpoint))


def handle_id(network: str, container_id: str) -> str:
    """The IPAM handle of a container's addresses, as Calico's CNI plugin names it."""
    return f"{network}.{container_id}"
