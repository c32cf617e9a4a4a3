"""pycalicoctl on bad input and unreachable agents, through the real CLI: one line on stderr naming the
problem, exit 1 (the operation failed) or 2 (bad input), never a traceback (issue 5: 9, 10, 12c)."""
from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.helpers import wait_for
from tests.unit.test_ctl import alias_bomb

BIN = Path(sys.executable).parent
CTL = str(BIN / "pycalicoctl")
MEMORY = ("--datastore-type", "memory")  # these fail before any datastore is needed


def ctl(*args: str, env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([CTL, *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})}, **kw)


def one_error_line(out: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in out.stderr, out.stderr
    lines = out.stderr.splitlines()
    assert len(lines) == 1, out.stderr
    return lines[0]


@pytest.mark.parametrize("content, words", [
    (b"apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: caf\xe9}\n",
     "not UTF-8 text (byte 0xe9 at offset 66)"),
    (b"kind: IPPool\nmetadata: {name: p\nspec: {}\n", "YAML error at line 3"),
])
def test_unreadable_file_is_one_line_exit_2(tmp_path, content, words):
    f = tmp_path / "pool.yaml"
    f.write_bytes(content)
    out = ctl("apply", "-f", str(f), *MEMORY)
    assert out.returncode == 2
    line = one_error_line(out)
    assert line.startswith(f"pycalicoctl: {f}: ") and words in line, line


def test_missing_file_and_directory_are_one_line_exit_2(tmp_path):
    missing = ctl("apply", "-f", str(tmp_path / "nope.yaml"), *MEMORY)
    assert missing.returncode == 2
    assert one_error_line(missing) == f"pycalicoctl: {tmp_path / 'nope.yaml'}: no such file"
    directory = ctl("create", "-f", str(tmp_path), *MEMORY)
    assert directory.returncode == 2
    assert one_error_line(directory) == f"pycalicoctl: {tmp_path}: is a directory, not a file"


@pytest.mark.parametrize("content", ["", "---\n", "---\n---\n"])
def test_empty_file_applies_nothing_and_says_so(tmp_path, content):
    f = tmp_path / "empty.yaml"
    f.write_text(content)
    out = ctl("apply", "-f", str(f), *MEMORY)
    assert out.returncode == 2
    assert one_error_line(out) == f"pycalicoctl: no resources in {f}; nothing applied"
    assert out.stdout == ""


def test_unknown_metadata_field_names_it(tmp_path):
    f = tmp_path / "pool.yaml"
    f.write_text("apiVersion: projectcalico.org/v3\nkind: IPPool\n"
                 "metadata: {name: p, colour: red}\nspec: {cidr: 10.1.0.0/16}\n")
    out = ctl("apply", "-f", str(f), *MEMORY)
    assert out.returncode == 2
    assert one_error_line(out) == "pycalicoctl: IPPool p: metadata.colour: unknown field, not permitted"


def _cap_memory() -> None:
    limit = 1 << 30  # the CLI needs ~150 MB; expanding the bomb would need gigabytes
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def test_alias_bomb_is_refused_quickly_within_a_memory_cap(tmp_path):
    f = tmp_path / "bomb.yaml"
    f.write_text(alias_bomb(levels=10))  # 9**10 nodes (3.5e9) once expanded; 800 bytes of text
    start = time.monotonic()
    out = ctl("apply", "-f", str(f), *MEMORY, preexec_fn=_cap_memory)
    elapsed = time.monotonic() - start
    assert out.returncode == 2, (out.returncode, out.stderr[-2000:])
    assert one_error_line(out) == (f"pycalicoctl: {f}: document 1: YAML aliases expand it by more "
                                   "than 10000 nodes; refusing to load it")
    assert elapsed < 15, f"took {elapsed:.1f}s"


def test_lab_that_is_not_up_is_one_line_exit_1():
    name = "zq9x"
    assert not Path(f"/run/pycalico-lab/{name}").exists()
    out = ctl("--lab", name, "get", "ippool")
    assert out.returncode == 1
    line = one_error_line(out)
    assert line.startswith("pycalicoctl: --lab: ") and f"lab '{name}' is not up" in line
    bad = ctl("--lab", "../etc", "get", "ippool")
    assert bad.returncode == 2 and "--lab: '../etc' is not a lab name" in one_error_line(bad)


def test_namespaced_kind_by_name_without_namespace_is_one_line_exit_2():
    out = ctl("get", "workloadendpoint", "x", *MEMORY)
    assert out.returncode == 2
    assert one_error_line(out) == ("pycalicoctl: -n/--namespace: WorkloadEndpoint is namespaced; "
                                   "get by name needs -n NAMESPACE")


def test_node_name_that_is_a_path_is_refused(tmp_path):
    out = ctl("node", "status", "--node", "n1/../n2", env={"PYCALICO_RUN_ROOT": str(tmp_path)})
    assert out.returncode == 2
    assert one_error_line(out).startswith("pycalicoctl: --node: 'n1/../n2' is not a valid node name")


# --- a real agent (memory datastore, no peers) in its own namespace ---------------------------------

@pytest.fixture
def agent(netns, procs):
    """A running pycalico-node; yields (node name, PYCALICO_RUN_ROOT for the CLI, its pid)."""
    ns = netns("ctlagent")
    subprocess.run(["ip", "-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", "eth1"],
                   check=True)
    subprocess.run(["ip", "-n", ns, "addr", "add", "10.98.0.1/24", "dev", "eth0"], check=True)
    for dev in ("eth0", "eth1"):
        subprocess.run(["ip", "-n", ns, "link", "set", dev, "up"], check=True)
    # Under /tmp, not tmp_path (whose parents are root-only): the agent's own 0700 run dir and 0600
    # socket must be what keeps a non-root caller out.
    base = Path(tempfile.mkdtemp(prefix="pycalico-ctl-"))
    base.chmod(0o755)
    run_root = base / "run"
    try:
        proc = procs.add(subprocess.Popen(
            ["ip", "netns", "exec", ns, str(BIN / "pycalico-node"), "--name", ns, "--ip",
             "10.98.0.1/24", "--datastore-type", "memory", "--run-dir", str(run_root / ns)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        env = {"PYCALICO_RUN_ROOT": str(run_root)}
        wait_for(lambda: ctl("node", "status", "--node", ns, env=env).returncode == 0, timeout=30,
                 what="the agent to answer node status")
        yield ns, env, proc.pid
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_stopped_agent_times_out_with_one_line_exit_1(agent):
    node, env, pid = agent
    os.kill(pid, signal.SIGSTOP)
    try:
        start = time.monotonic()
        out = ctl("node", "status", "--node", node, env=env)
        elapsed = time.monotonic() - start
    finally:
        os.kill(pid, signal.SIGCONT)
    assert out.returncode == 1
    line = one_error_line(out)
    assert line.startswith(f"pycalicoctl: node {node}: the agent accepted on ") and \
        "did not answer within 5s (stopped or hung?)" in line, line
    assert elapsed < 20


def test_non_root_caller_gets_permission_denied_in_one_line(agent):
    node, env, _ = agent
    nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is not installed")
    probe = subprocess.run([*nobody, sys.executable, "-c", "import ctl.main"], capture_output=True,
                           text=True, timeout=60)
    if probe.returncode != 0:
        pytest.skip(f"user nobody cannot run the venv's python or import ctl: {probe.stderr[-300:]}")
    out = subprocess.run([*nobody, sys.executable, "-m", "ctl.main", "node", "status", "--node", node],
                         capture_output=True, text=True, timeout=60, env={**os.environ, **env})
    assert out.returncode == 1
    line = one_error_line(out)
    assert line.startswith(f"pycalicoctl: node {node}: permission denied on ") and \
        "root-only" in line, line
