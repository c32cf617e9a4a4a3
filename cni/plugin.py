"""``pycalico-cni``: the main CNI plugin (spec 1.0 ADD, DEL, CHECK, VERSION).

ADD: address from the delegated IPAM plugin -> veth pair (``cni.dataplane``) -> WorkloadEndpoint.
Each step registers its undo; a failure runs them in reverse, so a failed ADD leaves nothing behind.
Releasing the address is retried while the datastore is unreachable (a short etcd outage must not
leak it). The host /32 route is not ours: felix programs it from the WorkloadEndpoint.
ADD is idempotent per container ID (runtimes repeat it after a timeout): the IPAM handle returns the
address it holds, a pod already wired with it is left alone (same veth, same ifindex) and a half
wired one is wired again; if an earlier ADD of this container completed, a failure of the repeat
releases nothing (the runtime's DEL does).
DEL is idempotent: the pod end of the veth (which takes the host end along), the IPAM handle, and
the WorkloadEndpoint if it still belongs to this container (a newer sandbox of the same pod keeps
its endpoint and interface).
"""
from __future__ import annotations

import ipaddress
import logging
import os
import sys
from contextlib import ExitStack
from typing import Any

import tenacity

from cni import dataplane
from cni.common import open_datastore
from cni.config import Invocation, NetConf
from cni.delegate import delegate
from cni.errors import (
    CHECK_FAILED, DELEGATE_FAILURE, INVALID_ENV, TRY_AGAIN_LATER, UNKNOWN_CONTAINER, CNIError,
)
from cni.names import host_ifname, wep_name
from cni.runtime import run
from crds import ObjectMeta, WorkloadEndpoint
from datastore import Datastore, NotFound

log = logging.getLogger(__name__)


def main() -> None:
    sys.exit(run({"ADD": cmd_add, "DEL": cmd_del, "CHECK": cmd_check}))


def cmd_add(inv: Invocation, conf: NetConf) -> dict[str, Any]:
    namespace, pod = _pod(inv)
    if not os.path.exists(inv.netns):  # before anything is written
        raise CNIError(UNKNOWN_CONTAINER, f"network namespace {inv.netns} does not exist")
    host = host_ifname(namespace, pod)
    with open_datastore(conf) as ds, ExitStack() as undo:
        done_before = _own_wep(ds, conf, inv, namespace, pod)  # an earlier ADD of this container
        ipam_result = delegate("ADD", inv, conf)
        if done_before is None:
            undo.callback(_best_effort, "release the address", release_address, inv, conf)
        address = _single_ipv4(ipam_result)
        wired = dataplane.wired_pod(host, inv.netns, inv.ifname, address)
        if wired is None:  # not wired yet, or only half: wire it (again) with this address
            wired = dataplane.wire_pod(host, inv.netns, inv.ifname, address, mtu=conf.mtu)
            undo.callback(_best_effort, "remove the veth", dataplane.unwire_pod, inv.netns,
                          inv.ifname, host)
        wep = workload_endpoint(inv, conf, wired, address)
        if not _same_wep(done_before, wep):
            ds.apply(wep)
        undo.pop_all()  # success: keep everything
    log.info("cni add done", extra={"pod": f"{namespace}/{pod}", "ip": str(address), "if": host})
    return add_result(conf.cni_version, inv, wired, address, ipam_result)


def cmd_del(inv: Invocation, conf: NetConf) -> None:
    namespace, pod = inv.pod_namespace, inv.pod_name
    with open_datastore(conf) as ds:
        wep = _current_wep(ds, conf, inv, namespace, pod) if namespace and pod else None
        ours = wep is not None and wep.spec.container_id in ("", inv.container_id)
        host = host_ifname(namespace, pod) if ours and namespace and pod else None
        dataplane.unwire_pod(inv.netns or None, inv.ifname, host)
        delegate("DEL", inv, conf)
        if ours:
            try:
                ds.delete("WorkloadEndpoint", wep.name, namespace,
                          revision=wep.metadata.resource_version)
            except NotFound:
                pass  # a concurrent DEL finished first
        elif wep is not None:
            log.info("endpoint %s belongs to container %s; kept", wep.name, wep.spec.container_id)


def cmd_check(inv: Invocation, conf: NetConf) -> None:
    namespace, pod = _pod(inv)
    host = host_ifname(namespace, pod)
    delegate("CHECK", inv, conf)
    with open_datastore(conf) as ds:
        wep = _current_wep(ds, conf, inv, namespace, pod)
    if wep is None or wep.spec.container_id != inv.container_id:
        raise CNIError(CHECK_FAILED, f"no WorkloadEndpoint for container {inv.container_id}")
    if not dataplane.host_link_exists(host):
        raise CNIError(CHECK_FAILED, f"host interface {host} is missing")
    addrs, _ = dataplane.pod_state(inv.netns, inv.ifname)
    if sorted(addrs) != sorted(wep.spec.ip_networks):
        raise CNIError(CHECK_FAILED, f"{inv.ifname} in {inv.netns} has {addrs}, "
                       f"expected {wep.spec.ip_networks}")


