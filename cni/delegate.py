"""Spec delegation: exec the IPAM plugin named by ``ipam.type`` from CNI_PATH, same env and stdin."""
from __future__ import annotations

import json
import logging
import os
import subprocess
from collections.abc import Mapping
from typing import Any

from cni.config import Invocation, NetConf
from cni.errors import DELEGATE_FAILURE, INVALID_CONFIG, CNIError

log = logging.getLogger(__name__)
TIMEOUT = 60.0


def delegate(command: str, inv: Invocation, conf: NetConf,
             env: Mapping[str, str] | None = None) -> dict[str, Any] | None:
    """Run the IPAM plugin for ``command``; its parsed result (ADD), None (DEL/CHECK), or CNIError.

    The plugin gets the invocation's environment (``env`` overrides it) with CNI_COMMAND set.
    """
    plugin = find_plugin(conf.ipam_type, inv.path)
    child_env = {**(inv.environ if env is None else env), "CNI_COMMAND": command}
    try:
        proc = subprocess.run([plugin], input=conf.raw, env=child_env, capture_output=True,
                              timeout=TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise CNIError(DELEGATE_FAILURE, f"IPAM plugin {plugin} {command} could not run",
                       str(exc)) from None
    if proc.stderr:
        log.info("ipam plugin stderr: %s", proc.stderr.decode(errors="replace").strip())
    out = proc.stdout.decode(errors="replace")
    if proc.returncode != 0:
        raise CNIError.from_json(out, f"IPAM plugin {conf.ipam_type} {command}")
    if command != "ADD":
        return None
    try:
        return json.loads(out)
    except ValueError:
        raise CNIError(DELEGATE_FAILURE, f"IPAM plugin {conf.ipam_type} printed no JSON result",
                       out[-2000:]) from None


def find_plugin(name: str, path: tuple[str, ...]) -> str:
    if "/" in name:
        raise CNIError(INVALID_CONFIG, f"ipam.type {name!r} must be a plugin name, not a path")
    for directory in path:
        candidate = os.path.join(directory, name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise CNIError(INVALID_CONFIG, f"IPAM plugin {name!r} not found",
                   f"searched CNI_PATH {os.pathsep.join(path) or '(empty)'}")
