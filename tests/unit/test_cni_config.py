"""CNI plumbing without root: names, config and env parsing, error results, IPAM result shape."""
from __future__ import annotations

import io
import ipaddress
import json
import logging
import os
import stat

import pytest

from cni import config, names, runtime
from cni.delegate import find_plugin
from cni.errors import CNIError
from cni.ipam_plugin import ipam_result, pool_names
from crds import IPPool, ObjectMeta
from datastore import Unavailable
from datastore.memory import MemoryDatastore
from ipam import NoEligiblePool, PoolExhausted, RetriesExhausted

CONF = {"cniVersion": "1.0.0", "name": "k8s-pod-network", "type": "pycalico-cni",
        "datastore_type": "etcdv3", "etcd_endpoints": "http://10.99.0.254:2379",
        "nodename": "node1", "ipam": {"type": "pycalico-ipam", "ipv4_pools": ["default-ipv4-ippool"]}}
ENV = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_NETNS": "/var/run/netns/p",
       "CNI_IFNAME": "eth0", "CNI_PATH": "/opt/cni/bin:/usr/lib/cni",
       "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=pod-1"}


def test_calico_names():
    assert names.host_ifname("default", "pod-1") == "cali83dbd022cd5"
    assert len(names.host_ifname("a-very-long-namespace", "x" * 63)) == 15
    assert names.wep_name("node-1", "pod-1", "eth0") == "node--1-k8s-pod--1-eth0"
    assert names.handle_id("k8s-pod-network", "abc") == "k8s-pod-network.abc"


def test_parse_netconf_and_env():
    conf = config.parse_netconf(json.dumps(CONF).encode())
    assert (conf.nodename, conf.ipam_type, conf.ipv4_pools) == (
        "node1", "pycalico-ipam", ("default-ipv4-ippool",))
    inv = config.parse_env(ENV)
    assert inv.path == ("/opt/cni/bin", "/usr/lib/cni")
    assert (inv.pod_namespace, inv.pod_name) == ("default", "pod-1")


@pytest.mark.parametrize("mutate,code,needle", [
    (lambda c: c.update(cniVersion="2.0.0"), 1, "cniVersion"),
    (lambda c: c.pop("name"), 7, "name"),
    (lambda c: c.update(ipam={}), 7, "ipam.type"),
    (lambda c: c.pop("etcd_endpoints"), 7, "etcd_endpoints"),
    (lambda c: c.update(nodename="L-node1"), 7, "nodename"),
    (lambda c: c["ipam"].update(ipv4_pools="p"), 7, "ipv4_pools"),
    (lambda c: c.update(log_level="verbose"), 7, "log_level"),
    (lambda c: c.update(log_level=10), 7, "log_level"),
    (lambda c: c.update(datastore_type="consul"), 7, "datastore_type"),
    (lambda c: c.update(datastore_type="kubernetes", kubernetes="/etc/kubeconfig"), 7, "kubernetes"),
    (lambda c: c.update(datastore_type="kubernetes", kubernetes={"kubeconfig": 3}), 7,
     "kubernetes.kubeconfig"),
])
def test_bad_netconf_names_the_field(mutate, code, needle):
    conf = json.loads(json.dumps(CONF))
    mutate(conf)
    with pytest.raises(CNIError) as err:
        config.parse_netconf(json.dumps(conf).encode())
    assert err.value.code == code and needle in err.value.msg


def test_kubernetes_datastore_as_calicos_conflist_writes_it():
    conf = dict(CONF, datastore_type="kubernetes",
                kubernetes={"kubeconfig": "/etc/cni/net.d/calico-kubeconfig"})
    del conf["etcd_endpoints"]
    parsed = config.parse_netconf(json.dumps(conf).encode())
    assert (parsed.datastore_type, parsed.kubeconfig) == ("kubernetes",
                                                          "/etc/cni/net.d/calico-kubeconfig")


def test_nodename_falls_back_to_file(tmp_path, monkeypatch):
    (tmp_path / "nodename").write_text("node7\n")
    monkeypatch.setattr(config, "NODENAME_FILE", str(tmp_path / "nodename"))
    conf = {k: v for k, v in CONF.items() if k != "nodename"}
    assert config.parse_netconf(json.dumps(conf).encode()).nodename == "node7"


def test_env_errors():
    with pytest.raises(CNIError, match="CNI_NETNS") as err:
        config.parse_env({**ENV, "CNI_NETNS": ""})
    assert err.value.code == 4
    assert config.parse_env({**ENV, "CNI_COMMAND": "DEL", "CNI_NETNS": ""}).netns == ""
    with pytest.raises(CNIError, match="KEY=VALUE"):
        config.parse_cni_args("K8S_POD_NAME")


