"""hostio: modes are ours to decide, never the caller's umask (issue 5, defect 5)."""
from __future__ import annotations

import os
import socket
import stat
from contextlib import contextmanager

import pytest

import hostio


@contextmanager
def umask(value: int):
    old = os.umask(value)
    try:
        yield
    finally:
        os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.mark.parametrize("mask", [0o000, 0o022, 0o777])
def test_modes_do_not_follow_the_umask(tmp_path, mask):
    with umask(mask):
        d = hostio.private_dir(tmp_path / "run" / "node")
        hostio.write_private(d / "conf", "text")
        fd = hostio.open_private(d / "log")
        os.close(fd)
        sock = hostio.bind_unix(d / "ctl.sock")
        sock.close()
    assert mode(tmp_path / "run") == mode(d) == 0o700
    assert mode(d / "conf") == mode(d / "log") == 0o600
    assert mode(d / "ctl.sock") == 0o600
    assert (d / "conf").read_text() == "text"


def test_existing_loose_directory_and_file_are_tightened(tmp_path):
    loose = tmp_path / "loose"
    loose.mkdir()
    os.chmod(loose, 0o777)
    (loose / "log").write_text("old\n")
    os.chmod(loose / "log", 0o666)
    hostio.private_dir(loose)
    os.close(hostio.open_private(loose / "log"))
    assert mode(loose) == 0o700 and mode(loose / "log") == 0o600
    assert (loose / "log").read_text() == "old\n"  # appended to, not truncated


def test_symlinks_are_refused(tmp_path):
    target = tmp_path / "elsewhere"
    target.mkdir()
    (tmp_path / "link").symlink_to(target)
    with pytest.raises(hostio.UnsafePath, match="symlink"):
        hostio.private_dir(tmp_path / "link")
    (tmp_path / "file-link").symlink_to(tmp_path / "victim")
    with pytest.raises(OSError):
        hostio.open_private(tmp_path / "file-link")
    assert not (tmp_path / "victim").exists()


def test_bind_unix_replaces_a_stale_socket_but_not_a_file(tmp_path):
    hostio.bind_unix(tmp_path / "s.sock").close()  # left behind, as by a killed process
    hostio.bind_unix(tmp_path / "s.sock").close()
    (tmp_path / "f.sock").write_text("not a socket")
    with pytest.raises(hostio.UnsafePath, match="not a socket"):
        hostio.bind_unix(tmp_path / "f.sock")
    assert (tmp_path / "f.sock").read_text() == "not a socket"


def test_peer_credentials_are_the_kernels_word():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with a, b:
        cred = hostio.peer_credentials(a)
        assert (cred.pid, cred.uid, cred.gid) == (os.getpid(), os.geteuid(), os.getegid())
        assert hostio.peer_is_privileged(a)