def workload_endpoint(inv: Invocation, conf: NetConf, wired: dataplane.Wired,
                      address: ipaddress.IPv4Address) -> WorkloadEndpoint:
    namespace, pod = _pod(inv)
    meta = ObjectMeta(name=wep_name(conf.nodename, pod, inv.ifname), namespace=namespace, labels={
        "projectcalico.org/namespace": namespace, "projectcalico.org/orchestrator": "k8s"})
    return WorkloadEndpoint(metadata=meta, spec={
        "orchestrator": "k8s", "node": conf.nodename, "pod": pod, "endpoint": inv.ifname,
        "containerID": inv.container_id, "ipNetworks": [f"{address}/32"],
        "interfaceName": wired.host_ifname, "mac": wired.pod_mac, "profiles": [f"kns.{namespace}"],
    })


def add_result(cni_version: str, inv: Invocation, wired: dataplane.Wired,
               address: ipaddress.IPv4Address, ipam_result: dict[str, Any]) -> dict[str, Any]:
    ip: dict[str, Any] = {"address": f"{address}/32", "interface": 1}
    if cni_version != "1.0.0":
        ip["version"] = "4"
    return {
        "cniVersion": cni_version,
        "interfaces": [{"name": wired.host_ifname, "mac": wired.host_mac},
                       {"name": wired.pod_ifname, "mac": wired.pod_mac, "sandbox": inv.netns}],
        "ips": [ip],
        "routes": ipam_result.get("routes") or [{"dst": "0.0.0.0/0"}],
        "dns": ipam_result.get("dns") or {},
    }


def _pod(inv: Invocation) -> tuple[str, str]:
    if not inv.pod_namespace or not inv.pod_name:
        raise CNIError(INVALID_ENV, "CNI_ARGS: K8S_POD_NAMESPACE and K8S_POD_NAME are required")
    return inv.pod_namespace, inv.pod_name


def _current_wep(ds: Datastore, conf: NetConf, inv: Invocation, namespace: str,
                 pod: str) -> WorkloadEndpoint | None:
    try:
        wep = ds.get("WorkloadEndpoint", wep_name(conf.nodename, pod, inv.ifname), namespace)
    except NotFound:
        return None
    assert isinstance(wep, WorkloadEndpoint), "Bug: datastore returned a non-endpoint"
    return wep


def _own_wep(ds: Datastore, conf: NetConf, inv: Invocation, namespace: str,
             pod: str) -> WorkloadEndpoint | None:
    wep = _current_wep(ds, conf, inv, namespace, pod)
    return wep if wep is not None and wep.spec.container_id == inv.container_id else None


def _same_wep(stored: WorkloadEndpoint | None, wanted: WorkloadEndpoint) -> bool:
    return (stored is not None and stored.spec == wanted.spec
            and stored.metadata.labels == wanted.metadata.labels)


RELEASE_DEADLINE = 20.0  # seconds: rides out a short datastore outage (an etcd restart, an election)


def release_address(inv: Invocation, conf: NetConf) -> None:
    """The IPAM plugin's DEL, retried with backoff while it says "try again later" (code 11).

    Undo of a failed ADD: if it gave up at once, an etcd that is unreachable for a few seconds
    would leak the address. A retried ADD never takes a second one (the handle keeps it).
    """
    for attempt in tenacity.Retrying(
            retry=tenacity.retry_if_exception(
                lambda exc: isinstance(exc, CNIError) and exc.code == TRY_AGAIN_LATER),
            stop=tenacity.stop_after_delay(RELEASE_DEADLINE),
            wait=tenacity.wait_exponential_jitter(initial=0.2, max=2.0),
            before_sleep=_log_release_retry, reraise=True):
        with attempt:
            delegate("DEL", inv, conf)


def _log_release_retry(state: tenacity.RetryCallState) -> None:
    level = logging.WARNING if state.attempt_number == 1 else logging.DEBUG
    log.log(level, "releasing the address failed; retrying", extra={
        "attempt": state.attempt_number, "reason": str(state.outcome.exception())})


def _single_ipv4(result: dict[str, Any] | None) -> ipaddress.IPv4Address:
    try:
        [entry] = [ip for ip in (result or {}).get("ips", [])
                   if ipaddress.ip_interface(ip["address"]).version == 4]
        return ipaddress.ip_interface(entry["address"]).ip
    except (ValueError, KeyError, TypeError):
        raise CNIError(DELEGATE_FAILURE, "IPAM result must hold exactly one IPv4 address",
                       str(result)) from None


def _best_effort(what: str, fn, *args) -> None:
    """Undo step after a failed ADD: log a failure (the original error is what we report)."""
    try:
        fn(*args)
    except Exception as exc:  # noqa: BLE001 — reported in the log; the ADD error wins
        log.error("cleanup after failed ADD: could not %s: %s", what, exc)
