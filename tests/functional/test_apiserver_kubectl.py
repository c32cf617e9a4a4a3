"""The API server stand-in against the real ``kubectl`` (Debian's kubernetes-client, v1.32).

kubectl does discovery, OpenAPI-based validation checks, client-side apply (GET, then a PATCH
carrying the last-applied annotation), Table printing and watches its own way: if the stand-in
answers anything kubectl does not accept, these tests fail.
"""
from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import threading
from pathlib import Path

import pytest

from hostio import write_private
from lab.apiserver.launch import kubeconfig
from tests.apiserver_fixture import apiserver  # noqa: F401  (fixture)
from tests.helpers import wait_for

KUBECTL = shutil.which("kubectl") or "/usr/bin/kubectl"
REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(not os.path.exists(KUBECTL), reason="no kubectl on this machine")

IPPOOL_CRD = """\
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: ippools.crd.projectcalico.org
spec:
  group: crd.projectcalico.org
  scope: Cluster
  names: {plural: ippools, singular: ippool, kind: IPPool, listKind: IPPoolList}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        x-kubernetes-preserve-unknown-fields: true
"""

CORE = """\
apiVersion: v1
kind: Node
metadata:
  name: {node}
  labels: {{kubernetes.io/hostname: {node}}}
  annotations: {{projectcalico.org/IPv4Address: 10.0.0.1/24}}
spec: {{podCIDR: 10.244.1.0/24}}
---
apiVersion: v1
kind: Namespace
metadata: {{name: {ns}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: web, namespace: {ns}, labels: {{app: web}}}}
spec:
  nodeName: {node}
  containers: [{{name: c, image: busybox}}]
---
apiVersion: v1
kind: Secret
metadata: {{name: bgp-pass, namespace: {ns}}}
type: Opaque
stringData: {{password: s3cret}}
"""


def ippool(name: str, cidr: str, ipip: str = "Always") -> str:
    return (f"apiVersion: crd.projectcalico.org/v1\nkind: IPPool\nmetadata: {{name: {name}}}\n"
            f"spec: {{cidr: {cidr}, ipipMode: {ipip}}}\n")


class Kubectl:
    """Runs the real kubectl with a kubeconfig (and discovery cache) of this test's own."""

    def __init__(self, url: str, home: Path) -> None:
        self.home = home
        self.kubeconfig = home / "kubeconfig"
        write_private(self.kubeconfig, kubeconfig(url))

    def argv(self, *args: str) -> list[str]:
        return [KUBECTL, "--kubeconfig", str(self.kubeconfig),
                "--cache-dir", str(self.home / "cache"), *args]

    def __call__(self, *args: str, stdin: str | None = None, check: bool = True):
        result = subprocess.run(self.argv(*args), input=stdin, capture_output=True, text=True,
                                timeout=60, env={**os.environ, "HOME": str(self.home)})
        if check and result.returncode != 0:
            pytest.fail(f"kubectl {' '.join(args)} failed ({result.returncode}): "
                        f"{result.stdout}{result.stderr}")
        return result

    def apply(self, manifest: str, *extra: str) -> str:
        return self("apply", "-f", "-", *extra, stdin=manifest).stdout


@pytest.fixture
def kubectl(apiserver, tmp_path) -> Kubectl:
    return Kubectl(apiserver.url, tmp_path)


def test_apply_crd_then_custom_resource_then_get_and_delete(kubectl):
    assert "created" in kubectl.apply(IPPOOL_CRD) or "unchanged" in kubectl.apply(IPPOOL_CRD)
    waited = kubectl("wait", "--for=condition=Established", "--timeout=20s",
                     "crd/ippools.crd.projectcalico.org").stdout
    assert "condition met" in waited
    assert kubectl.apply(ippool("pool-a", "10.244.0.0/16")).strip() == (
        "ippool.crd.projectcalico.org/pool-a created")
    assert kubectl.apply(ippool("pool-a", "10.244.0.0/16")).strip() == (
        "ippool.crd.projectcalico.org/pool-a unchanged")
    assert kubectl.apply(ippool("pool-a", "10.244.0.0/16", "Never")).strip() == (
        "ippool.crd.projectcalico.org/pool-a configured")

    table = kubectl("get", "ippools.crd.projectcalico.org").stdout.splitlines()
    assert table[0].split() == ["NAME", "AGE"]
    assert [line.split()[0] for line in table[1:]] == ["pool-a"]
    ipip = kubectl("get", "ippool", "pool-a", "-o", "jsonpath={.spec.ipipMode}").stdout
    assert ipip == "Never"

    kubectl("delete", "ippools.crd.projectcalico.org", "pool-a")
    missing = kubectl("get", "ippool", "pool-a", check=False)
    assert missing.returncode != 0
    assert 'Error from server (NotFound): ippools.crd.projectcalico.org "pool-a" not found' in (
        missing.stderr)


