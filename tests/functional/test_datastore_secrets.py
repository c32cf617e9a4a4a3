"""datastore.secrets against the Kubernetes API stand-in: BGP password Secrets read from the agent's
namespace, watched (a change arrives without a restart), and only through requests the manifest's
Role allows (list and watch in kube-system, each naming its Secret)."""
from __future__ import annotations

import base64
import threading

import pytest
from kubernetes import client as k8s

from bgp.peers import SecretRef
from datastore.kubernetes import KubernetesDatastore
from datastore.secrets import NoSecrets, SecretWatcher, for_agent
from lab.manifest import documents, find
from tests.apiserver_fixture import client_configuration, fresh_apiserver  # noqa: F401  (fixture)
from tests.functional.test_deploy_rbac import rbac_request
from tests.helpers import wait_for

NS = "kube-system"
REF, OTHER_KEY = SecretRef("bgp-secrets", "mesh"), SecretRef("bgp-secrets", "missing")


def secret(name: str, data: dict[str, str]) -> dict:
    return {"metadata": {"name": name},
            "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}}


@pytest.fixture
def core(fresh_apiserver):  # noqa: F811
    api = k8s.ApiClient(client_configuration(fresh_apiserver.url))
    try:
        yield k8s.CoreV1Api(api)  # the stand-in has kube-system, as a cluster does
    finally:
        api.close()


@pytest.fixture
def watcher(fresh_apiserver):  # noqa: F811
    ds = KubernetesDatastore(k8s.ApiClient(client_configuration(fresh_apiserver.url)))
    calls: list[tuple[str, str, dict]] = []
    real = ds._request

    def recording(method, path, query=None, **kwargs):
        calls.append((method, path, dict(query or {})))
        return real(method, path, query, **kwargs)

    ds._request = recording  # type: ignore[method-assign]
    changed = threading.Event()
    w = SecretWatcher(ds, NS, changed.set)
    try:
        yield w, changed, calls
    finally:
        w.close()
        ds.close()


def test_a_password_is_read_watched_and_dropped_with_its_secret(core, watcher):
    w, changed, calls = watcher
    assert w.resolve([REF]) == {}  # not read yet: nothing, never an empty password
    # Read and absent: settled, and on_change says so (the caller may now report it missing).
    wait_for(lambda: changed.is_set() and w.settled(), 10, what="the first read of a missing secret")
    assert w.resolve([REF]) == {}
    core.create_namespaced_secret(NS, secret("bgp-secrets", {"mesh": "first"}))
    core.create_namespaced_secret(NS, secret("unrelated", {"mesh": "not ours"}))
    wait_for(lambda: w.resolve([REF, OTHER_KEY]) == {REF: "first"}, 10, what="the secret is read")
    changed.clear()
    core.patch_namespaced_secret("bgp-secrets", NS, {"data": {
        "mesh": base64.b64encode(b"second").decode()}})
    wait_for(changed.is_set, 10, what="on_change after the password changed")
    assert w.resolve([REF]) == {REF: "second"}
    core.delete_namespaced_secret("bgp-secrets", NS)
    wait_for(lambda: w.resolve([REF]) == {}, 10, what="the password goes with its secret")

    # Every request names the Secret and is one the manifest's Role grants in its namespace.
    role = find(documents(), "Role", "pycalico-node-bgp-secrets")
    granted = {("", "secrets", verb) for verb in role["rules"][0]["verbs"]}
    assert role["metadata"]["namespace"] == NS
    assert calls, "no request recorded"
    for method, path, query in calls:
        assert path == f"/api/v1/namespaces/{NS}/secrets", path
        assert query["fieldSelector"] == "metadata.name=bgp-secrets", query
        assert rbac_request(method, path, query) in granted
    assert {rbac_request(*c)[2] for c in calls} == {"list", "watch"}


def test_no_kubernetes_api_resolves_nothing(monkeypatch):
    """Etcd datastore without a kubeconfig: no Secret can be read; nothing resolves."""
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    reader = for_agent(object(), None, lambda: None)
    assert isinstance(reader, NoSecrets)
    assert reader.resolve([REF]) == {}


def test_etcd_mode_with_a_kubeconfig_reads_secrets_through_the_kubernetes_api(
        core, fresh_apiserver, tmp_path, monkeypatch):  # noqa: F811
    """As Calico: the etcd datastore holds the resources, the Kubernetes API the Secrets."""
    import hostio
    from lab.apiserver.launch import kubeconfig

    monkeypatch.delenv("POD_NAMESPACE", raising=False)  # the default: kube-system
    config = tmp_path / "kubeconfig"
    hostio.write_private(config, kubeconfig(fresh_apiserver.url))
    core.create_namespaced_secret(NS, secret("bgp-secrets", {"mesh": "via-k8s"}))
    changed = threading.Event()
    reader = for_agent(object(), str(config), changed.set)  # any datastore that is not Kubernetes
    try:
        assert isinstance(reader, SecretWatcher)
        wait_for(lambda: reader.resolve([REF]) == {REF: "via-k8s"}, 10, what="secret read")
    finally:
        reader.close()
