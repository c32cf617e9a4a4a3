"""deploy/pycalico.yaml through the real kubectl to the API server stand-in.

The stand-in serves CRDs, namespaces, nodes, pods and secrets -- not RBAC, ConfigMaps or
DaemonSets -- so the manifest's objects of the kinds it serves are applied (today: the CRDs), then
used: a resource of every CRD is created with kubectl and read back by our Kubernetes datastore.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from crds import IPPool, ObjectMeta
from datastore import kubernetes as kds
from hostio import write_private
from lab.apiserver.launch import kubeconfig
from lab.manifest import documents
from tests.apiserver_fixture import fresh_apiserver  # noqa: F401  (fixture)

KUBECTL = shutil.which("kubectl") or "/usr/bin/kubectl"
SERVED = {"CustomResourceDefinition", "Namespace", "Node", "Pod", "Secret"}

pytestmark = pytest.mark.skipif(not os.path.exists(KUBECTL), reason="no kubectl on this machine")


def kubectl(home: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run([KUBECTL, "--kubeconfig", str(home / "kubeconfig"),
                             "--cache-dir", str(home / "cache"), *args],
                            input=stdin, capture_output=True, text=True, timeout=60,
                            env={**os.environ, "HOME": str(home)})
    assert result.returncode == 0, f"kubectl {' '.join(args)}: {result.stdout}{result.stderr}"
    return result


def served_objects() -> list[dict]:
    return [d for d in documents() if d["kind"] in SERVED]


def test_manifest_crds_apply_and_serve_our_resources(fresh_apiserver, tmp_path):  # noqa: F811
    write_private(tmp_path / "kubeconfig", kubeconfig(fresh_apiserver.url))
    objects = served_objects()
    crds = [d for d in objects if d["kind"] == "CustomResourceDefinition"]
    assert len(crds) == 10 and objects == crds
    text = yaml.safe_dump_all(objects)

    created = kubectl(tmp_path, "apply", "-f", "-", stdin=text).stdout.splitlines()
    assert sorted(created) == sorted(
        f"customresourcedefinition.apiextensions.k8s.io/{d['metadata']['name']} created"
        for d in crds)
    again = kubectl(tmp_path, "apply", "-f", "-", stdin=text).stdout
    assert again.count(" unchanged") == len(crds) and "created" not in again
    names = [f"crd/{d['metadata']['name']}" for d in crds]
    waited = kubectl(tmp_path, "wait", "--for=condition=Established", "--timeout=20s", *names)
    assert waited.stdout.count("condition met") == len(crds)

    pool = ("apiVersion: crd.projectcalico.org/v1\nkind: IPPool\nmetadata: {name: default-ipv4}\n"
            "spec: {cidr: 10.244.0.0/16, blockSize: 26, ipipMode: Always, natOutgoing: true}\n")
    assert kubectl(tmp_path, "apply", "-f", "-", stdin=pool).stdout.strip() == (
        "ippool.crd.projectcalico.org/default-ipv4 created")
    ds = kds.connect(str(tmp_path / "kubeconfig"))
    try:
        [stored] = ds.list("IPPool").items
        assert (stored.name, str(stored.spec.cidr), stored.spec.ipip_mode) == (
            "default-ipv4", "10.244.0.0/16", "Always")
        ds.create(IPPool(metadata=ObjectMeta(name="second"), spec={"cidr": "10.245.0.0/16"}))
        listed = kubectl(tmp_path, "get", "ippools.crd.projectcalico.org", "-o", "name").stdout
        assert listed.split() == ["ippool.crd.projectcalico.org/default-ipv4",
                                  "ippool.crd.projectcalico.org/second"]
    finally:
        ds.close()
