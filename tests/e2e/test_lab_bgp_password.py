"""nodeMeshPassword in a 2-node lab on the Kubernetes datastore, through the DaemonSet's own
environment (POD_NAMESPACE from the downward API): the mesh session comes up with the password from
a Secret in kube-system, every ExaBGP config holds it (0600) and no log or node status shows it;
the Secret deleted, the mesh sessions are taken down and the logs name the field and the Secret;
the Secret back, the mesh is back. No agent restarts throughout."""
from __future__ import annotations

import base64
import json
import secrets
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from felix.status import RUN_ROOT, query
from lab.netns import in_netns
from tests import helpers
from tests.helpers import ctl, wait_for

LAB = f"p{secrets.token_hex(2)}"
MARK = "Hx4Tz"  # in the password and nowhere else
PASSWORD = f"{MARK} mesh; pw"


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    try:
        ctl("lab", "up", "--name", LAB, "--nodes", "2", "--pods-per-node", "0")
        yield helpers.lab_state(LAB)
    finally:
        _keep_logs(tmp_path_factory.mktemp("lab-logs"))
        subprocess.run([helpers.CTL, "lab", "down", "--name", LAB], capture_output=True, timeout=120)


def _keep_logs(dest: Path) -> None:
    """The agents' and ExaBGPs' logs, which ``lab down`` deletes, for a failure to be read later."""
    for log in Path(f"/run/pycalico-lab/{LAB}").glob("*.log"):
        shutil.copy(log, dest / log.name)
    for log in RUN_ROOT.glob(f"{LAB}-*/exabgp.log"):
        shutil.copy(log, dest / f"{log.parent.name}.exabgp.log")


def _secret(kubeconfig: str, password: str | None) -> None:
    """In the fabric namespace (where the API server listens): create or delete the Secret."""
    from kubernetes import client
    from kubernetes import config as k8s_config

    api = k8s_config.new_client_from_config(config_file=kubeconfig)
    try:
        core = client.CoreV1Api(api)
        if password is None:
            core.delete_namespaced_secret("bgp-secrets", "kube-system")
        else:
            core.create_namespaced_secret("kube-system", {
                "metadata": {"name": "bgp-secrets"},
                "data": {"mesh": base64.b64encode(password.encode()).decode()}})
    finally:
        api.close()


def _mesh_states(node: str) -> list[str]:
    try:
        return [p["state"] for p in query(node, "status")["peers"]]
    except (OSError, RuntimeError):
        return []


def _wait_mesh(nodes: list[str], predicate, timeout: float, what: str) -> None:
    """``wait_for``, and on a timeout each node's sessions as it reports them (state and reason:
    e.g. a connect timed out, a TCP MD5 drop), with the logs kept by the fixture."""
    try:
        wait_for(predicate, timeout, what=what)
    except pytest.fail.Exception:
        peers = {}
        for node in nodes:
            try:
                peers[node] = [(p["address"], p["state"], p.get("info")) for p in query(node, "status")["peers"]]
            except (OSError, RuntimeError) as exc:
                peers[node] = f"no status: {exc}"
        pytest.fail(f"timed out after {timeout}s waiting for {what}; sessions: {peers}")


def _since(node: str) -> list:
    return [p["since"] for p in query(node, "status")["peers"]]


def _agent_pids(state: dict) -> dict[str, int]:
    return state["agent_pids"]


def test_mesh_password_from_a_secret(lab, tmp_path):
    nodes = sorted(lab["nodes"])
    kubeconfig = str(Path(f"/run/pycalico-lab/{LAB}/kubeconfig"))
    wait_for(lambda: all(_mesh_states(n) == ["Established"] for n in nodes), 60,
             what="mesh up without password")
    pids = _agent_pids(helpers.lab_state(LAB))
    assert sorted(pids) == nodes

    before = {n: _since(n) for n in nodes}
    in_netns(f"{LAB}-fabric", _secret, kubeconfig, PASSWORD)
    config = tmp_path / "bgpconfig.yaml"
    config.write_text(json.dumps({
        "apiVersion": "projectcalico.org/v3", "kind": "BGPConfiguration", "metadata": {"name": "default"},
        "spec": {"nodeToNodeMeshEnabled": True, "asNumber": 64512,
                 "nodeMeshPassword": {"secretKeyRef": {"name": "bgp-secrets", "key": "mesh"}}}}))
    ctl("lab", "apply", "--name", LAB, "-f", str(config))
    encoded = base64.b64encode(PASSWORD.encode()).decode()
    for node in nodes:
        conf = RUN_ROOT / node / "exabgp.conf"
        wait_for(lambda: encoded in conf.read_text(), 30, what=f"{node}'s ExaBGP config has the key")
        assert stat.S_IMODE(conf.stat().st_mode) == 0o600
    # Up again *after* the key was set: ExaBGP re-established the session with it.
    _wait_mesh(nodes, lambda: all(_mesh_states(n) == ["Established"] and _since(n) != before[n]
                                  for n in nodes), 60, what="mesh re-established with the password")

    in_netns(f"{LAB}-fabric", _secret, kubeconfig, None)
    wait_for(lambda: all(_mesh_states(n) == [] for n in nodes), 30,
             what="mesh sessions removed without their password")
    for node in nodes:
        log = Path(f"/run/pycalico-lab/{LAB}/{node}.log").read_text()
        assert ("BGPConfiguration default: nodeMeshPassword: secret 'bgp-secrets' key 'mesh' not found"
                in log), log[-2000:]
        assert MARK not in log
        assert MARK not in (RUN_ROOT / node / "exabgp.log").read_text()

    in_netns(f"{LAB}-fabric", _secret, kubeconfig, PASSWORD)
    _wait_mesh(nodes, lambda: all(_mesh_states(n) == ["Established"] for n in nodes), 60,
               what="mesh back with the Secret")
    assert MARK not in json.dumps(query(nodes[0], "status"))
    assert _agent_pids(helpers.lab_state(LAB)) == pids, "an agent restarted"
    assert all(Path(f"/proc/{pid}").exists() for pid in pids.values()), "an agent exited"
