"""The agent's status socket: 0600 whatever the umask, and callers checked by SO_PEERCRED even if
someone loosens the file modes (issue 5, defect 5)."""
from __future__ import annotations

import asyncio
import os
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest

from felix.status import StatusServer, query

pytestmark = pytest.mark.root

NOBODY = 65534
# A stdlib-only client run by the system python3 as user nobody (the venv need not be readable).
CLIENT = """
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.settimeout(5)
s.connect(sys.argv[1])
try:
    s.sendall(b'{"get": "status"}\\n')
    print(repr(s.recv(1000)) if s.recv(1, socket.MSG_PEEK) else "closed")
except (BrokenPipeError, ConnectionResetError):
    print("closed")
"""


@pytest.fixture
def loose_dir():
    """A directory outside pytest's 0700 tmp root, so another user could reach into it."""
    path = Path(tempfile.mkdtemp(prefix="pyc-status-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_only_root_or_the_agent_user_gets_an_answer(loop_thread, loose_dir):
    lt = loop_thread
    tmp_path = loose_dir
    path = tmp_path / "run" / "status.sock"

    async def answer() -> dict:
        return {"secret": "routes"}

    server = StatusServer(path, {"status": answer})
    old = os.umask(0)
    try:
        lt.run(server.start())
    finally:
        os.umask(old)
    try:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        assert query("n1", "status", path=path) == {"secret": "routes"}
        # Someone loosens every mode on the way: the credential check still refuses nobody.
        for p in (tmp_path, path.parent, path):
            os.chmod(p, 0o777 if p == path else 0o755)
        out = subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
                              "/usr/bin/python3", "-c", CLIENT, str(path)],
                             capture_output=True, text=True, timeout=20)
        assert out.returncode == 0, out.stderr  # it connected...
        assert out.stdout.strip() == "closed"    # ...and was closed without an answer
    finally:
        lt.run(server.stop())
