"""deploy/pycalico.yaml: its CRDs are the models', every object is valid Kubernetes (the schema of the
newest release kubernetes-validate ships, offline), and the DaemonSet is calico-node's shape."""
import configparser
import copy
import doctest
import json
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

import lab.manifest
from cni.config import parse_netconf
from cni.install import Settings, conflist
from crds.manifests import definitions
from lab.manifest import MANIFEST, cni_network_config, documents, find, render

ROOT = Path(__file__).resolve().parents[2]
DOCS = documents()
DS = find(DOCS, "DaemonSet", "pycalico-node")
POD = DS["spec"]["template"]["spec"]
[INIT] = POD["initContainers"]
[NODE] = POD["containers"]


def test_doctests():
    assert doctest.testmod(lab.manifest).failed == 0


def test_committed_crds_match_the_models():
    assert MANIFEST.read_text() == render(MANIFEST.read_text()), \
        "deploy/pycalico.yaml's CRDs are stale: run `python -m lab.manifest`"
    crds = [d for d in DOCS if d["kind"] == "CustomResourceDefinition"]
    assert crds == definitions()
    shipped = [d for d in yaml.safe_load_all((ROOT / "deploy" / "crds.yaml").read_text()) if d]
    assert crds == shipped


def test_render_notices_a_drifted_crd():
    text = MANIFEST.read_text().replace("maxBlocksPerHost", "maxBlocksPerHostX", 1)
    assert text != MANIFEST.read_text() and render(text) == MANIFEST.read_text()
    with pytest.raises(ValueError, match="marker lines"):
        render("kind: X\n")


@pytest.mark.parametrize("doc", DOCS, ids=lambda d: f"{d['kind']}/{d['metadata']['name']}")
def test_every_object_is_valid_for_the_newest_kubernetes(doc):
    version = kubernetes_validate.latest_version()
    assert tuple(map(int, version.split(".")))[:2] >= (1, 33)
    checked = kubernetes_validate.validate(doc, version, strict=True)
    assert version.startswith(checked + "."), (version, checked)


@pytest.mark.parametrize("path, value", [
    (("spec", "template", "spec", "hostNetwork"), "yes"),
    (("spec", "template", "spec", "hostNetworking"), True),
    (("spec", "updateStrategy", "rollingUpdate", "maxUnavailabel"), 1),
])
def test_the_validation_catches_mistakes(path, value):
    broken = copy.deepcopy(DS)
    node = broken
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, kubernetes_validate.latest_version(), strict=True)


def test_daemonset_is_calico_nodes_shape():
    assert POD["hostNetwork"] is True
    assert POD["priorityClassName"] == "system-node-critical"
    assert {"operator": "Exists"} in POD["tolerations"]
    assert DS["spec"]["updateStrategy"] == {"type": "RollingUpdate",
                                            "rollingUpdate": {"maxUnavailable": 1}}
    assert NODE["securityContext"]["privileged"] is True
    assert INIT["securityContext"]["privileged"] is True
    host_paths = {v["hostPath"]["path"] for v in POD["volumes"]}
    assert host_paths == {"/opt/cni/bin", "/etc/cni/net.d", "/var/run/pycalico", "/var/run/netns",
                          "/lib/modules"}
    volumes = {v["name"] for v in POD["volumes"]}
    for container in (INIT, NODE):
        assert {m["name"] for m in container["volumeMounts"]} <= volumes
    assert NODE["resources"]["requests"].keys() == {"cpu", "memory"}
    for probe, path in (("readinessProbe", "/readiness"), ("livenessProbe", "/liveness")):
        assert NODE[probe]["httpGet"] == {"host": "localhost", "path": path, "port": 9099}