def test_yaml_round_trip_replace_and_conflict(kubectl):
    kubectl.apply(IPPOOL_CRD)
    kubectl.apply(ippool("pool-rt", "10.50.0.0/16"))
    stored = kubectl("get", "ippool", "pool-rt", "-o", "yaml").stdout
    kubectl("replace", "-f", "-", stdin=stored.replace("10.50.0.0/16", "10.51.0.0/16"))
    assert kubectl("get", "ippool", "pool-rt", "-o", "jsonpath={.spec.cidr}").stdout == (
        "10.51.0.0/16")
    stale = kubectl("replace", "-f", "-", stdin=stored, check=False)  # old resourceVersion
    assert stale.returncode != 0
    assert "Error from server (Conflict)" in stale.stderr
    duplicate = kubectl("create", "-f", "-", stdin=ippool("pool-rt", "10.50.0.0/16"), check=False)
    assert "Error from server (AlreadyExists)" in duplicate.stderr
    kubectl("delete", "ippool", "pool-rt")


def test_diff_and_server_dry_run_change_nothing(kubectl):
    kubectl.apply(IPPOOL_CRD)
    kubectl.apply(ippool("pool-dry", "10.55.0.0/16"))
    before = kubectl("get", "ippool", "pool-dry", "-o", "jsonpath={.metadata.resourceVersion}").stdout
    diff = kubectl("diff", "-f", "-", stdin=ippool("pool-dry", "10.55.0.0/16", "Never"), check=False)
    assert diff.returncode == 1, diff.stderr  # 1: differences found
    assert "-  ipipMode: Always" in diff.stdout and "+  ipipMode: Never" in diff.stdout
    out = kubectl.apply(ippool("pool-dry", "10.55.0.0/16", "Never"), "--dry-run=server")
    assert "configured (server dry run)" in out
    kubectl("delete", "ippool", "pool-dry", "--dry-run=server")
    kubectl("create", "-f", "-", "--dry-run=server", stdin=ippool("pool-dry2", "10.56.0.0/16"))
    after = kubectl("get", "ippool", "pool-dry", "-o", "jsonpath={.metadata.resourceVersion}").stdout
    assert after == before
    assert kubectl("get", "ippool", "pool-dry2", check=False).returncode != 0
    kubectl("delete", "ippool", "pool-dry")


def test_core_objects_apply_get_delete(kubectl):
    core = CORE.format(node="node-k1", ns="demo-k1")
    out = kubectl.apply(core)
    for line in ("node/node-k1 created", "namespace/demo-k1 created", "pod/web created",
                 "secret/bgp-pass created"):
        assert line in out
    again = kubectl.apply(core)
    # A Secret applied with stringData is "configured" every time, with the real server too:
    # stringData is write-only, so kubectl's three-way diff always finds it missing.
    assert again.count("unchanged") == 3 and "secret/bgp-pass configured" in again
    assert kubectl("get", "node", "node-k1", "-o", "jsonpath={.metadata.generation}").stdout == ""
    nodes = kubectl("get", "nodes").stdout.splitlines()
    assert nodes[0].split()[:2] == ["NAME", "STATUS"] and "node-k1" in nodes[1]
    pods = kubectl("get", "pods", "-A", "--field-selector", "spec.nodeName=node-k1",
                   "-o", "name").stdout.split()
    assert pods == ["pod/web"]
    assert kubectl("get", "pods", "-A", "--field-selector", "spec.nodeName=other",
                   "-o", "name").stdout.split() == []
    wide = kubectl("get", "pods", "-n", "demo-k1", "-o", "wide").stdout.splitlines()
    assert wide[0].split()[:7] == ["NAME", "READY", "STATUS", "RESTARTS", "AGE", "IP", "NODE"]
    assert wide[1].split()[5:7] == ["<none>", "node-k1"]
    password = kubectl("get", "secret", "-n", "demo-k1", "bgp-pass",
                       "-o", "jsonpath={.data.password}").stdout
    assert password == "czNjcmV0"  # stringData is stored base64 in data, as the real server does
    kubectl("delete", "namespace", "demo-k1")  # takes the pod and the secret along
    assert kubectl("get", "pods,secrets", "-n", "demo-k1", "-o", "name").stdout.split() == []
    kubectl("delete", "node", "node-k1")
    assert kubectl("get", "nodes", "-o", "name").stdout.split() == []


