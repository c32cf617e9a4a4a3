"""pycalico-install-cni in temporary directories: install, rerun, foreign files, uninstall, bad input."""
import base64
import doctest
import json
import os
import stat
from pathlib import Path

import pytest
import yaml

import cni.install
import cni.thin
from cni.install import CONFLIST_NAME, KUBECONFIG_NAME, main
from lab.manifest import cni_network_config

FOREIGN = {"cniVersion": "1.0.0", "name": "flannel", "plugins": [{"type": "flannel"}]}


@pytest.fixture
def host(tmp_path):
    """A host's CNI directories, a service account, and plugin sources; argv and env to use them."""
    sa, src = tmp_path / "sa", tmp_path / "venv-bin"
    sa.mkdir()
    src.mkdir()
    (sa / "token").write_text("tok-123\n")
    (sa / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    for name in ("pycalico-cni", "pycalico-ipam"):
        (src / name).write_text(f"#!/usr/bin/python3\n# {name}\n")
    bin_dir, net_dir = tmp_path / "opt" / "cni" / "bin", tmp_path / "etc-cni-net.d"
    argv = ["--cni-bin-dir", str(bin_dir), "--cni-net-dir", str(net_dir), "--sa-dir", str(sa),
            "--plugin-dir", str(src)]
    env = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443",
           "NODENAME": "node-1", "CNI_MTU": "1440", "CNI_NETWORK_CONFIG": cni_network_config()}
    return argv, env, bin_dir, net_dir, sa


def mode(path):
    return stat.S_IMODE(path.stat().st_mode)


def snapshot(*dirs):
    return {p: (p.read_bytes(), p.stat().st_mtime_ns, mode(p))
            for d in dirs if d.exists() for p in sorted(d.iterdir())}


def test_doctests():
    assert doctest.testmod(cni.install).failed == 0


def test_fresh_install_writes_conflist_kubeconfig_and_plugins(host, capsys):
    argv, env, bin_dir, net_dir, _ = host
    old = os.umask(0)  # the umask must not decide any mode
    try:
        assert main(argv, env) == 0
    finally:
        os.umask(old)
    conf = json.loads((net_dir / CONFLIST_NAME).read_text())
    first = conf["plugins"][0]
    assert (first["type"], first["nodename"], first["mtu"]) == ("pycalico-cni", "node-1", 1440)
    assert first["kubernetes"]["kubeconfig"] == str(net_dir / KUBECONFIG_NAME)
    assert conf["plugins"][1]["capabilities"] == {"portMappings": True}
    kube = yaml.safe_load((net_dir / KUBECONFIG_NAME).read_text())
    [cluster] = kube["clusters"]
    assert cluster["cluster"]["server"] == "https://10.96.0.1:443"
    assert base64.b64decode(cluster["cluster"]["certificate-authority-data"]).startswith(b"-----BEGIN")
    assert kube["users"][0]["user"] == {"token": "tok-123"}
    assert mode(net_dir / CONFLIST_NAME) == 0o644 and mode(net_dir / KUBECONFIG_NAME) == 0o600
    assert mode(bin_dir) == mode(net_dir) == mode(bin_dir.parent) == 0o755
    for name in ("pycalico-cni", "pycalico-ipam"):
        assert mode(bin_dir / name) == 0o755
        assert (bin_dir / name).read_text() == f"#!/usr/bin/python3\n# {name}\n"
    out = capsys.readouterr().out
    assert out.count("wrote ") == 4 and "4 file(s) changed" in out and "warning" not in out
    assert not [p for p in (*bin_dir.iterdir(), *net_dir.iterdir()) if p.name.endswith(".tmp")]


def test_second_run_changes_nothing_and_says_so(host, capsys):
    argv, env, bin_dir, net_dir, _ = host
    assert main(argv, env) == 0
    before = snapshot(bin_dir, net_dir)
    capsys.readouterr()
    assert main(argv, env) == 0
    assert snapshot(bin_dir, net_dir) == before
    out = capsys.readouterr().out
    assert out.count("unchanged ") == 4 and out.rstrip().endswith("install-cni: nothing to do")