def env_of(container):
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def test_node_environment_is_calico_nodes():
    env = env_of(NODE)
    assert env["NODENAME"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    assert env["IP"] == "autodetect" and env["IP_AUTODETECTION_METHOD"] == "first-found"
    for name in ("DATASTORE_TYPE", "CALICO_IPV4POOL_CIDR", "CALICO_IPV4POOL_BLOCK_SIZE",
                 "CALICO_IPV4POOL_IPIP", "CALICO_IPV4POOL_VXLAN", "CALICO_IPV4POOL_NAT_OUTGOING",
                 "CALICO_NETWORKING_BACKEND"):
        assert name in env, name
    data = find(DOCS, "ConfigMap", "pycalico-config")["data"]
    assert data["datastore_type"] == "kubernetes" and data["calico_backend"] == "bird"
    # The agent's run root, mounted from the host, is where PYCALICO_RUN_ROOT points.
    mounts = {m["name"]: m["mountPath"] for m in NODE["volumeMounts"]}
    assert env["PYCALICO_RUN_ROOT"] == mounts["var-run-pycalico"] == "/var/run/pycalico"


def test_every_configmap_reference_exists():
    data = find(DOCS, "ConfigMap", "pycalico-config")["data"]
    for container in (INIT, NODE):
        for value in env_of(container).values():
            if isinstance(value, dict) and "configMapKeyRef" in value:
                ref = value["configMapKeyRef"]
                assert ref["name"] == "pycalico-config" and ref["key"] in data, ref


def test_commands_are_our_console_scripts():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    scripts = {line.split("=")[0].strip()
               for line in cfg["options.entry_points"]["console_scripts"].splitlines() if line}
    assert INIT["command"] == ["pycalico-install-cni"] and NODE["command"] == ["pycalico-node"]
    assert {INIT["command"][0], NODE["command"][0]} <= scripts


def test_service_account_is_bound_to_the_roles():
    sa = find(DOCS, "ServiceAccount", "pycalico-node")["metadata"]
    assert POD["serviceAccountName"] == sa["name"] and DS["metadata"]["namespace"] == sa["namespace"]
    subject = {"kind": "ServiceAccount", "name": sa["name"], "namespace": sa["namespace"]}
    for binding, role in (("ClusterRoleBinding", "ClusterRole"), ("RoleBinding", "Role")):
        docs = [d for d in DOCS if d["kind"] == binding]
        assert docs and all(d["subjects"] == [subject] and d["roleRef"]["kind"] == role
                            for d in docs)
        for d in docs:
            find(DOCS, role, d["roleRef"]["name"])


def rules(kind, name):
    out = {}
    for rule in find(DOCS, kind, name)["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                out[(group, resource)] = set(rule["verbs"])
    return out


def test_rbac_is_least_privilege():
    cluster = rules("ClusterRole", "pycalico-node")
    assert not any("*" in verbs or "*" in key for key, verbs in cluster.items())
    crds = {(d["spec"]["group"], d["spec"]["names"]["plural"]) for d in definitions()}
    assert {k for k in cluster if k[0] == "crd.projectcalico.org"} == crds
    assert all(cluster[k] == {"get", "list", "watch", "create", "update", "delete"} for k in crds)
    assert cluster[("", "nodes")] == {"get", "list", "watch", "update"}
    assert cluster[("", "pods")] == {"get", "list", "watch", "patch"}
    assert set(cluster) == crds | {("", "nodes"), ("", "pods")}
    # Secrets (BGP passwords) only in the agent's own namespace, read only.
    assert ("", "secrets") not in cluster
    assert rules("Role", "pycalico-node-bgp-secrets") == {("", "secrets"): {"list", "watch"}}
    assert find(DOCS, "Role", "pycalico-node-bgp-secrets")["metadata"]["namespace"] == "kube-system"


def test_every_rbac_rule_says_why():
    text = MANIFEST.read_text()
    role = text[text.index("kind: ClusterRole\n"):]
    role = role[:role.index("\n---\n")]
    lines = role.splitlines()
    for i, line in enumerate(lines):
        if line.strip().startswith("- apiGroups"):
            assert lines[i - 1].strip().startswith("#"), f"ClusterRole rule without a comment: {line}"


def test_conflist_template_is_calicos_and_our_plugin_accepts_it(tmp_path):
    template = cni_network_config(DOCS)
    s = Settings(bin_dir=tmp_path, net_dir=Path("/etc/cni/net.d"), sa_dir=tmp_path,
                 plugin_dir=tmp_path, plugin="venv", template=template, mtu="1440", nodename="node-1", env={})
    conf = conflist(s)
    first, portmap = conf["plugins"]
    assert first["type"] == "pycalico-cni" and first["ipam"] == {"type": "pycalico-ipam"}
    assert first["kubernetes"] == {"kubeconfig": "/etc/cni/net.d/pycalico-kubeconfig"}
    assert (first["nodename"], first["mtu"], first["log_level"]) == ("node-1", 1440, "info")
    assert portmap == {"type": "portmap", "snat": True, "capabilities": {"portMappings": True}}
    netconf = parse_netconf(json.dumps({"cniVersion": conf["cniVersion"], "name": conf["name"],
                                        **first}).encode())
    assert (netconf.datastore_type, netconf.kubeconfig) == (
        "kubernetes", "/etc/cni/net.d/pycalico-kubeconfig")
