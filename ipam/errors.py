"""IPAM errors. Permanent: ``NoEligiblePool``, ``PoolExhausted``. Transient: ``RetriesExhausted``."""
from __future__ import annotations


class IPAMError(Exception):
    """Base of every IPAM failure; the message names what failed."""


class NoEligiblePool(IPAMError):
    """No enabled IPv4 pool to assign from, or a requested pool is unknown, disabled or unusable."""


class PoolExhausted(IPAMError):
    """Every eligible pool is full for this node: its blocks are full and no free block is left."""


class RetriesExhausted(IPAMError):
    """Compare-and-swap kept conflicting with other writers; the caller may retry later."""
