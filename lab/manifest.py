"""``deploy/pycalico.yaml``: read it, find its objects, and keep its CRD block generated.

The manifest is written by hand (its RBAC rules carry comments saying why each exists) except for
one block of CRDs between two marker lines, which ``python -m lab.manifest`` regenerates from the
models (``crds.manifests.definitions()``), leaving every other byte as it was. Reading does file
I/O only; ``render`` is pure.

>>> text = "# head\\n# BEGIN GENERATED CRDS\\nstale\\n# END GENERATED CRDS\\n---\\nkind: X\\n"
>>> out = render(text)
>>> out.startswith("# head\\n# BEGIN GENERATED CRDS\\n---\\napiVersion: apiextensions.k8s.io/v1\\n")
True
>>> out.endswith("# END GENERATED CRDS\\n---\\nkind: X\\n") and "stale" not in out
True
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

from crds.manifests import _NoAliasDumper, definitions

MANIFEST = Path(__file__).resolve().parents[1] / "deploy" / "pycalico.yaml"
BEGIN, END = "# BEGIN GENERATED CRDS\n", "# END GENERATED CRDS\n"


def crd_block() -> str:
    """The CRDs as YAML documents, each starting with ``---``."""
    return "".join("---\n" + yaml.dump(d, Dumper=_NoAliasDumper, sort_keys=True,
                                       default_flow_style=False) for d in definitions())


def render(text: str) -> str:
    """``text`` with the block between the markers replaced by the current CRDs."""
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"manifest: the marker lines {BEGIN.strip()!r} and {END.strip()!r} "
                         "are missing or out of order")
    return text[:start + len(BEGIN)] + crd_block() + text[end:]


def documents(path: Path = MANIFEST) -> list[dict[str, Any]]:
    """Every object in the manifest, in file order."""
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    """The one object of ``kind`` named ``name``; KeyError naming both if there is none."""
    found = [d for d in docs if d.get("kind") == kind and d["metadata"]["name"] == name]
    if len(found) != 1:
        raise KeyError(f"manifest: {len(found)} {kind} objects named {name!r}, expected 1")
    return found[0]


def _main_container(docs: list[dict[str, Any]], init: bool = False) -> dict[str, Any]:
    pod = find(docs, "DaemonSet", "pycalico-node")["spec"]["template"]["spec"]
    return pod["initContainers" if init else "containers"][0]


def container_command(docs: list[dict[str, Any]], node: str,
                      init: bool = False) -> tuple[list[str], dict[str, str]]:
    """The main (or init) container's argv and environment as kubelet gives them on ``node``:
    values, ``fieldRef`` (spec.nodeName, metadata.namespace) and ``configMapKeyRef`` (the manifest's ConfigMap)."""
    container = _main_container(docs, init)
    config = find(docs, "ConfigMap", "pycalico-config").get("data") or {}
    env = {e["name"]: _env_value(e, node, config) for e in container.get("env") or []}
    return [*container["command"], *(container.get("args") or [])], env


def _env_value(entry: dict[str, Any], node: str, config: dict[str, str]) -> str:
    if "value" in entry:
        return str(entry["value"])
    source = entry.get("valueFrom") or {}
    field = (source.get("fieldRef") or {}).get("fieldPath")
    if field == "spec.nodeName":
        return node
    if field == "metadata.namespace":
        return "kube-system"  # the DaemonSet's namespace
    ref = source.get("configMapKeyRef") or {}
    if ref.get("name") == "pycalico-config" and ref.get("key") in config:
        return str(config[ref["key"]])
    raise ValueError(f"manifest: env {entry.get('name')}: cannot resolve {source or entry} "
                     "(the lab knows values, spec.nodeName, metadata.namespace and the pycalico-config ConfigMap)")


def readiness_url(docs: list[dict[str, Any]]) -> str:
    """The main container's readiness probe as the URL kubelet GETs (host networking)."""
    probe = _main_container(docs)["readinessProbe"]["httpGet"]
    host = probe.get("host") or "127.0.0.1"
    return f"http://{'127.0.0.1' if host == 'localhost' else host}:{probe['port']}{probe['path']}"


def cni_network_config(docs: list[dict[str, Any]] | None = None) -> str:
    """The conflist template install-cni receives (ConfigMap pycalico-config)."""
    docs = documents() if docs is None else docs
    return find(docs, "ConfigMap", "pycalico-config")["data"]["cni_network_config"]


def main(argv: list[str] | None = None) -> int:
    """Rewrite the CRD block of ``deploy/pycalico.yaml`` (or the file given) in place."""
    path = Path(argv[0]) if argv else MANIFEST
    old = path.read_text()
    new = render(old)
    if new == old:
        print(f"{path}: CRDs up to date")
        return 0
    path.write_text(new)
    print(f"{path}: CRDs regenerated")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
