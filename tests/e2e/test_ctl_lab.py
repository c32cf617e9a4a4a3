"""``pycalicoctl --lab NAME ...`` for every kind of command, against a real one-node lab (issue 5, 12a:
``node`` subcommands were handed an ``--etcd-endpoints`` they do not take)."""
from __future__ import annotations

import secrets
import subprocess

from tests import helpers

LAB = f"k{secrets.token_hex(2)}"  # 1-6 lowercase letters/digits


def ctl(*args: str) -> subprocess.CompletedProcess:
    return helpers.ctl(*args, check=False)  # the tests read the exit status themselves


def test_lab_option_works_for_node_and_datastore_commands():
    try:
        up = ctl("lab", "up", "--name", LAB, "--nodes", "1", "--pods-per-node", "0")
        assert up.returncode == 0, up.stdout + up.stderr
        status = ctl("--lab", LAB, "node", "status", "--node", f"{LAB}-node1")
        assert status.returncode == 0, status.stderr
        assert "Calico process is running." in status.stdout
        nodes = ctl("--lab", LAB, "get", "nodes")
        assert nodes.returncode == 0, nodes.stderr
        assert nodes.stdout.split() == ["NAME", f"{LAB}-node1"]
    finally:
        subprocess.run([helpers.CTL, "lab", "down", "--name", LAB], capture_output=True, timeout=120)
