"""The datastore conformance tests against the Kubernetes backend, on the API server stand-in
(``python -m lab.apiserver``) over a real etcd, plus what only Kubernetes shows: Calico's KDD layout
as other Kubernetes clients see it.

When ``KUBECONFIG`` names a real cluster and ``PYCALICO_REAL_CLUSTER=1`` is set, the same suite can
run there instead; otherwise that tier is skipped, saying so.
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from kubernetes import client as k8s
from kubernetes import config as k8s_config

from crds import KINDS
from datastore.etcdv3 import EtcdDatastore
from datastore.kubernetes import KubernetesDatastore
from lab import kube
from lab.apiserver.launch import running_apiserver
from tests.datastore_conformance import (  # noqa: F401  (recorder is a fixture)
    DatastoreConformance, pool, recorder,
)
from tests.helpers import etcd_running

pytestmark = pytest.mark.root


CRDS = Path(__file__).resolve().parents[2] / "deploy" / "crds.yaml"


def generated_crds() -> list[dict]:
    """The CRDs we ship (generated from the models): the stand-in prunes and validates custom
    resources against their schemas as kube-apiserver does, so a model/schema mismatch fails here."""
    return [doc for doc in yaml.safe_load_all(CRDS.read_text()) if doc]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[tuple[Path, str]]:
    """(kubeconfig, etcd URL) of a stand-in API server on a real etcd, our CRDs applied."""
    tmp = tmp_path_factory.mktemp("k8s")
    with etcd_running(str(tmp / "etcd")) as etcd_url, running_apiserver(etcd_url) as url:
        kubeconfig = kube.write_kubeconfig(tmp, url)
        api = k8s_config.new_client_from_config(config_file=str(kubeconfig))
        try:
            ext = k8s.ApiextensionsV1Api(api)
            for crd in generated_crds():
                ext.create_custom_resource_definition(crd)
        finally:
            api.close()
        yield kubeconfig, etcd_url


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
    """Read-only on a real cluster (the suite above deletes every Calico resource and pod between
    tests, which no one wants on theirs): a consistent snapshot of the agent's kinds, and a watch
    that opens from it and stops promptly."""
    if not (os.environ.get("KUBECONFIG") and os.environ.get("PYCALICO_REAL_CLUSTER") == "1"):
        pytest.skip("no real cluster: set KUBECONFIG and PYCALICO_REAL_CLUSTER=1 to run the "
                    "read-only tier against one (this machine can run no kube-apiserver)")
    import threading
    import time

    from felix.cluster import WATCHED_KINDS

    backend = KubernetesDatastore(k8s_config.new_client_from_config())
    try:
        snap = backend.snapshot(WATCHED_KINDS)
        assert snap.revision > 0
        assert all(int(r.metadata.resource_version) <= snap.revision for r in snap.items)
        stop = threading.Event()
        thread = threading.Thread(target=lambda: list(backend.watch(WATCHED_KINDS, snap.revision, stop)))
        thread.start()
        time.sleep(1)  # a window for the watch to fail if it is going to; then it must stop at once
        stop.set()
        thread.join(timeout=5)
        assert not thread.is_alive()
    finally:
        backend.close()
