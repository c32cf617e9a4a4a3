#!/usr/bin/python3 -IS
"""``pycalico-cni-thin``: the CNI plugin kubelet runs on the host; it forwards to the node agent.

Python standard library only, and nothing of ours: a Kubernetes host has a system ``python3`` at
most, so this file must run as ``python3 thin.py`` with no venv (Cilium's cilium-cni -> agent
model). It answers VERSION itself and sends every other request, once, over the agent's unix socket
``<run root>/<node>/cni.sock`` (run root ``/run/pycalico``, or ``$PYCALICO_RUN_ROOT``; node from the
netconf's ``nodename``, else ``/var/lib/calico/nodename``, else the hostname, as the full plugin
resolves it). The agent runs the real plugin code, warm and connected to the datastore, and answers
with the exit status and stdout (the result or the CNI error JSON), which we print unchanged.

Wire protocol (``cni.server`` is the other end; both use the helpers here):
one frame each way on one connection; a frame is a 4-byte big-endian length and that many bytes of
UTF-8 JSON. Request ``{"v": 1, "env": {"CNI_...": ...}, "stdin": <netconf, base64>}`` (at most
``MAX_REQUEST`` bytes); reply ``{"rc": <exit status>, "stdout": <text>}`` (at most ``MAX_REPLY``).

No agent (no socket, refused, no answer in time, connection dropped): CNI error code 11 (try again
later), so the runtime retries the sandbox instead of failing the pod for good. Never a traceback.
"""
from __future__ import annotations

import binascii
import os
import socket
import struct
import sys

SUPPORTED_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0")  # as cni/config.py (a unit test checks)
NODENAME_FILE = "/var/lib/calico/nodename"
DEFAULT_RUN_ROOT = "/run/pycalico"
PROTOCOL_VERSION = 1
MAX_REQUEST = 1 << 20  # the netconf with a prevResult is a few KiB; anything near this is wrong
MAX_REPLY = 4 << 20
CONNECT_TIMEOUT = 5.0
REPLY_TIMEOUT = 150.0  # the agent's IPAM lock waits up to 60 s and a failed ADD's release up to 20 s
TRY_AGAIN_LATER, IO_FAILURE, INVALID_CONFIG, DECODE_FAILURE = 11, 5, 7, 6
NOT_READY = "pycalico agent not ready on this node, retry"
_HEADER = struct.Struct(">I")
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-.")
_NAME_ENDS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789")


# The hot path parses and writes JSON with the C accelerator ``_json`` (part of CPython's standard
# library): ``import json`` pulls in ``re`` and costs ~10 ms of a ~30 ms start, a sixth of the ADD
# budget. The ``json`` module is imported only on the error and VERSION paths, or if ``_json`` is
# missing (another Python implementation).
try:
    import _json
except ImportError:  # pragma: no cover - CPython always has it
    _json = None


class _ScanContext:  # what _json.make_scanner reads from json.JSONDecoder
    strict = True
    object_hook = object_pairs_hook = None
    parse_float, parse_int = float, int

    @staticmethod
    def parse_constant(name):
        raise ValueError(f"{name} is not valid JSON")


_SCAN = _json.make_scanner(_ScanContext()) if _json else None


def loads(data: bytes | str):
    """``json.loads`` for what we exchange; ValueError for anything that is not one JSON value."""
    text = data.decode() if isinstance(data, bytes) else data  # UnicodeDecodeError: a ValueError
    if _SCAN is None:
        import json
        return json.loads(text)
    text = text.strip(" \t\n\r")
    try:
        value, end = _SCAN(text, 0)
    except StopIteration:
        raise ValueError("not a JSON value") from None
    if end != len(text):
        raise ValueError(f"extra data after the JSON value at offset {end}")
    return value


def dumps(value) -> str:
    """Compact JSON of dicts, lists, strings, ints, bools and None (all a frame carries)."""
    if isinstance(value, str):
        return _json.encode_basestring_ascii(value) if _json else __import__("json").dumps(value)
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, int):
        return str(int(value))
    if isinstance(value, dict):
        return "{" + ",".join(f"{dumps(str(k))}:{dumps(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(dumps(v) for v in value) + "]"
    raise TypeError(f"cannot encode {type(value).__name__} in a frame")


class ProtocolError(Exception):
    """A frame that breaks the protocol: too long, truncated, or not the JSON object we expect."""


def encode_frame(message: dict, limit: int) -> bytes:
    body = dumps(message).encode()
    if len(body) > limit:
        raise ProtocolError(f"message of {len(body)} bytes exceeds the {limit}-byte limit")
    return _HEADER.pack(len(body)) + body


def frame_length(header: bytes, limit: int) -> int:
    """The body length announced by a 4-byte header; ProtocolError if it is over ``limit``."""
    (length,) = _HEADER.unpack(header)
    if length > limit:
        raise ProtocolError(f"frame of {length} bytes exceeds the {limit}-byte limit")
    return length


def decode_body(body: bytes) -> dict:
    try:
        message = loads(body)
    except ValueError as exc:  # UnicodeDecodeError included
        raise ProtocolError(f"frame is not JSON: {exc}") from None
    if not isinstance(message, dict):
        raise ProtocolError("frame is not a JSON object")
    return message


def request(env: dict, stdin: bytes) -> dict:
    return {"v": PROTOCOL_VERSION, "env": {k: v for k, v in env.items() if k.startswith("CNI_")},
            "stdin": binascii.b2a_base64(stdin, newline=False).decode()}


