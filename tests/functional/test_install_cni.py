"""The real ``pycalico-install-cni`` console script, run as the DaemonSet's init container would be:
with the environment deploy/pycalico.yaml gives it (ConfigMap keys and the node name resolved),
into temporary host directories; then the plugin it installed is run from there."""
from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from cni.install import CONFLIST_NAME, KUBECONFIG_NAME
from lab.manifest import documents, find

BIN = Path(sys.executable).parent
INSTALL = BIN / "pycalico-install-cni"

pytestmark = pytest.mark.skipif(not INSTALL.exists(),
                                reason="pycalico-install-cni is not installed (pip install -e .)")


def init_container_env(node: str) -> dict[str, str]:
    """The install-cni container's env from the manifest, as kubelet resolves it on ``node``."""
    docs = documents()
    pod = find(docs, "DaemonSet", "pycalico-node")["spec"]["template"]["spec"]
    [init] = pod["initContainers"]
    env = {}
    for var in init["env"]:
        source = var.get("valueFrom", {})
        if "configMapKeyRef" in source:
            ref = source["configMapKeyRef"]
            env[var["name"]] = find(docs, "ConfigMap", ref["name"])["data"][ref["key"]]
        elif source.get("fieldRef", {}).get("fieldPath") == "spec.nodeName":
            env[var["name"]] = node
        else:
            assert not source, f"unresolved env source {var}"
            env[var["name"]] = var["value"]
    assert init["command"] == ["pycalico-install-cni"]
    return env


@pytest.fixture
def host(tmp_path):
    sa = tmp_path / "sa"
    sa.mkdir()
    (sa / "token").write_text("sa-token\n")
    (sa / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    bin_dir, net_dir = tmp_path / "opt/cni/bin", tmp_path / "etc/cni/net.d"
    env = {**init_container_env("node-a"), "KUBERNETES_SERVICE_HOST": "10.96.0.1",
           "KUBERNETES_SERVICE_PORT": "443", "PATH": "/usr/bin:/bin"}
    argv = [str(INSTALL), "--cni-bin-dir", str(bin_dir), "--cni-net-dir", str(net_dir),
            "--sa-dir", str(sa)]
    return argv, env, bin_dir, net_dir, sa


def run(argv, env, *extra):
    return subprocess.run([*argv, *extra], env=env, capture_output=True, text=True, timeout=60,
                          umask=0o077)  # a tight umask must not make the files unreadable


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_install_run_plugin_rerun_uninstall(host):
    argv, env, bin_dir, net_dir, _ = host
    net_dir.mkdir(parents=True)
    (net_dir / "99-loopback.conf").write_text('{"cniVersion": "1.0.0", "type": "loopback"}')

    first = run(argv, env)
    assert first.returncode == 0, first.stderr
    # The manifest installs the thin plugin (the agent serves its socket): conflist, kubeconfig
    # and pycalico-cni; no pycalico-ipam (IPAM runs in the agent).
    assert first.stdout.strip().endswith("install-cni: 3 file(s) changed")
    conf = json.loads((net_dir / CONFLIST_NAME).read_text())
    plugin = conf["plugins"][0]
    assert (plugin["nodename"], plugin["mtu"]) == ("node-a", 1440)
    assert plugin["kubernetes"]["kubeconfig"] == str(net_dir / KUBECONFIG_NAME)
    assert (mode(net_dir / CONFLIST_NAME), mode(net_dir / KUBECONFIG_NAME)) == (0o644, 0o600)
    assert {p.name: mode(p) for p in bin_dir.iterdir()} == {"pycalico-cni": 0o755}
    assert (bin_dir / "pycalico-cni").read_text().startswith("#!/usr/bin/python3 -IS")

    # The runtime runs the installed plugin from the bin dir, with the conflist's first plugin.
    version = subprocess.run(
        [str(bin_dir / "pycalico-cni")], input=json.dumps({"cniVersion": conf["cniVersion"],
                                                           "name": conf["name"], **plugin}),
        env={"CNI_COMMAND": "VERSION", "PATH": "/usr/bin:/bin"}, capture_output=True, text=True,
        timeout=60)
    assert version.returncode == 0, version.stderr
    assert "1.0.0" in json.loads(version.stdout)["supportedVersions"]

    rerun = run(argv, env)
    assert rerun.returncode == 0 and rerun.stdout.strip().endswith("install-cni: nothing to do")

    removed = run(argv, env, "--uninstall")
    assert removed.returncode == 0, removed.stderr
    assert sorted(p.name for p in net_dir.iterdir()) == ["99-loopback.conf"]
    assert list(bin_dir.iterdir()) == []


def test_bad_service_account_dir_exits_2_with_one_line(host):
    argv, env, bin_dir, net_dir, sa = host
    (sa / "token").unlink()
    result = run(argv, env)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == (f"pycalico-install-cni: --sa-dir: {sa}/token: "
                             "No such file or directory\n")
    assert not bin_dir.exists() and not net_dir.exists()


def test_thin_plugin_runs_on_the_hosts_own_python(host):
    """--plugin thin installs a pycalico-cni that needs no virtualenv: run it by its shebang with
    an environment that names no venv; it answers VERSION itself, and an ADD with no agent on the
    node is CNI error 11 (try again later), not a traceback."""
    argv, env, bin_dir, net_dir, _ = host
    result = run(argv, {**env, "PYCALICO_CNI_PLUGIN": "thin"})
    assert result.returncode == 0, result.stderr
    assert [p.name for p in bin_dir.iterdir()] == ["pycalico-cni"]
    conf = json.loads((net_dir / CONFLIST_NAME).read_text())
    netconf = json.dumps({"cniVersion": conf["cniVersion"], "name": conf["name"],
                          **conf["plugins"][0]})
    plain = {"PATH": "/usr/bin:/bin", "PYCALICO_RUN_ROOT": str(bin_dir.parent / "no-agent")}
    version = subprocess.run([str(bin_dir / "pycalico-cni")], input=netconf, capture_output=True,
                             text=True, timeout=60, env={**plain, "CNI_COMMAND": "VERSION"})
    assert version.returncode == 0, version.stderr
    assert "1.0.0" in json.loads(version.stdout)["supportedVersions"]
    add = subprocess.run([str(bin_dir / "pycalico-cni")], input=netconf, capture_output=True,
                         text=True, timeout=60, env={
                             **plain, "CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1",
                             "CNI_NETNS": "/var/run/netns/none", "CNI_IFNAME": "eth0",
                             "CNI_PATH": str(bin_dir)})
    assert add.returncode != 0 and json.loads(add.stdout)["code"] == 11, add.stdout + add.stderr
