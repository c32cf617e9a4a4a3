"""``cni.thin``: the wire protocol and the plugin's error paths, against fake agents at our socket.

No root, no namespaces: a fake agent is a plain unix socket in a temporary directory speaking (or
breaking) the protocol; ``CNIServer`` is exercised here with a stub handler (its real handlers run
in tests/functional/test_cni_server.py).
"""
from __future__ import annotations

import ast
import asyncio
import base64
import json
import socket
import struct
import sys
import threading
from pathlib import Path

import pytest

from cni import config, thin
from cni.server import CNIServer

THIN = Path(thin.__file__)
ENV = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_NETNS": "/var/run/netns/x",
       "CNI_IFNAME": "eth0", "CNI_PATH": "/opt/cni/bin", "HOME": "/root"}
NETCONF = json.dumps({"cniVersion": "0.4.0", "name": "n", "type": "pycalico-cni",
                      "nodename": "node1"}).encode()


def test_imports_only_the_standard_library():
    tree = ast.parse(THIN.read_text())
    names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module.split(".")[0] for n in ast.walk(tree)
              if isinstance(n, ast.ImportFrom) and n.module}
    assert names <= set(sys.stdlib_module_names) | {"__future__"}, names


def test_supported_versions_match_the_plugin():
    assert thin.SUPPORTED_VERSIONS == config.SUPPORTED_VERSIONS


def test_request_round_trips_and_carries_only_cni_variables():
    frame = thin.encode_frame(thin.request(ENV, NETCONF), thin.MAX_REQUEST)
    length = thin.frame_length(frame[:4], thin.MAX_REQUEST)
    assert length == len(frame) - 4
    env, stdin = thin.parse_request(thin.decode_body(frame[4:]))
    assert stdin == NETCONF and "HOME" not in env and env["CNI_COMMAND"] == "ADD"


def test_binary_netconf_survives():
    raw = b"\xff\x00{not json"
    env, stdin = thin.parse_request(thin.decode_body(thin.encode_frame(
        thin.request(ENV, raw), thin.MAX_REQUEST)[4:]))
    assert stdin == raw


def test_limits_refuse_oversized_frames():
    with pytest.raises(thin.ProtocolError, match="exceeds the 1048576-byte limit"):
        thin.encode_frame(thin.request(ENV, b"x" * thin.MAX_REQUEST), thin.MAX_REQUEST)
    with pytest.raises(thin.ProtocolError, match="frame of 1048577 bytes"):
        thin.frame_length(struct.pack(">I", thin.MAX_REQUEST + 1), thin.MAX_REQUEST)


@pytest.mark.parametrize("message,problem", [
    ({"v": 2, "env": {}, "stdin": ""}, "protocol version"),
    ({"v": 1, "env": {"PATH": "/bin"}, "stdin": ""}, "CNI_"),
    ({"v": 1, "env": {"CNI_COMMAND": 1}, "stdin": ""}, "CNI_"),
    ({"v": 1, "env": {}, "stdin": "not base64!"}, "base64"),
    ({"v": 1, "env": {}}, "base64"),
])
def test_malformed_requests_are_named(message, problem):
    with pytest.raises(thin.ProtocolError, match=problem):
        thin.parse_request(message)


def test_non_json_bodies_are_protocol_errors():
    for body in (b"\xff", b"[1]", b"{"):
        with pytest.raises(thin.ProtocolError):
            thin.decode_body(body)


def test_version_is_local():
    rc, out = thin.run({"CNI_COMMAND": "VERSION", "PYCALICO_RUN_ROOT": "/nonexistent"},
                       b'{"cniVersion":"0.3.1"}')
    assert rc == 0 and json.loads(out)["supportedVersions"] == list(config.SUPPORTED_VERSIONS)


def test_socket_path_follows_nodename_then_file_then_hostname(tmp_path, monkeypatch):
    env = {"PYCALICO_RUN_ROOT": str(tmp_path)}
    assert thin.socket_path(NETCONF, env) == f"{tmp_path}/node1/cni.sock"
    nodefile = tmp_path / "nodename"
    nodefile.write_text("from-file\n")
    monkeypatch.setattr(thin, "NODENAME_FILE", str(nodefile))
    assert thin.socket_path(b"{}", env) == f"{tmp_path}/from-file/cni.sock"
    monkeypatch.setattr(thin, "NODENAME_FILE", str(tmp_path / "missing"))
    assert thin.socket_path(b"not json", env) == f"{tmp_path}/{socket.gethostname()}/cni.sock"
    assert thin.socket_path(NETCONF, {}) == "/run/pycalico/node1/cni.sock"


def test_a_bad_nodename_is_a_config_error_not_a_path(tmp_path):
    rc, out = thin.run({**ENV, "PYCALICO_RUN_ROOT": str(tmp_path)},
                       json.dumps({"cniVersion": "1.0.0", "nodename": "../etc"}).encode())
    assert rc == 1 and json.loads(out)["code"] == 7 and "../etc" in json.loads(out)["msg"]


def _run(tmp_path, stdin=NETCONF, timeout=2.0):
    rc, out = thin.run({**ENV, "PYCALICO_RUN_ROOT": str(tmp_path)}, stdin, timeout)
    return rc, json.loads(out)


def test_no_socket_is_try_again_later(tmp_path):
    rc, out = _run(tmp_path)
    assert rc == 1 and out["code"] == 11 and out["cniVersion"] == "0.4.0"
    assert out["msg"] == ("pycalico agent not ready on this node, retry "
                          f"({tmp_path}/node1/cni.sock)")


