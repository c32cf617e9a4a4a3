"""Host files, directories and unix sockets with explicit permissions, whatever the caller's umask.

Does I/O (the filesystem, sockets). Standard library only, and it imports nothing of ours: the lowest
layer, usable by every package, by the relay ExaBGP runs and by stdlib-only host tools.

Why: a daemon started under ``umask 000`` would otherwise leave its control sockets 0777, its run
directories 0777 and its files 0666 -- and a local user could then inject routes through the
speaker's socket, or rewrite a config whose ``run`` line a root daemon executes. Every directory we
make is 0700, every file 0600, every socket 0600 inside a 0700 directory, set with ``chmod`` after
creation so the umask never decides; control sockets also check who is calling (``SO_PEERCRED``).

>>> import tempfile, stat, pathlib
>>> d = private_dir(pathlib.Path(tempfile.mkdtemp()) / "a" / "b")
>>> oct(stat.S_IMODE(d.stat().st_mode))
'0o700'
>>> write_private(d / "f", "x")
>>> oct(stat.S_IMODE((d / "f").stat().st_mode))
'0o600'
"""
from __future__ import annotations

import ctypes
import os
import secrets
import socket
import stat
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

DIR_MODE = 0o700
FILE_MODE = 0o600
SOCKET_MODE = 0o600


class UnsafePath(OSError):
    """A path we are about to trust is a symlink or belongs to another user."""


def private_dir(path: str | os.PathLike) -> Path:
    """Create ``path`` (and missing parents) as 0700 directories owned by us; fix an existing one.

    Parents that already exist are left as they are (``/run`` is not ours); ``path`` itself is
    always made 0700 and must be a real directory owned by our effective uid.
    """
    path = Path(path)
    missing = []
    probe = path
    while not probe.exists() and probe != probe.parent:
        missing.append(probe)
        probe = probe.parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, DIR_MODE)
        except FileExistsError:
            pass  # made concurrently (another agent, a CNI call); checked below like any other
        os.chmod(directory, DIR_MODE)
    _check_ours(path, stat.S_ISDIR, "directory")
    os.chmod(path, DIR_MODE)
    return path


def write_private(path: str | os.PathLike, data: str | bytes, mode: int = FILE_MODE) -> None:
    """Replace ``path`` atomically with ``data``, mode 0600 (or ``mode``, set explicitly whatever
    the umask): readers never see half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb", closefd=False) as out:
            out.write(data.encode() if isinstance(data, str) else data)
            out.flush()
            os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def open_private(path: str | os.PathLike, *, append: bool = True) -> int:
    """An fd for writing ``path`` (created 0600, an existing file made 0600); never via a symlink."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    flags |= os.O_APPEND if append else os.O_TRUNC
    fd = os.open(path, flags, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
    except BaseException:
        os.close(fd)
        raise
    return fd


def bind_unix(path: str | os.PathLike) -> socket.socket:
    """A listening-ready unix stream socket at ``path``, mode 0600, its directory 0700.

    The socket file is created by ``bind`` under the umask and fixed right after; the 0700
    directory around it means nobody else can reach it in between. A stale socket left by a killed
    process is replaced; anything else at ``path`` is an error.
    """
    path = Path(path)
    private_dir(path.parent)
    try:
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            raise UnsafePath(f"{path}: exists and is not a socket; refusing to replace it")
        path.unlink()
    except FileNotFoundError:
        pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))
        os.chmod(path, SOCKET_MODE)
    except BaseException:
        sock.close()
        raise
    return sock


@dataclass(frozen=True)
class PeerCred:
    pid: int
    uid: int
    gid: int


def peer_credentials(sock: socket.socket) -> PeerCred:
    """Who is at the other end of a connected unix socket (the kernel's word, not the peer's)."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return PeerCred(*struct.unpack("3i", raw))


def peer_is_privileged(sock: socket.socket) -> bool:
    """True when the peer runs as root or as our own effective uid."""
    return peer_credentials(sock).uid in {0, os.geteuid()}


def _check_ours(path: Path, is_kind, what: str) -> None:
    st = os.lstat(path)
    if not is_kind(st.st_mode):
        raise UnsafePath(f"{path}: expected a {what}, found something else (a symlink?)")
    if st.st_uid != os.geteuid():
        raise UnsafePath(f"{path}: owned by uid {st.st_uid}, not by us (uid {os.geteuid()})")


CLONE_NEWNET = 0x40000000


def setns(fd: int, what: str = "") -> None:
    """Move the calling thread into the network namespace of ``fd`` (os.setns is 3.12+)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns {what or fd}: {os.strerror(err)}")


@contextmanager
def netns_entered(path: str | os.PathLike) -> Iterator[None]:
    """This thread inside the network namespace at ``path``, and back where it was afterwards;
    sockets opened meanwhile stay in that namespace. Namespaces are per thread, so the rest of
    the process is untouched -- and nothing forks: a forked helper inherits the parent's
    asyncio signal wakeup fd, and a signal it receives is then taken for the parent's own."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        target = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            setns(target, str(path))
            try:
                yield
            finally:
                setns(own, "back to the thread's own namespace")
        finally:
            os.close(target)
    finally:
        os.close(own)
