"""``pycalico-ipam``: the IPAM plugin the main plugin delegates to (or any CNI plugin can use).

ADD assigns one IPv4 address to the handle ``<network name>.<CNI_CONTAINERID>`` on this node and
prints an IPAM result; DEL releases everything the handle holds (idempotent); CHECK verifies the
handle still holds an address. ``ipam.ipv4_pools`` lists pool names or pool CIDRs (as Calico).

Concurrent ADDs on one node would all compare-and-swap the same block; like Calico's host-wide IPAM
lock, a per-node flock (``/run/pycalico/<node>/ipam.lock``, beside the agent's files) serialises them.
Per node, not per host, so lab nodes sharing one machine still race each other for blocks through
the datastore. The directory is 0700 and the lock 0600 whatever the umask: a local user who could
open the lock could hold it and stall every ADD and DEL on the node.
"""
from __future__ import annotations

import fcntl
import ipaddress
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import hostio
from cni.common import open_datastore
from cni.config import Invocation, NetConf
from cni.errors import CHECK_FAILED, IO_FAILURE, TRY_AGAIN_LATER, CNIError
from cni.names import handle_id
from cni.runtime import run
from crds import IPPool
from datastore import Datastore
from felix.status import RUN_ROOT
from ipam import IPAM


def main() -> None:
    sys.exit(run({"ADD": cmd_add, "DEL": cmd_del, "CHECK": cmd_check}))


def cmd_add(inv: Invocation, conf: NetConf) -> dict[str, Any]:
    attrs = {"node": conf.nodename, "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if inv.pod_name and inv.pod_namespace:
        attrs |= {"namespace": inv.pod_namespace, "pod": inv.pod_name}
    with node_lock(conf.nodename), open_datastore(conf) as ds:
        address = IPAM(ds).assign(node=conf.nodename, handle=handle_id(conf.name, inv.container_id),
                                  attrs=attrs, pools=pool_names(ds, conf.ipv4_pools) or None)
    return ipam_result(conf.cni_version, address)


def cmd_del(inv: Invocation, conf: NetConf) -> None:
    with node_lock(conf.nodename), open_datastore(conf) as ds:
        IPAM(ds).release(handle_id(conf.name, inv.container_id))


def cmd_check(inv: Invocation, conf: NetConf) -> None:
    handle = handle_id(conf.name, inv.container_id)
    with open_datastore(conf) as ds:
        if not IPAM(ds).addresses(handle):
            raise CNIError(CHECK_FAILED, f"IPAM handle {handle} holds no address")


def pool_names(ds: Datastore, entries: tuple[str, ...]) -> list[str]:
    """Map CIDR entries to the names of the pools with that CIDR; unknown entries stay as given."""
    by_cidr = {p.spec.cidr: p.name for p in ds.list("IPPool").items if isinstance(p, IPPool)}
    out = []
    for entry in entries:
        try:
            out.append(by_cidr.get(str(ipaddress.ip_network(entry)), entry))
        except ValueError:
            out.append(entry)
    return out


def ipam_result(cni_version: str, address: ipaddress.IPv4Address) -> dict[str, Any]:
    ip: dict[str, Any] = {"address": f"{address}/32"}
    if cni_version != "1.0.0":
        ip["version"] = "4"  # 0.3.x / 0.4.0 results carry the family
    return {"cniVersion": cni_version, "ips": [ip], "routes": [{"dst": "0.0.0.0/0"}], "dns": {}}


LOCK_TIMEOUT = 60.0


@contextmanager
def node_lock(node: str) -> Iterator[None]:
    """Hold the node's IPAM lock; the kernel drops it if this process dies."""
    try:
        fd = hostio.open_private(hostio.private_dir(RUN_ROOT / node) / "ipam.lock", append=True)
    except OSError as exc:  # UnsafePath included: a symlink or another user's directory
        raise CNIError(IO_FAILURE, f"IPAM lock for node {node}: cannot open it under {RUN_ROOT}",
                       str(exc)) from None
    try:
        deadline = time.monotonic() + LOCK_TIMEOUT
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise CNIError(TRY_AGAIN_LATER, f"IPAM lock for node {node} is busy") from None
                time.sleep(0.01)
        yield
    finally:
        os.close(fd)