def _agent_socket(tmp_path) -> socket.socket:
    (tmp_path / "node1").mkdir()
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(tmp_path / "node1" / "cni.sock"))
    return s


def test_refused_is_try_again_later(tmp_path):
    _agent_socket(tmp_path).close()  # the file stays, nobody listens: a killed agent
    rc, out = _run(tmp_path)
    assert rc == 1 and out["code"] == 11 and "ConnectionRefusedError" in out["details"]


def test_an_agent_that_never_answers_times_out(tmp_path):
    with _agent_socket(tmp_path) as s:
        s.listen(1)
        rc, out = _run(tmp_path, timeout=0.3)
    assert rc == 1 and out["code"] == 11 and "timed out" in out["details"]


def _fake_agent(tmp_path, reply: bytes) -> threading.Thread:
    """Accept one connection, read the request frame, send ``reply`` raw, close."""
    s = _agent_socket(tmp_path)
    s.listen(1)
    seen = []

    def serve():
        with s:
            conn, _ = s.accept()
            with conn:
                seen.append(thin.recv_frame(conn, thin.MAX_REQUEST))
                conn.sendall(reply)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    t.seen = seen
    return t


def test_the_reply_is_printed_unchanged(tmp_path):
    stdout = '{"cniVersion": "0.4.0", "ips": []}\n'
    agent = _fake_agent(tmp_path, thin.encode_frame({"rc": 0, "stdout": stdout}, thin.MAX_REPLY))
    assert thin.run({**ENV, "PYCALICO_RUN_ROOT": str(tmp_path)}, NETCONF, 2.0) == (0, stdout)
    agent.join(5)
    [req] = agent.seen
    assert base64.b64decode(req["stdin"]) == NETCONF and req["env"]["CNI_NETNS"] == "/var/run/netns/x"


@pytest.mark.parametrize("reply", [
    b"", b"\x00\x00", struct.pack(">I", 10) + b"{}", struct.pack(">I", thin.MAX_REPLY + 1),
    thin.encode_frame({"rc": "0"}, thin.MAX_REPLY),
])
def test_a_broken_reply_is_try_again_later(tmp_path, reply):
    agent = _fake_agent(tmp_path, reply)
    rc, out = _run(tmp_path)
    agent.join(5)
    assert rc == 1 and out["code"] == 11 and out["details"].startswith("ProtocolError")


def test_an_oversized_netconf_is_refused_before_connecting(tmp_path):
    rc, out = _run(tmp_path, stdin=b"{" + b" " * thin.MAX_REQUEST + b"}")
    assert rc == 1 and out["code"] == 6 and "too large" in out["msg"]


# The server's side of the protocol, with a stub in place of the real handlers.

class _StubServer(CNIServer):
    def handle(self, env, stdin):
        return 0, json.dumps({"env": env["CNI_COMMAND"], "stdin": stdin.decode()})


def _serve(tmp_path, fn):
    async def go():
        server = _StubServer(tmp_path / "node1" / "cni.sock", None, "node1")
        await server.start()
        try:
            return await asyncio.get_running_loop().run_in_executor(None, fn), server.requests
        finally:
            await server.stop()
    return asyncio.run(go())


def test_server_answers_one_frame(tmp_path):
    (rc, out), requests = _serve(tmp_path, lambda: thin.run(
        {**ENV, "PYCALICO_RUN_ROOT": str(tmp_path)}, NETCONF, 5.0))
    assert rc == 0 and json.loads(out) == {"env": "ADD", "stdin": NETCONF.decode()}
    assert requests == 1
    assert not (tmp_path / "node1" / "cni.sock").exists()  # stop removes the socket


def _raw(tmp_path, data: bytes) -> dict:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(5)
        s.connect(str(tmp_path / "node1" / "cni.sock"))
        s.sendall(data)
        return thin.recv_frame(s, thin.MAX_REPLY)


def test_server_refuses_oversized_and_malformed_requests(tmp_path):
    def probe():
        return (_raw(tmp_path, struct.pack(">I", thin.MAX_REQUEST + 1)),
                _raw(tmp_path, struct.pack(">I", 3) + b"abc"),
                _raw(tmp_path, thin.encode_frame({"v": 1, "env": {"X": "1"}, "stdin": ""}, 100)))
    replies, requests = _serve(tmp_path, probe)
    for reply in replies:
        assert reply["rc"] == 1 and json.loads(reply["stdout"])["code"] == 6
    assert "1048577 bytes exceeds" in json.loads(replies[0]["stdout"])["details"]
    assert requests == 0


@pytest.mark.parametrize("value", [
    {"rc": 0, "stdout": "{\n \"ips\": []\n}\n"}, {"a": [1, True, False, None, "é\u2028\x00\"\\"]},
    {"env": {"CNI_ARGS": "K8S_POD_NAME=p;X=y"}}, [], {},
])
def test_fast_json_agrees_with_the_json_module(value):
    assert json.loads(thin.dumps(value)) == value
    assert thin.loads(json.dumps(value, indent=1)) == value


@pytest.mark.parametrize("text", ["", "  ", "{", "{} x", "NaN", "[1,]", "'a'", b"\xff"])
def test_fast_json_refuses_what_json_refuses(text):
    with pytest.raises(ValueError):
        thin.loads(text)
