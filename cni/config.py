"""The invocation: CNI_* environment variables and the network configuration on stdin.

Field names follow Calico's conflist: ``datastore_type`` (etcdv3 | kubernetes), ``etcd_endpoints``,
``kubernetes.kubeconfig``, ``nodename``,
``ipam.type``, ``ipam.ipv4_pools`` (names or CIDRs), ``log_level``, ``log_file_path``.
"""
from __future__ import annotations

import json
import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cni.errors import (
    DECODE_FAILURE, INCOMPATIBLE_VERSION, INVALID_CONFIG, INVALID_ENV, CNIError,
)

SUPPORTED_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0")
NODENAME_FILE = "/var/lib/calico/nodename"
_DNS_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
# Calico's plugin parses log_level with logrus (any case): its names, as Python logging levels.
LOG_LEVELS = {"trace": "DEBUG", "debug": "DEBUG", "info": "INFO", "warn": "WARNING",
              "warning": "WARNING", "error": "ERROR", "fatal": "CRITICAL", "panic": "CRITICAL"}


@dataclass(frozen=True)
class NetConf:
    cni_version: str
    name: str
    type: str
    datastore_type: str
    etcd_endpoints: str | None
    nodename: str
    ipam_type: str
    ipv4_pools: tuple[str, ...]
    log_level: str = "WARNING"
    log_file_path: str | None = None
    kubeconfig: str | None = None  # Calico's "kubernetes": {"kubeconfig": ...}
    mtu: int | None = None  # both veth ends (Calico's "mtu"; the manifest's veth_mtu); None: kernel's
    raw: bytes = field(default=b"", repr=False)  # passed unchanged to the delegated IPAM plugin


@dataclass(frozen=True)
class Invocation:
    command: str
    container_id: str
    netns: str
    ifname: str
    args: Mapping[str, str]
    path: tuple[str, ...]
    # The environment this invocation came from: a delegated plugin gets the same (spec delegation).
    environ: Mapping[str, str] = field(default_factory=dict, repr=False)

    @property
    def pod_namespace(self) -> str | None:
        return self.args.get("K8S_POD_NAMESPACE")

    @property
    def pod_name(self) -> str | None:
        return self.args.get("K8S_POD_NAME")


def parse_netconf(raw: bytes) -> NetConf:
    try:
        data = json.loads(raw or b"{}")
    except ValueError as exc:
        raise CNIError(DECODE_FAILURE, "network configuration is not valid JSON", str(exc)) from None
    if not isinstance(data, dict):
        raise CNIError(DECODE_FAILURE, "network configuration must be a JSON object")
    version = _required_str(data, "cniVersion")
    if version not in SUPPORTED_VERSIONS:
        raise CNIError(INCOMPATIBLE_VERSION, f"cniVersion {version} is not supported",
                       f"supported: {', '.join(SUPPORTED_VERSIONS)}")
    ipam = data.get("ipam") or {}
    if not isinstance(ipam, dict):
        raise CNIError(INVALID_CONFIG, "ipam: must be an object")
    pools = ipam.get("ipv4_pools") or []
    if not isinstance(pools, list) or not all(isinstance(p, str) for p in pools):
        raise CNIError(INVALID_CONFIG, "ipam.ipv4_pools: must be a list of pool names or CIDRs")
    datastore_type = data.get("datastore_type") or "etcdv3"
    endpoints = data.get("etcd_endpoints")
    if datastore_type not in ("etcdv3", "kubernetes"):
        raise CNIError(INVALID_CONFIG, f"datastore_type: {datastore_type!r} is not etcdv3 or kubernetes")
    if datastore_type == "etcdv3" and not endpoints:
        raise CNIError(INVALID_CONFIG, "etcd_endpoints: required for datastore_type etcdv3")
    kubernetes = data.get("kubernetes") or {}
    if not isinstance(kubernetes, dict):
        raise CNIError(INVALID_CONFIG, "kubernetes: must be an object like {\"kubeconfig\": PATH}")
    mtu = data.get("mtu")
    if mtu is not None and (isinstance(mtu, bool) or not isinstance(mtu, int) or not 68 <= mtu <= 65535):
        raise CNIError(INVALID_CONFIG, f"mtu: {mtu!r} is not an integer from 68 to 65535")
    return NetConf(
        cni_version=version, name=_required_str(data, "name"), type=_required_str(data, "type"),
        datastore_type=datastore_type, etcd_endpoints=endpoints,
        nodename=_nodename(data.get("nodename")), ipam_type=_required_str(ipam, "type", "ipam.type"),
        ipv4_pools=tuple(pools), log_level=_log_level(data.get("log_level")),
        log_file_path=_optional_str(data, "log_file_path"),
        kubeconfig=_optional_str(kubernetes, "kubeconfig", "kubernetes.kubeconfig"), raw=raw,
        mtu=mtu,
    )


