"""Guard for a whole class of bug: ``extra={...}`` keys that collide with LogRecord attributes.

``log.info("x", extra={"args": ...})`` raises ``KeyError: "Attempt to overwrite 'args' in
LogRecord"`` -- but only when the record is actually made, i.e. only at a level where the message is
enabled. Tests that run at WARNING never see it; production at INFO fails every call. So we look at
the source instead of running it.
"""
from __future__ import annotations

import ast
import logging
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("felix", "bgp", "ipam", "crds", "datastore", "cni", "ctl", "lab", "hostio")
RESERVED = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}
LOG_METHODS = {"debug", "info", "warning", "warn", "error", "exception", "critical", "fatal", "log"}


def extra_keys(call: ast.Call) -> list[str]:
    """String keys of an ``extra=`` given as a dict literal or ``dict(k=...)``; [] for anything else."""
    for kw in call.keywords:
        if kw.arg != "extra":
            continue
        if isinstance(kw.value, ast.Dict):
            return [k.value for k in kw.value.keys
                    if isinstance(k, ast.Constant) and isinstance(k.value, str)]
        if (isinstance(kw.value, ast.Call) and isinstance(kw.value.func, ast.Name)
                and kw.value.func.id == "dict"):
            return [k.arg for k in kw.value.keywords if k.arg]
    return []


def collisions(source: str, filename: str) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr in LOG_METHODS):
            found += [f"{filename}:{node.lineno}: extra key {key!r} is a LogRecord attribute"
                      for key in extra_keys(node) if key in RESERVED]
    return found


def test_the_scanner_finds_a_collision():
    src = 'log.info("x", extra={"node": 1, "args": 2})\nlog.debug("y", extra=dict(msg=3))\n'
    assert [c.split(": ", 1)[1] for c in collisions(src, "f.py")] == [
        "extra key 'args' is a LogRecord attribute", "extra key 'msg' is a LogRecord attribute"]
    assert collisions('log.info("x", extra={"node": 1})', "f.py") == []
    with pytest.raises(KeyError, match="overwrite 'args'"):  # what the scanner prevents
        logging.getLogger("t").makeRecord("t", logging.INFO, "f", 1, "m", (), None, extra={"args": 1})


@pytest.mark.parametrize("package", PACKAGES)
def test_no_logging_extra_key_overwrites_a_logrecord_attribute(package):
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"package {package} not found under {ROOT}"
    found = [c for path in files for c in collisions(path.read_text(), str(path.relative_to(ROOT)))]
    assert found == []