def parse_request(message: dict) -> tuple[dict[str, str], bytes]:
    """(CNI environment, netconf bytes) of a request; ProtocolError names what is wrong."""
    if message.get("v") != PROTOCOL_VERSION:
        raise ProtocolError(f"protocol version {message.get('v')!r}, expected {PROTOCOL_VERSION}")
    env, stdin = message.get("env"), message.get("stdin")
    if not isinstance(env, dict) or not all(
            isinstance(k, str) and k.startswith("CNI_") and isinstance(v, str) for k, v in env.items()):
        raise ProtocolError("env must map CNI_* names to strings")
    try:
        return env, binascii.a2b_base64((stdin if isinstance(stdin, str) else "!").encode(),
                                        strict_mode=True)
    except (ValueError, UnicodeEncodeError):  # binascii.Error is a ValueError
        raise ProtocolError("stdin must be base64") from None


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    chunks, got = [], 0
    while got < n:
        chunk = sock.recv(min(n - got, 1 << 16))
        if not chunk:
            raise ProtocolError(f"connection closed after {got} of {n} bytes")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def recv_frame(sock: socket.socket, limit: int) -> dict:
    return decode_body(recv_exactly(sock, frame_length(recv_exactly(sock, 4), limit)))


def socket_path(stdin: bytes, env: dict) -> str:
    """Where this node's agent listens; ValueError for a node name that is not a DNS name."""
    node = _configured_nodename(stdin) or _file_nodename() or socket.gethostname()
    if not is_node_name(node):
        raise ValueError(f"nodename {node!r} is not a lowercase DNS name")
    return os.path.join(env.get("PYCALICO_RUN_ROOT") or DEFAULT_RUN_ROOT, node, "cni.sock")


def is_node_name(name: str) -> bool:
    """A lowercase DNS name, as Kubernetes requires of nodes (``re`` would cost 7 ms of start)."""
    return (0 < len(name) <= 253 and ".." not in name and set(name) <= _NAME_CHARS
            and name[0] in _NAME_ENDS and name[-1] in _NAME_ENDS)


def _configured_nodename(stdin: bytes) -> str | None:
    try:
        name = loads(stdin).get("nodename")
    except (ValueError, AttributeError):
        return None  # the agent reports the bad netconf; we only need it to find the socket
    return name if isinstance(name, str) and name else None


def _file_nodename() -> str | None:
    try:
        with open(NODENAME_FILE) as f:
            return f.read().strip() or None
    except OSError:
        return None


def cni_version_of(stdin: bytes) -> str:
    try:
        version = loads(stdin).get("cniVersion")
    except (ValueError, AttributeError):
        return "1.0.0"
    return version if version in SUPPORTED_VERSIONS else "1.0.0"


def error_json(version: str, code: int, msg: str, details: str = "") -> str:
    out = {"cniVersion": version, "code": code, "msg": msg}
    if details:
        out["details"] = details
    import json  # error path only: the cost of the import does not matter here
    return json.dumps(out, indent=1) + "\n"


def forward(path: str, frame: bytes, timeout: float = REPLY_TIMEOUT) -> tuple[int, str]:
    """Send one request frame to the agent at ``path``; (exit status, stdout text).

    OSError (no socket, refused, permission), TimeoutError and ProtocolError reach the caller.
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(CONNECT_TIMEOUT)
        sock.connect(path)
        sock.settimeout(timeout)
        try:
            sock.sendall(frame)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the agent may refuse before reading (a caller it does not serve): read why
        reply = recv_frame(sock, MAX_REPLY)
    rc, stdout = reply.get("rc"), reply.get("stdout")
    if not isinstance(rc, int) or not isinstance(stdout, str):
        raise ProtocolError("reply must be {\"rc\": int, \"stdout\": str}")
    return rc, stdout


def run(env: dict, stdin: bytes, timeout: float = REPLY_TIMEOUT) -> tuple[int, str]:
    """One invocation: (exit status, stdout text). Every failure becomes a CNI error result."""
    version = cni_version_of(stdin)
    if env.get("CNI_COMMAND") == "VERSION":
        import json  # VERSION is rare (once per runtime start)
        return 0, json.dumps({"cniVersion": version,
                              "supportedVersions": list(SUPPORTED_VERSIONS)}, indent=1) + "\n"
    try:
        path = socket_path(stdin, env)
    except ValueError as exc:
        return 1, error_json(version, INVALID_CONFIG, str(exc),
                             "node names become part of paths (a-z, 0-9, '-', '.')")
    try:
        frame = encode_frame(request(env, stdin), MAX_REQUEST)
    except ProtocolError as exc:
        return 1, error_json(version, DECODE_FAILURE, "CNI request too large", str(exc))
    try:
        return forward(path, frame, timeout)
    except PermissionError as exc:  # before ConnectionError: EACCES on the socket or its directory
        return 1, error_json(version, IO_FAILURE, f"cannot reach the pycalico agent at {path}: "
                             "permission denied (the CNI plugin must run as root)", str(exc))
    except (OSError, TimeoutError, ProtocolError) as exc:  # no socket, refused, no answer, cut off
        return 1, error_json(version, TRY_AGAIN_LATER, f"{NOT_READY} ({path})",
                             f"{type(exc).__name__}: {exc}")


def main() -> None:
    try:
        stdin = sys.stdin.buffer.read()
        rc, out = run(dict(os.environ), stdin, _timeout(os.environ))
    except Exception as exc:  # noqa: BLE001 — the runtime must get an error result, not a traceback
        rc, out = 1, error_json("1.0.0", 999, f"unexpected {type(exc).__name__}", str(exc))
    sys.stdout.write(out)
    sys.stdout.flush()
    sys.exit(rc)


def _timeout(env) -> float:
    try:
        return float(env.get("PYCALICO_CNI_TIMEOUT") or REPLY_TIMEOUT)
    except ValueError:
        return REPLY_TIMEOUT


if __name__ == "__main__":
    main()
