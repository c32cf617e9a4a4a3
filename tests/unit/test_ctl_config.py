"""pycalicoctl's datastore settings: flags, a CalicoAPIConfig file, the environment, calicoctl.cfg."""
from __future__ import annotations

import pytest

from ctl.config import ConfigError, Flags, Target, resolve

NONE = Flags(None, None, None)
ETCD_FILE = """apiVersion: projectcalico.org/v3
kind: CalicoAPIConfig
metadata:
spec:
  datastoreType: "etcdv3"
  etcdEndpoints: "http://etcd1:2379,http://etcd2:2379"
"""


def test_nothing_configured_means_kubernetes_as_calicoctl():
    assert resolve(NONE, env={}, default_file=None) == Target("kubernetes", None, None)


def test_the_config_file_in_calicoctls_format(tmp_path):
    cfg = tmp_path / "calicoctl.cfg"
    cfg.write_text(ETCD_FILE)
    assert resolve(NONE, config=str(cfg), env={}, default_file=None) == Target(
        "etcdv3", "http://etcd1:2379,http://etcd2:2379", None)


def test_flags_beat_the_file_the_file_beats_env_env_beats_the_default_file(tmp_path):
    cfg = tmp_path / "a.cfg"
    cfg.write_text(ETCD_FILE)
    default = tmp_path / "default.cfg"
    default.write_text(ETCD_FILE.replace("etcd1", "default"))
    env = {"ETCD_ENDPOINTS": "http://env:2379", "KUBECONFIG": "/k"}
    assert resolve(Flags(None, "http://flag:2379", None), config=str(cfg), env=env,
                   default_file=default).etcd_endpoints == "http://flag:2379"
    assert resolve(NONE, config=str(cfg), env=env, default_file=default).etcd_endpoints.startswith(
        "http://etcd1")
    assert resolve(NONE, env=env, default_file=default) == Target("etcdv3", "http://env:2379", "/k")
    assert resolve(NONE, env={}, default_file=default).etcd_endpoints.startswith("http://default")


@pytest.mark.parametrize("text,needle", [
    ("apiVersion: projectcalico.org/v3\nkind: CalicoAPIConfig\nspec: {datastoreType: consul}\n",
     "spec.datastoreType"),
    ("apiVersion: projectcalico.org/v3\nkind: CalicoAPIConfig\nspec: {etcdEndpoint: x}\n",
     "spec.etcdEndpoint"),
    ("apiVersion: projectcalico.org/v3\nkind: IPPool\n", "kind"),
    ("{not yaml", "not a YAML"),
])
def test_a_bad_config_file_names_the_file_and_field(tmp_path, text, needle):
    cfg = tmp_path / "bad.cfg"
    cfg.write_text(text)
    with pytest.raises(ConfigError, match=needle) as err:
        resolve(NONE, config=str(cfg), env={}, default_file=None)
    assert str(cfg) in str(err.value)


def test_a_missing_config_file_is_an_error_not_a_silent_fallback(tmp_path):
    with pytest.raises(ConfigError, match="No such file"):
        resolve(NONE, config=str(tmp_path / "missing.cfg"), env={}, default_file=None)