def cni_version_of(raw: bytes) -> str:
    """Best effort, for error results printed before the config was validated."""
    try:
        version = json.loads(raw).get("cniVersion")
    except (ValueError, AttributeError):
        return "1.0.0"
    return version if version in SUPPORTED_VERSIONS else "1.0.0"


def parse_env(env: Mapping[str, str]) -> Invocation:
    command = env.get("CNI_COMMAND", "")
    if command not in ("ADD", "DEL", "CHECK", "VERSION"):
        raise CNIError(INVALID_ENV, f"CNI_COMMAND: unknown command {command!r}",
                       "expected ADD, DEL, CHECK or VERSION")
    needed = {"ADD": ("CNI_CONTAINERID", "CNI_IFNAME", "CNI_NETNS", "CNI_PATH"),
              "CHECK": ("CNI_CONTAINERID", "CNI_IFNAME", "CNI_NETNS", "CNI_PATH"),
              "DEL": ("CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH"), "VERSION": ()}[command]
    missing = [k for k in needed if not env.get(k)]
    if missing:
        raise CNIError(INVALID_ENV, f"{', '.join(missing)}: required for {command}")
    return Invocation(
        command=command, container_id=env.get("CNI_CONTAINERID", ""),
        netns=env.get("CNI_NETNS", ""), ifname=env.get("CNI_IFNAME", ""),
        args=parse_cni_args(env.get("CNI_ARGS", "")),
        path=tuple(p for p in env.get("CNI_PATH", "").split(os.pathsep) if p), environ=dict(env),
    )


def parse_cni_args(text: str) -> dict[str, str]:
    """``K8S_POD_NAMESPACE=default;K8S_POD_NAME=pod-1`` -> dict."""
    out = {}
    for item in filter(None, text.split(";")):
        key, sep, value = item.partition("=")
        if not sep:
            raise CNIError(INVALID_ENV, f"CNI_ARGS: {item!r} is not KEY=VALUE")
        out[key.strip()] = value.strip()
    return out


def _nodename(configured: Any) -> str:
    """netconf ``nodename``, else /var/lib/calico/nodename (written by the node agent), else hostname."""
    name = configured
    if not name:
        try:
            with open(NODENAME_FILE) as f:
                name = f.read().strip()
        except OSError:
            name = socket.gethostname()
    if not isinstance(name, str) or not _DNS_NAME.match(name):
        raise CNIError(INVALID_CONFIG, f"nodename {name!r} is not a lowercase DNS name",
                       "node names become part of resource names (a-z, 0-9, '-', '.')")
    return name


def _log_level(configured: Any) -> str:
    """A Python logging level name; unset means WARNING. An unknown name is an error, not a default."""
    if configured is None or configured == "":
        return "WARNING"
    if not isinstance(configured, str) or configured.lower() not in LOG_LEVELS:
        raise CNIError(INVALID_CONFIG, f"log_level: unknown level {configured!r}",
                       f"expected one of {', '.join(LOG_LEVELS)} (any case)")
    return LOG_LEVELS[configured.lower()]


def _optional_str(data: dict, key: str, where: str | None = None) -> str | None:
    value = data.get(key)
    if value is not None and not isinstance(value, str):
        raise CNIError(INVALID_CONFIG, f"{where or key}: must be a string")
    return value or None


def _required_str(data: dict, key: str, where: str | None = None) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value:
        raise CNIError(INVALID_CONFIG, f"{where or key}: required (a non-empty string)")
    return value