def test_a_changed_input_rewrites_only_that_file(host, capsys):
    argv, env, bin_dir, net_dir, _ = host
    assert main(argv, env) == 0
    os.chmod(bin_dir / "pycalico-ipam", 0o700)  # drifted mode is repaired
    capsys.readouterr()
    assert main(argv, {**env, "CNI_MTU": "1400"}) == 0
    out = capsys.readouterr().out
    assert f"wrote {net_dir / CONFLIST_NAME}" in out and f"wrote {bin_dir / 'pycalico-ipam'}" in out
    assert out.count("unchanged ") == 2
    assert json.loads((net_dir / CONFLIST_NAME).read_text())["plugins"][0]["mtu"] == 1400
    assert mode(bin_dir / "pycalico-ipam") == 0o755


def test_foreign_files_are_left_alone_and_survive_uninstall(host, capsys):
    argv, env, bin_dir, net_dir, _ = host
    net_dir.mkdir()
    bin_dir.mkdir(parents=True)
    (net_dir / "05-flannel.conflist").write_text(json.dumps(FOREIGN))
    (bin_dir / "flannel").write_text("#!/bin/sh\n")
    foreign = snapshot(bin_dir, net_dir)
    assert main(argv, env) == 0
    out = capsys.readouterr().out
    assert (f"warning: {net_dir / '05-flannel.conflist'} sorts before {CONFLIST_NAME}; the "
            "container runtime uses the first") in out and "4 file(s) changed" in out
    assert main(argv + ["--uninstall"], env) == 0
    assert snapshot(bin_dir, net_dir) == foreign
    out = capsys.readouterr().out
    assert out.count("removed ") == 4


def test_a_foreign_file_at_our_conflist_path_is_never_overwritten(host, capsys):
    argv, env, bin_dir, net_dir, _ = host
    net_dir.mkdir()
    theirs = net_dir / CONFLIST_NAME
    theirs.write_text(json.dumps(FOREIGN))
    assert main(argv, env) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"pycalico-install-cni: {theirs}: exists and is not ours (its first plugin is "
                   "not 'pycalico-cni'); refusing to overwrite it"]
    assert json.loads(theirs.read_text()) == FOREIGN and not bin_dir.exists()
    assert main(argv + ["--uninstall"], env) == 0
    assert json.loads(theirs.read_text()) == FOREIGN
    assert f"left {theirs} (not ours)" in capsys.readouterr().out


@pytest.mark.parametrize("damage, message", [
    (lambda sa: (sa / "token").unlink(), "token: No such file or directory"),
    (lambda sa: (sa / "ca.crt").unlink(), "ca.crt: No such file or directory"),
    (lambda sa: (sa / "token").write_text(" \n"), "token: empty"),
])
def test_bad_service_account_dir_is_one_clear_line(host, capsys, damage, message):
    argv, env, bin_dir, net_dir, sa = host
    damage(sa)
    assert main(argv, env) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"pycalico-install-cni: --sa-dir: {sa}/")
    assert err[0].endswith(message)
    assert not net_dir.exists() and not bin_dir.exists()  # nothing written before all is checked


def test_missing_service_account_dir(host, capsys, tmp_path):
    argv, env, *_ = host
    argv = [*argv, "--sa-dir", str(tmp_path / "nowhere")]
    assert main(argv, env) == 2
    assert capsys.readouterr().err == (f"pycalico-install-cni: --sa-dir: {tmp_path}/nowhere/token: "
                                       "No such file or directory\n")


@pytest.mark.parametrize("env_change, message", [
    ({"KUBERNETES_SERVICE_HOST": ""}, "KUBERNETES_SERVICE_HOST: not set"),
    ({"CNI_MTU": "big"}, "CNI_MTU: 'big' is not a positive integer"),
    ({"CNI_MTU": "0"}, "CNI_MTU: '0' is not a positive integer"),
    ({"CNI_NETWORK_CONFIG": json.dumps({**FOREIGN, "plugins": {"type": "pycalico-cni"}})},
     "CNI_NETWORK_CONFIG: the first plugin's type"),
    ({"CNI_NETWORK_CONFIG": "{not json"}, "CNI_NETWORK_CONFIG: not valid JSON"),
    ({"CNI_NETWORK_CONFIG": json.dumps(FOREIGN)}, "CNI_NETWORK_CONFIG: the first plugin's type"),
    ({"CNI_NETWORK_CONFIG": json.dumps({**FOREIGN, "plugins": [
        {"type": "pycalico-cni", "datastore_type": "kubernetes", "ipam": {"type": "x"},
         "log_level": "loud"}]})}, "CNI_NETWORK_CONFIG: plugins[0]: log_level"),
])
def test_bad_settings_name_the_setting(host, capsys, env_change, message):
    argv, env, bin_dir, net_dir, _ = host
    assert main(argv, {**env, **env_change}) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"pycalico-install-cni: {message}") and err.count("\n") == 1
    assert not net_dir.exists()


