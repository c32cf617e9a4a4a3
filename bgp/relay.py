"""The API process ExaBGP runs: relays lines between ExaBGP's pipes and the speaker's unix socket.

Does I/O (pipes, one unix socket); standard library only, so ExaBGP can run this file directly
with the agent's interpreter: ``python relay.py /run/dir/exabgp.sock``.

Each direction has its own thread: if one thread served both, a blocked write towards ExaBGP (it
is busy writing to us) would stop us reading what it writes, and both would wait forever. Every
write goes straight to the file descriptor, so nothing sits in a buffer unflushed. The relay exits
as soon as either side closes; ExaBGP (``exabgp.api.terminate``) then exits too, and the speaker
notices and restarts it.
"""
from __future__ import annotations

import os
import socket
import sys
import threading
import time

_CONNECT_TIMEOUT = 5.0
_CHUNK = 65536


def _connect(path: str) -> socket.socket:
    deadline = time.monotonic() + _CONNECT_TIMEOUT
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(path)
            return sock
        except OSError:
            sock.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _pump_stdin_to_socket(sock: socket.socket, done: threading.Event) -> None:
    try:
        while chunk := os.read(0, _CHUNK):
            sock.sendall(chunk)
    except OSError as exc:
        print(f"relay: exabgp -> speaker stopped: {exc}", file=sys.stderr)
    finally:
        done.set()


def _pump_socket_to_stdout(sock: socket.socket, done: threading.Event) -> None:
    try:
        while chunk := sock.recv(_CHUNK):
            view = memoryview(chunk)
            while view:
                view = view[os.write(1, view):]
    except OSError as exc:
        print(f"relay: speaker -> exabgp stopped: {exc}", file=sys.stderr)
    finally:
        done.set()


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: relay.py SOCKET_PATH", file=sys.stderr)
        return 2
    try:
        sock = _connect(argv[1])
    except OSError as exc:
        print(f"relay: cannot connect to {argv[1]}: {exc}", file=sys.stderr)
        return 1
    done = threading.Event()
    for pump in (_pump_stdin_to_socket, _pump_socket_to_stdout):
        threading.Thread(target=pump, args=(sock, done), daemon=True).start()
    done.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
