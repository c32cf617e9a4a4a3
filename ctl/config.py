"""Where pycalicoctl finds its datastore: flags, a CalicoAPIConfig file, the environment.

Reads a file; otherwise pure. Resolution, first match wins per setting:
1. command-line flags (``--datastore-type``, ``--etcd-endpoints``, ``--kubeconfig``);
2. the file named by ``--config`` (calicoctl's ``CalicoAPIConfig``, YAML or JSON);
3. the environment (``DATASTORE_TYPE``, ``ETCD_ENDPOINTS``, ``KUBECONFIG``);
4. ``/etc/calico/calicoctl.cfg`` if it exists (calicoctl's default file);
5. the type ``etcdv3`` when endpoints are known, else ``kubernetes`` (calicoctl's default).
calicoctl reads its default file before the environment; we read it after, so a machine-wide file
never silently overrides what a caller (or ``--lab``) put in the environment.

    >>> resolve(Flags(None, "http://10.0.0.1:2379", None), env={}, default_file=None)
    Target(datastore_type='etcdv3', etcd_endpoints='http://10.0.0.1:2379', kubeconfig=None)
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

DEFAULT_FILE = Path("/etc/calico/calicoctl.cfg")


class ConfigError(ValueError):
    """The configuration file cannot be used: names the file and the field."""


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    datastore_type: Literal["etcdv3", "kubernetes"] | None = Field(None, alias="datastoreType")
    etcd_endpoints: str | None = Field(None, alias="etcdEndpoints")
    kubeconfig: str | None = None


class _CalicoAPIConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    api_version: Literal["projectcalico.org/v3"] = Field(alias="apiVersion")
    kind: Literal["CalicoAPIConfig"]
    metadata: dict | None = None
    spec: _Spec = Field(default_factory=_Spec)


@dataclass(frozen=True)
class Flags:
    datastore_type: str | None
    etcd_endpoints: str | None
    kubeconfig: str | None


@dataclass(frozen=True)
class Target:
    datastore_type: str
    etcd_endpoints: str | None
    kubeconfig: str | None


def resolve(flags: Flags, *, config: str | None = None, env: Mapping[str, str] = os.environ,
            default_file: Path | None = DEFAULT_FILE) -> Target:
    layers = [flags]
    if config is not None:
        layers.append(read(Path(config)))
    layers.append(Flags(env.get("DATASTORE_TYPE") or None, env.get("ETCD_ENDPOINTS") or None,
                        env.get("KUBECONFIG") or None))
    if default_file is not None and default_file.exists():
        layers.append(read(default_file))
    pick = lambda attr: next((getattr(l, attr) for l in layers if getattr(l, attr)), None)  # noqa: E731
    endpoints, kubeconfig = pick("etcd_endpoints"), pick("kubeconfig")
    datastore_type = pick("datastore_type") or ("etcdv3" if endpoints else "kubernetes")
    return Target(datastore_type, endpoints, kubeconfig)


def read(path: Path) -> Flags:
    """A CalicoAPIConfig file's datastore settings; ConfigError naming the file and field."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"--config: {path}: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"--config: {path}: not a YAML or JSON document ({exc})".splitlines()[0]) \
            from None
    try:
        spec = _CalicoAPIConfig.model_validate(data).spec
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or "<root>"
        raise ConfigError(f"--config: {path}: {field}: {err['msg']}") from None
    return Flags(spec.datastore_type, spec.etcd_endpoints, spec.kubeconfig)