def test_reapplying_a_pod_patches_its_containers_by_name(kubectl):
    """kubectl sends a strategic merge patch carrying only what changed in one container."""
    pod = ("apiVersion: v1\nkind: Pod\nmetadata: {name: smp, namespace: default}\n"
           "spec:\n  nodeName: n1\n  containers:\n"
           "  - {name: a, image: busybox, command: [sleep, 1d], env: [{name: X, value: '1'}]}\n"
           "  - {name: b, image: nginx}\n")
    kubectl.apply(pod)
    kubectl("annotate", "pod", "smp", "extra=kept")  # not in the file: survives the re-apply
    assert "pod/smp configured" in kubectl.apply(pod.replace("image: busybox", "image: alpine"))
    got = json.loads(kubectl("get", "pod", "smp", "-o", "json").stdout)
    containers = {c["name"]: c for c in got["spec"]["containers"]}
    assert containers["a"] == {"name": "a", "image": "alpine", "command": ["sleep", "1d"],
                               "env": [{"name": "X", "value": "1"}]}
    assert containers["b"] == {"name": "b", "image": "nginx"}
    assert got["metadata"]["annotations"]["extra"] == "kept"
    kubectl.apply(pod.replace("  - {name: b, image: nginx}\n", ""))
    got = json.loads(kubectl("get", "pod", "smp", "-o", "json").stdout)
    assert [c["name"] for c in got["spec"]["containers"]] == ["a"]
    kubectl("delete", "pod", "smp")


def test_kubectl_create_secret_and_namespace_send_protobuf(kubectl):
    """Calico's BGP password how-to: ``kubectl create secret generic`` (a protobuf body)."""
    assert kubectl("create", "namespace", "pb-ns").stdout.strip() == "namespace/pb-ns created"
    out = kubectl("create", "secret", "generic", "bgp-secrets", "-n", "pb-ns",
                  "--from-literal=rr-password=very-secret").stdout
    assert out.strip() == "secret/bgp-secrets created"
    data = kubectl("get", "secret", "-n", "pb-ns", "bgp-secrets",
                   "-o", "jsonpath={.data.rr-password}").stdout
    assert base64.b64decode(data) == b"very-secret"
    kubectl("delete", "namespace", "pb-ns")


def test_pod_in_missing_namespace_is_refused(kubectl):
    pod = CORE.format(node="n", ns="nowhere").split("---\n")[2]
    refused = kubectl("apply", "-f", "-", stdin=pod, check=False)
    assert refused.returncode != 0 and 'namespaces "nowhere" not found' in refused.stderr


def test_get_watch_sees_a_change(kubectl):
    kubectl.apply(IPPOOL_CRD)
    kubectl.apply(ippool("pool-w1", "10.60.0.0/16"))
    lines: list[str] = []
    proc = subprocess.Popen(kubectl.argv("get", "ippools", "--watch", "--request-timeout=30s"),
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")),
                              daemon=True)
    reader.start()
    try:
        wait_for(lambda: any(line.startswith("pool-w1") for line in lines), timeout=20,
                 what="kubectl --watch to print the existing pool")
        kubectl.apply(ippool("pool-w2", "10.61.0.0/16"))
        wait_for(lambda: any(line.startswith("pool-w2") for line in lines), timeout=20,
                 what="kubectl --watch to print the new pool")
    finally:
        proc.kill()
        proc.wait()
        reader.join(5)
        proc.stdout.close()
    kubectl("delete", "ippool", "pool-w1", "pool-w2")