def _run(handlers, env, stdin=json.dumps(CONF).encode()):
    out = io.StringIO()
    rc = runtime.run(handlers, stdin=stdin, env=env, stdout=out, configure_logging=False)
    return rc, (json.loads(out.getvalue()) if out.getvalue() else None)


def test_run_version_and_results():
    rc, out = _run({}, {"CNI_COMMAND": "VERSION"}, b'{"cniVersion":"0.4.0"}')
    assert rc == 0 and out["cniVersion"] == "0.4.0" and "1.0.0" in out["supportedVersions"]
    assert _run({"DEL": lambda inv, conf: None}, {**ENV, "CNI_COMMAND": "DEL"}) == (0, None)
    rc, out = _run({}, ENV, b"not json")
    assert rc == 1 and out["code"] == 6


@pytest.mark.parametrize("exc,code", [
    (PoolExhausted("pool p full"), 100), (NoEligiblePool("IP pool x not found"), 7),
    (RetriesExhausted("busy"), 11), (Unavailable("etcd down"), 11), (KeyError("bug"), 999),
    (CNIError(3, "gone"), 3),
])
def test_run_classifies_failures(exc, code):
    def fail(inv, conf):
        raise exc
    rc, out = _run({"ADD": fail}, ENV)
    assert rc == 1 and out["code"] == code and out["cniVersion"] == "1.0.0" and out["msg"]


def test_delegated_error_passes_through():
    err = CNIError.from_json('{"cniVersion":"1.0.0","code":100,"msg":"no free IP"}', "ipam")
    assert (err.code, err.msg) == (100, "no free IP")
    assert CNIError.from_json("Traceback ...", "ipam").code == 102


def test_find_plugin(tmp_path):
    plugin = tmp_path / "pycalico-ipam"
    plugin.write_text("#!/bin/sh\n")
    plugin.chmod(0o755)
    assert find_plugin("pycalico-ipam", ("/nonexistent", str(tmp_path))) == str(plugin)
    with pytest.raises(CNIError, match="not found") as err:
        find_plugin("host-local", (str(tmp_path),))
    assert err.value.code == 7


def test_ipam_result_and_pool_cidrs():
    assert ipam_result("1.0.0", ipaddress.ip_address("10.244.0.5")) == {
        "cniVersion": "1.0.0", "ips": [{"address": "10.244.0.5/32"}],
        "routes": [{"dst": "0.0.0.0/0"}], "dns": {}}
    assert ipam_result("0.3.1", ipaddress.ip_address("10.0.0.1"))["ips"][0]["version"] == "4"
    ds = MemoryDatastore()
    ds.create(IPPool(metadata=ObjectMeta(name="default-ipv4-ippool"), spec={"cidr": "10.244.0.0/16"}))
    assert pool_names(ds, ("10.244.0.0/16", "other", "10.9.0.0/16")) == [
        "default-ipv4-ippool", "other", "10.9.0.0/16"]


@pytest.mark.parametrize("given,level", [
    ("debug", "DEBUG"), ("INFO", "INFO"), ("info", "INFO"), ("Warning", "WARNING"), ("warn", "WARNING"),
    ("ERROR", "ERROR"), (None, "WARNING"), ("", "WARNING"),
])
def test_log_level_any_case(given, level):
    conf = config.parse_netconf(json.dumps({**CONF, "log_level": given}).encode())
    assert conf.log_level == level


@pytest.mark.parametrize("level", [logging.DEBUG, logging.INFO])
def test_run_succeeds_when_info_is_logged(caplog, level):
    """Regression: the "cni ADD" line's extra fields collided with LogRecord.args at INFO."""
    caplog.set_level(level)
    assert _run({"ADD": lambda inv, conf: {"ok": 1}}, ENV) == (0, {"ok": 1})
    [line] = [r for r in caplog.records if r.getMessage() == "cni ADD"]
    assert line.cni_args["K8S_POD_NAME"] == "pod-1" and line.container == "c1"


