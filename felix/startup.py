"""What calico-node does once at start-up, before its loop: its Node registered with its address,
and the default IPv4 pool created if the cluster has no pool at all.

Does I/O through a Datastore. The default pool comes from calico-node's environment:
``CALICO_IPV4POOL_CIDR`` (192.168.0.0/16), ``_BLOCK_SIZE`` (26), ``_IPIP`` and ``_VXLAN``
(Never: this project's encapsulation arrives with the Felix issue), ``_NAT_OUTGOING`` (true),
``_NODE_SELECTOR`` (all()); ``NO_DEFAULT_POOLS=true`` creates none. A bad value is refused
naming the variable, before anything is written.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping

from crds import InvalidResource, IPPool, load
from datastore.base import AlreadyExists, Datastore

log = logging.getLogger(__name__)

DEFAULT_POOL = "default-ipv4-ippool"
_ENV = {"cidr": ("CALICO_IPV4POOL_CIDR", "192.168.0.0/16"),
        "blockSize": ("CALICO_IPV4POOL_BLOCK_SIZE", "26"),
        "ipipMode": ("CALICO_IPV4POOL_IPIP", "Never"),
        "vxlanMode": ("CALICO_IPV4POOL_VXLAN", "Never"),
        "natOutgoing": ("CALICO_IPV4POOL_NAT_OUTGOING", "true"),
        "nodeSelector": ("CALICO_IPV4POOL_NODE_SELECTOR", "all()")}


def default_pool(env: Mapping[str, str]) -> IPPool:
    """The pool calico-node would create from ``env``; ValueError naming the variable."""
    spec = {field: env.get(var) or default for field, (var, default) in _ENV.items()}
    try:
        spec["blockSize"] = int(spec["blockSize"])
    except ValueError:
        raise ValueError(f"CALICO_IPV4POOL_BLOCK_SIZE: {spec['blockSize']!r} is not a number") from None
    nat = spec["natOutgoing"].lower()
    if nat not in ("true", "false"):
        raise ValueError(f"CALICO_IPV4POOL_NAT_OUTGOING: {spec['natOutgoing']!r} is not true or false")
    spec["natOutgoing"] = nat == "true"
    try:
        pool = load({"apiVersion": "projectcalico.org/v3", "kind": "IPPool",
                     "metadata": {"name": DEFAULT_POOL}, "spec": spec})
    except InvalidResource as exc:
        field = exc.field.rsplit(".", 1)[-1]
        var = _ENV.get(field, (exc.field,))[0]
        raise ValueError(f"{var}: {exc.reason}") from None
    assert isinstance(pool, IPPool)
    return pool


def ensure_default_pool(ds: Datastore, env: Mapping[str, str]) -> IPPool | None:
    """Create the default pool if no pool exists (and NO_DEFAULT_POOLS is not true); return it.
    Another node creating it at the same moment is fine: its pool stands."""
    if env.get("NO_DEFAULT_POOLS", "").lower() == "true":
        return None
    pool = default_pool(env)  # checked even when not needed: a bad manifest fails on every node
    if ds.list("IPPool").items:
        return None
    try:
        created = ds.create(pool)
    except AlreadyExists:
        return None
    log.info("created the default IPv4 pool", extra={"cidr": pool.spec.cidr})
    assert isinstance(created, IPPool)
    return created
