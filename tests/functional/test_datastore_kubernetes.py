"""The datastore conformance tests against the Kubernetes backend, on the API server stand-in
(``python -m lab.apiserver``) over a real etcd, plus what only Kubernetes shows: Calico's KDD layout
as other Kubernetes clients see it.

When ``KUBECONFIG`` names a real cluster and ``PYCALICO_REAL_CLUSTER=1`` is set, the same suite can
run there instead; otherwise that tier is skipped, saying so.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from kubernetes import client as k8s
from kubernetes import config as k8s_config

from crds import KINDS
from datastore.etcdv3 import EtcdDatastore
from datastore.kubernetes import KubernetesDatastore
from tests.datastore_conformance import (  # noqa: F401  (recorder is a fixture)
    DatastoreConformance, pool, recorder,
)
from tests.helpers import etcd_running, free_port, stop_process, wait_for

pytestmark = pytest.mark.root


CRDS = Path(__file__).resolve().parents[2] / "deploy" / "crds.yaml"


def generated_crds() -> list[dict]:
    """The CRDs we ship (generated from the models): the stand-in prunes and validates custom
    resources against their schemas as kube-apiserver does, so a model/schema mismatch fails here."""
    return [doc for doc in yaml.safe_load_all(CRDS.read_text()) if doc]


def write_kubeconfig(path: Path, server: str) -> Path:
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "lab",
        "clusters": [{"name": "lab", "cluster": {"server": server}}],
        "contexts": [{"name": "lab", "context": {"cluster": "lab", "user": "admin"}}],
        "users": [{"name": "admin", "user": {}}]}))
    os.chmod(path, 0o600)
    return path


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[tuple[Path, str]]:
    """(kubeconfig, etcd URL) of a stand-in API server on a real etcd, CRDs applied."""
    tmp = tmp_path_factory.mktemp("k8s")
    with etcd_running(str(tmp / "etcd")) as etcd_url:
        port = free_port()
        server = f"http://127.0.0.1:{port}"
        with open(tmp / "apiserver.log", "wb") as log:
            proc = subprocess.Popen([sys.executable, "-m", "lab.apiserver", "--etcd-endpoints",
                                     etcd_url, "--listen", f"127.0.0.1:{port}"],
                                    stdout=log, stderr=log)
        try:
            kubeconfig = write_kubeconfig(tmp / "kubeconfig", server)
            api = k8s_config.new_client_from_config(config_file=str(kubeconfig))
            version = k8s.VersionApi(api)

            def up() -> bool:
                if proc.poll() is not None:
                    pytest.fail(f"apiserver exited: {(tmp / 'apiserver.log').read_text()[-2000:]}")
                try:
                    return bool(version.get_code())
                except Exception:  # noqa: BLE001 - not listening yet
                    return False

            wait_for(up, timeout=20, what="the API server stand-in to answer")
            ext = k8s.ApiextensionsV1Api(api)
            for crd in generated_crds():
                ext.create_custom_resource_definition(crd)
            api.close()
            yield kubeconfig, etcd_url
        finally:
            stop_process(proc)


@pytest.fixture
def ds(cluster) -> Iterator[KubernetesDatastore]:
    kubeconfig, etcd_url = cluster
    backend = KubernetesDatastore(k8s_config.new_client_from_config(config_file=str(kubeconfig)))
    _empty(backend, kubeconfig)
    etcd = EtcdDatastore(etcd_url)
    backend.compact = etcd.compact  # type: ignore[attr-defined]  # the conformance suite compacts
    try:
        yield backend
    finally:
        backend.close()
        etcd.close()


def _empty(backend: KubernetesDatastore, kubeconfig: Path) -> None:
    """Every test starts from an empty datastore: our kinds, nodes and pods removed."""
    for kind in KINDS:
        if kind != "WorkloadEndpoint":
            for item in backend.list(kind).items:
                backend.delete(kind, item.name, item.metadata.namespace)
    core = k8s.CoreV1Api(k8s_config.new_client_from_config(config_file=str(kubeconfig)))
    for pod in core.list_pod_for_all_namespaces().items:
        core.delete_namespaced_pod(pod.metadata.name, pod.metadata.namespace)
    core.api_client.close()


class TestKubernetesDatastore(DatastoreConformance):
    ORDERED_ACROSS_KINDS = False  # Kubernetes orders events within one resource type only

    def prepare_workload(self, ds, namespace: str, pod: str) -> None:
        core = k8s.CoreV1Api(ds._api)
        try:
            core.create_namespace({"apiVersion": "v1", "kind": "Namespace",
                                   "metadata": {"name": namespace}})
        except k8s.ApiException as exc:
            if exc.status != 409:
                raise
        core.create_namespaced_pod(namespace, {
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": pod, "namespace": namespace},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "pause"}]}})


def test_calico_resources_are_custom_resources_other_clients_see(ds):
    created = ds.create(pool("a", "10.1.0.0/16"))
    custom = k8s.CustomObjectsApi(ds._api)
    obj = custom.get_cluster_custom_object("crd.projectcalico.org", "v1", "ippools", "a")
    assert obj["spec"]["cidr"] == "10.1.0.0/16"
    assert obj["metadata"]["resourceVersion"] == created.metadata.resource_version


def test_real_cluster_tier():
    if not (os.environ.get("KUBECONFIG") and os.environ.get("PYCALICO_REAL_CLUSTER") == "1"):
        pytest.skip("no real cluster: set KUBECONFIG and PYCALICO_REAL_CLUSTER=1 to run the "
                    "conformance suite against one (this machine can run no kube-apiserver)")
    backend = KubernetesDatastore(k8s_config.new_client_from_config())
    try:
        assert backend.snapshot(["IPPool"]).revision > 0
    finally:
        backend.close()