@pytest.fixture
def root_logger():
    """runtime._setup_logging owns the root logger: put pytest's back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        yield root
    finally:
        for handler in root.handlers:
            if handler not in handlers:
                handler.close()
        root.handlers[:], root.level = handlers, level


def test_log_file_is_private_whatever_the_umask(tmp_path, root_logger):
    path = tmp_path / "calico" / "cni" / "cni.log"
    conf = config.parse_netconf(json.dumps(
        {**CONF, "log_level": "info", "log_file_path": str(path)}).encode())
    old = os.umask(0)
    try:
        runtime._setup_logging(conf)
    finally:
        os.umask(old)
    logging.getLogger("cni").info("hello", extra={"pod": "default/p"})
    assert root_logger.level == logging.INFO
    assert oct(stat.S_IMODE(path.stat().st_mode)) == "0o600"
    assert oct(stat.S_IMODE(path.parent.stat().st_mode)) == "0o700"
    assert "[INFO]" in path.read_text() and "hello pod=default/p" in path.read_text()


def test_unopenable_log_file_is_a_named_error(tmp_path, root_logger):
    (tmp_path / "dir").mkdir()
    conf = {**CONF, "log_file_path": str(tmp_path / "dir")}  # a directory: cannot be opened
    out = io.StringIO()
    rc = runtime.run({"ADD": lambda inv, c: {}}, stdin=json.dumps(conf).encode(), env=ENV,
                     stdout=out)
    result = json.loads(out.getvalue())
    assert rc == 1 and result["code"] == 5 and "log_file_path" in result["msg"]


def test_node_lock_is_private_whatever_the_umask(tmp_path, monkeypatch):
    from cni import ipam_plugin
    monkeypatch.setattr(ipam_plugin, "RUN_ROOT", tmp_path / "run")
    (tmp_path / "run" / "node1").mkdir(parents=True, mode=0o777)
    (tmp_path / "run" / "node1" / "ipam.lock").touch(mode=0o666)  # left by an older version
    old = os.umask(0)
    try:
        with ipam_plugin.node_lock("node1"), ipam_plugin.node_lock("node2"):
            pass
    finally:
        os.umask(old)
    mode = lambda p: oct(stat.S_IMODE(p.stat().st_mode))  # noqa: E731
    for node in ("node1", "node2"):
        assert mode(tmp_path / "run" / node) == "0o700"
        assert mode(tmp_path / "run" / node / "ipam.lock") == "0o600"


def test_delegate_passes_the_invocations_environment(tmp_path):
    """The IPAM plugin sees the env the invocation came with (in-process runs pass their own)."""
    from cni.delegate import delegate
    plugin = tmp_path / "echo-ipam"
    plugin.write_text('#!/bin/sh\necho "{\\"cid\\": \\"$CNI_CONTAINERID\\", \\"cmd\\": \\"$CNI_COMMAND\\"}"\n')
    plugin.chmod(0o755)
    inv = config.parse_env({**ENV, "CNI_CONTAINERID": "from-inv", "CNI_PATH": str(tmp_path)})
    conf = config.parse_netconf(json.dumps({**CONF, "ipam": {"type": "echo-ipam"}}).encode())
    assert delegate("ADD", inv, conf) == {"cid": "from-inv", "cmd": "ADD"}


class FlakyDelegate:
    def __init__(self, *errors: CNIError) -> None:
        self.errors, self.calls = list(errors), 0

    def __call__(self, command, inv, conf):
        assert command == "DEL"
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)


def _inv_conf():
    return config.parse_env(ENV), config.parse_netconf(json.dumps(CONF).encode())


def test_release_after_failed_add_retries_while_the_datastore_is_unreachable(monkeypatch, caplog):
    from cni import plugin
    flaky = FlakyDelegate(CNIError(11, "etcd down"), CNIError(11, "etcd down"))
    monkeypatch.setattr(plugin, "delegate", flaky)
    plugin.release_address(*_inv_conf())
    assert flaky.calls == 3
    assert [r.levelname for r in caplog.records if "retrying" in r.getMessage()][:1] == ["WARNING"]


def test_release_after_failed_add_gives_up(monkeypatch):
    from cni import plugin
    permanent = FlakyDelegate(CNIError(7, "bad config"))
    monkeypatch.setattr(plugin, "delegate", permanent)
    with pytest.raises(CNIError, match="bad config"):
        plugin.release_address(*_inv_conf())
    assert permanent.calls == 1  # not "try again later": not retried
    endless = FlakyDelegate(*[CNIError(11, "etcd down")] * 1000)
    monkeypatch.setattr(plugin, "delegate", endless)
    monkeypatch.setattr(plugin, "RELEASE_DEADLINE", 0.5)
    with pytest.raises(CNIError, match="etcd down"):
        plugin.release_address(*_inv_conf())
    assert 1 < endless.calls < 10  # bounded