def test_server_side_apply_and_api_resources(kubectl):
    kubectl.apply(IPPOOL_CRD)
    out = kubectl.apply(ippool("pool-ssa", "10.70.0.0/16"), "--server-side")
    assert out.strip() == "ippool.crd.projectcalico.org/pool-ssa serverside-applied"
    kubectl.apply(ippool("pool-ssa", "10.70.0.0/16", "Never"), "--server-side")
    assert kubectl("get", "ippool", "pool-ssa", "-o", "jsonpath={.spec.ipipMode}").stdout == "Never"
    resources = kubectl("api-resources", "-o", "name").stdout.split()
    for name in ("nodes", "pods", "namespaces", "secrets", "ippools.crd.projectcalico.org",
                 "customresourcedefinitions.apiextensions.k8s.io"):
        assert name in resources
    kubectl("delete", "ippool", "pool-ssa")


def test_apply_list_documents(kubectl):
    """Lists go through kubectl's OpenAPI v2 check (an empty document here) before being split."""
    kubectl.apply(IPPOOL_CRD)
    pool_list = ("apiVersion: crd.projectcalico.org/v1\nkind: IPPoolList\nitems:\n"
                 "- apiVersion: crd.projectcalico.org/v1\n  kind: IPPool\n"
                 "  metadata: {name: listed, resourceVersion: '99999'}\n"
                 "  spec: {cidr: 10.90.0.0/16}\n")
    assert "ippool.crd.projectcalico.org/listed created" in kubectl.apply(pool_list)
    core_list = ("apiVersion: v1\nkind: List\nitems:\n"
                 "- {apiVersion: v1, kind: Node, metadata: {name: listed-node}}\n")
    assert "node/listed-node created" in kubectl.apply(core_list)
    kubectl("delete", "ippool", "listed")
    kubectl("delete", "node", "listed-node")


def test_apply_with_an_unknown_field_is_refused_by_strict_validation(kubectl):
    kubectl("apply", "-f", "-", stdin=IPPOOL_CRD.replace(
        "        type: object\n        x-kubernetes-preserve-unknown-fields: true\n",
        "        type: object\n        properties:\n          spec:\n            type: object\n"
        "            properties:\n              cidr: {type: string}\n"
        "              ipipMode: {type: string}\n").replace("ippools", "strictpools").replace(
        "ippool,", "strictpool,").replace("IPPool", "StrictPool"))
    doc = ippool("s1", "10.80.0.0/16").replace("IPPool", "StrictPool").replace(
        "ipipMode: Always", "ipipMode: Always, natOutgoing: true")
    refused = kubectl("apply", "-f", "-", stdin=doc, check=False)
    assert refused.returncode != 0
    assert 'strict decoding error: unknown field "spec.natOutgoing"' in refused.stderr
    kubectl("apply", "-f", "-", stdin=doc.replace(", natOutgoing: true", ""))
    kubectl("delete", "strictpool", "s1")
    kubectl("delete", "crd", "strictpools.crd.projectcalico.org")


@pytest.mark.skipif(not (REPO / "deploy" / "crds.yaml").exists(), reason="no deploy/crds.yaml yet")
def test_apply_the_generated_calico_crds(kubectl):
    manifest = (REPO / "deploy" / "crds.yaml").read_text()
    out = kubectl.apply(manifest)
    names = [line.split()[0] for line in out.splitlines()]
    assert names and all(n.startswith("customresourcedefinition.apiextensions.k8s.io/") for n in names)
    served = set(kubectl("api-resources", "--api-group=crd.projectcalico.org",
                         "-o", "name").stdout.split())
    applied = {n.split("/", 1)[1] for n in names}
    assert applied <= served and len(applied) == manifest.count("kind: CustomResourceDefinition")
    assert kubectl.apply(manifest).count("unchanged") == len(names)


def test_printer_columns_of_a_crd(kubectl):
    crd = IPPOOL_CRD.replace("ippools", "colpools").replace("ippool,", "colpool,").replace(
        "IPPool", "ColPool").replace("    storage: true\n", (
            "    storage: true\n    additionalPrinterColumns:\n"
            "    - {name: CIDR, type: string, jsonPath: .spec.cidr}\n"))
    kubectl.apply(crd)
    kubectl.apply(ippool("c1", "10.77.0.0/16").replace("IPPool", "ColPool"))
    for args in (("get", "colpools"), ("get", "colpool", "c1")):
        lines = kubectl(*args).stdout.splitlines()
        assert lines[0].split() == ["NAME", "CIDR"] and lines[1].split() == ["c1", "10.77.0.0/16"]
    kubectl("delete", "crd", "colpools.crd.projectcalico.org")
