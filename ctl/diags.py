"""``pycalicoctl node diags``: one tarball with what a bug report about a node needs.

Does I/O: asks the agent (status, routes), copies the node's run files (ExaBGP's config and log,
the agent's log when the lab keeps one), runs ``ip`` in the node's network namespace (a lab node's
namespace carries its name; on a real host it is the host's), and writes
``<dir>/pycalico-diags-<node>-<UTC time>.tar.gz`` mode 0600. A part that cannot be collected is
recorded in ``errors.txt`` inside the tarball instead of failing the whole report.
"""
from __future__ import annotations

import io
import json
import subprocess
import tarfile
import time
from pathlib import Path

import hostio
from felix.status import RUN_ROOT, query, socket_path

IP_COMMANDS = {
    "ip-addr.txt": ["-d", "addr", "show"],
    "ip-route.txt": ["route", "show", "table", "all"],
    "ip-link.txt": ["-s", "-d", "link", "show"],
    "ip-neigh.txt": ["neigh", "show"],
    "ip-rule.txt": ["rule", "show"],
}
LAB_ROOT = Path("/run/pycalico-lab")


def collect(node: str, out_dir: Path) -> tuple[Path, list[str]]:
    """The tarball's path, and the parts that could not be collected (also in errors.txt)."""
    socket_path(node)  # validates the name before it is used in any path
    parts: dict[str, bytes] = {}
    errors: list[str] = []
    for topic in ("status", "routes"):
        try:
            parts[f"agent-{topic}.json"] = json.dumps(query(node, topic), indent=2).encode()
        except (OSError, RuntimeError, ValueError) as exc:
            errors.append(f"agent {topic}: {exc}")
    for name in ("exabgp.conf", "exabgp.log"):
        _copy(RUN_ROOT / node / name, name, parts, errors)
    lab_log = next(LAB_ROOT.glob(f"*/{node}.log"), None)
    if lab_log is not None:
        _copy(lab_log, "agent.log", parts, errors)
    prefix = ["ip", "-n", node] if node in _netns_names() else ["ip"]
    for name, args in IP_COMMANDS.items():
        out = subprocess.run([*prefix, *args], capture_output=True, timeout=30)
        parts[name] = out.stdout + out.stderr
    parts["errors.txt"] = ("\n".join(errors) + "\n").encode() if errors else b""
    return _write(node, out_dir, parts), errors


def _copy(path: Path, name: str, parts: dict[str, bytes], errors: list[str]) -> None:
    try:
        parts[name] = path.read_bytes()
    except OSError as exc:
        errors.append(f"{name}: {exc.strerror or exc}")


def _netns_names() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
    return {line.split()[0] for line in out.stdout.splitlines() if line.strip()}


def _write(node: str, out_dir: Path, parts: dict[str, bytes]) -> Path:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    top = f"pycalico-diags-{node}-{stamp}"
    path = out_dir / f"{top}.tar.gz"
    fd = hostio.open_private(path, append=False)
    with open(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w:gz") as tar:
        for name, data in sorted(parts.items()):
            info = tarfile.TarInfo(f"{top}/{name}")
            info.size, info.mode, info.mtime = len(data), 0o600, int(time.time())
            tar.addfile(info, io.BytesIO(data))
    return path
