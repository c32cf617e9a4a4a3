"""The lab runs the DaemonSet's main container as kubelet would: command and environment from
deploy/pycalico.yaml, field references resolved for each node (issue 7, item 4)."""
import pytest

from lab import manifest


def test_the_main_container_for_a_node():
    argv, env = manifest.container_command(manifest.documents(), "lab-node3")
    assert argv == ["pycalico-node"]
    assert env["NODENAME"] == "lab-node3"  # fieldRef spec.nodeName
    assert env["IP"] == "autodetect" and env["DATASTORE_TYPE"] == "kubernetes"  # value, ConfigMap
    assert manifest.readiness_url(manifest.documents()) == "http://127.0.0.1:9099/readiness"


def test_an_env_source_the_lab_cannot_resolve_is_named():
    docs = manifest.documents()
    container = manifest._main_container(docs)
    container["env"] = [*container["env"], {"name": "SECRET_THING", "valueFrom": {
        "secretKeyRef": {"name": "s", "key": "k"}}}]
    with pytest.raises(ValueError, match="SECRET_THING"):
        manifest.container_command(docs, "n1")