def test_etcd_datastore_needs_no_service_account(host, tmp_path):
    argv, env, bin_dir, net_dir, _ = host
    template = json.dumps({"cniVersion": "1.0.0", "name": "k8s-pod-network", "plugins": [
        {"type": "pycalico-cni", "datastore_type": "etcdv3", "etcd_endpoints": "http://e:2379",
         "nodename": "__NODENAME__", "ipam": {"type": "pycalico-ipam"}}]})
    argv = [*argv, "--sa-dir", str(tmp_path / "nowhere")]
    assert main(argv, {"CNI_NETWORK_CONFIG": template, "NODENAME": "n2"}) == 0
    assert sorted(p.name for p in net_dir.iterdir()) == [CONFLIST_NAME]


def test_default_template_is_the_manifests(host):
    """The built-in template (no CNI_NETWORK_CONFIG) writes the same conflist as the ConfigMap's."""
    argv, env, bin_dir, net_dir, _ = host
    assert main(argv, env) == 0
    from_configmap = (net_dir / CONFLIST_NAME).read_bytes()
    assert main(argv, {k: v for k, v in env.items() if k != "CNI_NETWORK_CONFIG"}) == 0
    assert (net_dir / CONFLIST_NAME).read_bytes() == from_configmap


def test_ipv6_service_host_is_bracketed(host):
    argv, env, bin_dir, net_dir, _ = host
    assert main(argv, {**env, "KUBERNETES_SERVICE_HOST": "fd00::1"}) == 0
    kube = yaml.safe_load((net_dir / KUBECONFIG_NAME).read_text())
    assert kube["clusters"][0]["cluster"]["server"] == "https://[fd00::1]:443"


def test_thin_plugin_replaces_the_venv_scripts(host, capsys):
    argv, env, bin_dir, net_dir, _ = host
    assert main(argv, env) == 0
    capsys.readouterr()
    assert main([*argv, "--plugin", "thin"], env) == 0
    out = capsys.readouterr().out
    thin = Path(cni.thin.__file__).read_bytes()
    assert thin.startswith(b"#!/usr/bin/python3")
    assert {p.name: (p.read_bytes(), mode(p)) for p in bin_dir.iterdir()} == {
        "pycalico-cni": (thin, 0o755)}
    assert f"removed {bin_dir / 'pycalico-ipam'} (not used with --plugin thin)" in out
    assert main(argv, {**env, "PYCALICO_CNI_PLUGIN": "thin"}) == 0
    assert capsys.readouterr().out.rstrip().endswith("install-cni: nothing to do")
    assert main(argv + ["--uninstall"], env) == 0
    assert list(bin_dir.iterdir()) == []


def test_unknown_plugin_kind_from_the_environment(host, capsys):
    argv, env, *_ = host
    with pytest.raises(SystemExit) as exit_:
        main(argv, {**env, "PYCALICO_CNI_PLUGIN": "fat"})
    assert exit_.value.code == 2
    assert "PYCALICO_CNI_PLUGIN: 'fat' is not venv or thin" in capsys.readouterr().err


def test_the_official_client_loads_the_kubeconfig(host):
    """The CNI path loads this file with the kubernetes client, as datastore.kubernetes does."""
    from kubernetes import config as k8s_config

    argv, env, bin_dir, net_dir, _ = host
    assert main(argv, env) == 0
    api = k8s_config.new_client_from_config(config_file=str(net_dir / KUBECONFIG_NAME))
    try:
        cfg = api.configuration
        assert cfg.host == "https://10.96.0.1:443"
        assert list(cfg.api_key.values()) == ["Bearer tok-123"]
        assert Path(cfg.ssl_ca_cert).read_text().startswith("-----BEGIN CERTIFICATE-----")
    finally:
        api.close()
