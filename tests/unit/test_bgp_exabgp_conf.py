"""Golden file for the rendered ExaBGP config. Regenerate with PYCALICO_UPDATE_GOLDEN=1."""
import base64
import os
from ipaddress import IPv4Address as A
from pathlib import Path

import pytest

from bgp.exabgp_conf import ExaBGPConfig, render
from bgp.peers import PeerSpec

GOLDEN = Path(__file__).parent / "testdata" / "bgp" / "exabgp.conf.golden"


def sample_config() -> ExaBGPConfig:
    """Also used by tests/functional/test_bgp_config.py, which loads the golden file in ExaBGP."""
    peers = frozenset({
        PeerSpec(A("10.0.0.3"), 64513, 64512, False, "node-to-node mesh", "node-c",
                 password='s3cret "quoted"; {braces}'),
        PeerSpec(A("10.0.0.1"), 64512, 64512, True, "node-to-node mesh", "node-a"),
    })
    return ExaBGPConfig(router_id=A("10.0.0.2"), local_address=A("10.0.0.2"),
                        relay_command=("/usr/bin/socat", "-b65536", "STDIO", "UNIX-CONNECT:/run/pycalico/exabgp.sock"),
                        peers=peers, hold_time=9, gr_restart_time=120, port=179)


def test_render_matches_golden():
    text = render(sample_config())
    if os.environ.get("PYCALICO_UPDATE_GOLDEN") == "1":
        GOLDEN.write_text(text)
    assert text == GOLDEN.read_text(), "rendering changed; set PYCALICO_UPDATE_GOLDEN=1 and review the diff"


def test_render_is_deterministic_and_peers_sorted():
    text = render(sample_config())
    assert text.index("neighbor 10.0.0.1 ") < text.index("neighbor 10.0.0.3 ")
    assert "passive true;" in text and "passive false;" in text
    assert text.count("manual-eor true;") == 2


def test_password_is_base64_for_its_peer_only_and_never_in_a_repr():
    """A Secret's value may hold quotes, ';' or braces that ExaBGP's tokeniser would split on:
    it is written base64-encoded, and only in the neighbor it belongs to."""
    cfg = sample_config()
    text = render(cfg)
    with_pw = text[text.index("neighbor 10.0.0.3 "):]
    without = text[text.index("neighbor 10.0.0.1 "):text.index("neighbor 10.0.0.3 ")]
    encoded = base64.b64encode('s3cret "quoted"; {braces}'.encode()).decode()
    assert f"    md5-password {encoded};\n    md5-base64 true;\n" in with_pw
    assert "md5" not in without
    assert "s3cret" not in text
    assert all("s3cret" not in repr(p) for p in cfg.peers), "a PeerSpec's repr (logs) shows no password"


def test_no_peers_renders_only_the_process():
    text = render(ExaBGPConfig(A("10.0.0.2"), A("10.0.0.2"), ("/bin/relay",)))
    assert "neighbor" not in text and "run /bin/relay;" in text


@pytest.mark.parametrize("kwargs,field", [
    ({"relay_command": ("/a dir/python",)}, "relay_command"),
    ({"relay_command": ("x;y",)}, "relay_command"),
    ({"hold_time": 2}, "hold_time"),
    ({"gr_restart_time": 5000}, "gr_restart_time"),
    ({"port": 0}, "port"),
    ({"peers": frozenset({PeerSpec(A("10.0.0.1"), 1, 1, True, "t", "x", password="p" * 81)})},
     "peers: the password of 10.0.0.1"),
    ({"peers": frozenset({PeerSpec(A("10.0.0.1"), 1, 1, True, "t", "x", password="")})}, "empty"),
    ({"peers": frozenset({PeerSpec(A("10.0.0.1"), 1, 1, True, "t", "x"),
                          PeerSpec(A("10.0.0.1"), 2, 1, True, "t", "y")})}, "peers"),
])
def test_invalid_config_names_the_field(kwargs, field):
    base = {"router_id": A("10.0.0.2"), "local_address": A("10.0.0.2"), "relay_command": ("/bin/relay",)}
    with pytest.raises(ValueError, match=field):
        ExaBGPConfig(**{**base, **kwargs})


def test_the_relay_is_socat_and_refuses_paths_socat_would_split(tmp_path):
    """The relay is socat (2.5 MB per node, where a Python relay took 12); a socket path with
    socat's address separators would connect somewhere else, so it is refused, naming run_dir."""
    from bgp.speaker import relay_command
    argv = relay_command(tmp_path / "exabgp.sock")
    assert argv[0].endswith("/socat") and argv[-1] == f"UNIX-CONNECT:{tmp_path}/exabgp.sock"
    with pytest.raises(ValueError, match="run_dir"):
        relay_command(tmp_path / "a,b" / "exabgp.sock")


def test_exabgp_logs_sessions_not_every_keepalive_and_is_rotated(tmp_path):
    """Issue 9: the ExaBGP log grew without bound (a line per keepalive, counter and API command);
    now those categories are off, and a log over the cap is rotated to .1 at each (re)start."""
    from ipaddress import IPv4Address

    from bgp.speaker import exabgp_env, rotate_log
    env = exabgp_env(IPv4Address("10.0.0.1"), 179)
    assert env["exabgp.log.statistics"] == "false" and env["exabgp.log.processes"] == "false"
    log = tmp_path / "exabgp.log"
    assert rotate_log(log, 10) is False  # none yet
    log.write_bytes(b"x" * 10)
    assert rotate_log(log, 10) is False and log.exists()  # at the cap: kept
    log.write_bytes(b"y" * 11)
    (tmp_path / "exabgp.log.1").write_bytes(b"old")
    assert rotate_log(log, 10) is True
    assert not log.exists() and (tmp_path / "exabgp.log.1").read_bytes() == b"y" * 11
