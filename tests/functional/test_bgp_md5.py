"""TCP MD5 passwords (RFC 2385) between our Speaker (real ExaBGP) and BIRD 2 in namespaces.

Same password: Established. Wrong password, or a password on one side only: the kernel drops
the unsigned or mis-signed segments, so the session never comes up, and node status says
``Active Socket: Connection timed out`` (with a hint to check the password when we have one,
BIRD's words otherwise); each such case is watched for
``NEVER_WINDOW`` seconds, several times what a matching session needs here (``test_same_password``
shows it up in a few seconds), and then the password is corrected on our side to show the same
setup does come up (so the window was long enough, and a changed password takes effect without a
restart). Where we are the passive side, ExaBGP hears nothing of the dropped SYNs: node status
gives the rise of the kernel's TCP MD5 drop counters as the reason (``bgp.supervision.Md5Watch``).
"""
from __future__ import annotations

import base64
import dataclasses
import os
import re
import stat
import subprocess
import time
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from bgp.peers import PeerSpec
from bgp.speaker import MD5_SAMPLE_INTERVAL, Speaker
from felix.agent import _peer_dict
from felix.status import StatusServer
from tests.functional.agent_node import BIN
from tests.functional.test_bgp_interop import BIRD_CONF, OUR_BLOCK, OUTSIDE, PEER, PEER_BLOCK, US, \
    Bird, _established, _start_speaker
from tests.helpers import veth_between, wait_for

pytestmark = pytest.mark.root

NEVER_WINDOW = 12.0  # a matching session is Established in ~1-3 s here
# A connect whose SYNs are dropped times out after ~15 s (bgp/exabgp_main.py), the kernel's
# default after ~130 s.
REASON_WINDOW = 30.0
# Spaces, ';', braces and single quotes must survive ExaBGP's config syntax (BIRD's strings cannot
# hold a double quote; the unit tests render one).
PASSWORD = "Zq7Kw md5; {x} 'q'"
MARK = "Zq7Kw"  # a part of the password found in no path or keyword


class PasswordBird(Bird):
    """BIRD with ``password "..."`` in its BGP protocol (None: no password)."""

    def __init__(self, ns: str, workdir: Path, procs, password: str | None) -> None:
        self._password = password
        super().__init__(ns, workdir, procs)

    def _conf(self) -> str:
        text = BIRD_CONF.format(peer=PEER, us=US, peer_block=PEER_BLOCK, outside=OUTSIDE, log=self.log)
        if self._password is None:
            return text
        assert '"' not in self._password, "BIRD strings cannot hold a double quote"
        return text.replace("    hold time 9;\n", f'    hold time 9;\n    password "{self._password}";\n')


def _info(lt, speaker) -> str:
    [status] = lt.call(speaker.peer_status)
    return status.info


def _peer(password: str | None) -> PeerSpec:
    return PeerSpec(address=PEER, asn=64512, local_asn=64512, passive=False, peer_type="global",
                    name="bird", password=password)


def _stays_down(lt, speaker, bird: Bird, seconds: float) -> None:
    """Poll both sides for ``seconds``: neither may ever say Established."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert not _established(lt, speaker), "our session came up without the right password"
        assert bird.bgp_state() != "Established", "BIRD's session came up without the right password"
        time.sleep(0.2)  # the polling interval of this check, not a synchronisation


@pytest.fixture
def link(netns):
    ns_us, ns_bird = netns("m5u"), netns("m5b")
    veth_between(ns_us, "eth0", f"{US}/24", ns_bird, "eth0", f"{PEER}/24")
    return ns_us, ns_bird


def test_same_password_establishes_and_is_kept_private(link, procs, loop_thread, tmp_path):
    lt, (ns_us, ns_bird) = loop_thread, link
    bird = PasswordBird(ns_bird, tmp_path / "bird", procs, PASSWORD)
    speaker = _start_speaker(lt, ns_us, tmp_path / "us", _peer(PASSWORD))
    try:
        wait_for(lambda: _established(lt, speaker), 20, what="our MD5 session to BIRD established")
        wait_for(lambda: bird.route(OUR_BLOCK), 10, what="BIRD learns our block over MD5")
        conf = tmp_path / "us" / "exabgp.conf"
        assert stat.S_IMODE(conf.stat().st_mode) == 0o600
        assert base64.b64encode(PASSWORD.encode()).decode() in conf.read_text()
        assert MARK not in conf.read_text()
        assert MARK not in (tmp_path / "us" / "exabgp.log").read_text()
        assert all(MARK not in repr(s) for s in lt.call(speaker.peer_status))
    finally:
        lt.run(speaker.stop())


@pytest.mark.parametrize("ours,birds", [
    ("wrong", PASSWORD),  # both sign, with different keys
    (None, PASSWORD),  # BIRD requires a signature we do not send
    (PASSWORD, None),  # we sign, BIRD has no key for us
], ids=["wrong-password", "none-on-our-side", "none-on-bird"])
def test_mismatched_password_never_establishes(link, procs, loop_thread, tmp_path, ours, birds):
    lt, (ns_us, ns_bird) = loop_thread, link
    bird = PasswordBird(ns_bird, tmp_path / "bird", procs, birds)
    speaker = _start_speaker(lt, ns_us, tmp_path / "us", _peer(ours))
    try:
        _stays_down(lt, speaker, bird, NEVER_WINDOW)
        assert bird.route(OUR_BLOCK) == ""
        # The dropped SYNs are all there is to see; with a password of ours, a hint to check it.
        hint = " (check the BGP password)" if ours else ""
        wait_for(lambda: _info(lt, speaker) == f"Active Socket: Connection timed out{hint}",
                 REASON_WINDOW, what="node status giving a reason for the session not coming up")
        lt.run(speaker.set_peers(frozenset({_peer(birds)})))  # now matching: without a restart
        wait_for(lambda: _established(lt, speaker), NEVER_WINDOW,
                 what="session up once our password matches BIRD's")
    finally:
        lt.run(speaker.stop())


# -- we are the passive side: BIRD connects, our kernel drops its SYNs, ExaBGP hears nothing -----

class ConnectingBird(PasswordBird):
    """BIRD connecting to us (the Speaker is passive, as the higher address of a mesh pair)."""

    def _conf(self) -> str:
        return super()._conf().replace(
            "    passive on;", "    passive off;\n    connect delay time 1;\n    connect retry time 2;\n   ")


def _passive_peer(password: str | None) -> PeerSpec:
    return dataclasses.replace(_peer(password), passive=True)


@pytest.fixture
def node_status(loop_thread, tmp_path):
    """``pycalicoctl node status`` as an operator runs it, against a status socket that answers
    with a speaker's sessions as the agent's does (``felix.agent._peer_dict``)."""
    lt, root, served = loop_thread, tmp_path / "status-root", []

    async def answer() -> dict:
        return {"peers": [_peer_dict(p) for p in served[0].peer_status()]}

    server = StatusServer(root / "us" / "status.sock", {"status": answer})
    lt.run(server.start())

    def run(speaker: Speaker) -> str:
        served[:] = [speaker]
        out = subprocess.run([str(BIN / "pycalicoctl"), "node", "status", "--node", "us"],
                             env={**os.environ, "PYCALICO_RUN_ROOT": str(root)},
                             capture_output=True, text=True, timeout=30)
        assert "Calico process is running" in out.stdout, out.stdout + out.stderr
        return out.stdout
    try:
        yield run
    finally:
        lt.run(server.stop())


def _row(table: str) -> str:
    [row] = [line for line in table.splitlines() if str(PEER) in line]
    return " ".join(row.split())


def test_passive_side_shows_md5_drops_of_a_wrong_password(link, procs, loop_thread, tmp_path, node_status):
    lt, (ns_us, ns_bird) = loop_thread, link
    speaker = _start_speaker(lt, ns_us, tmp_path / "us", _passive_peer(PASSWORD))
    try:
        ConnectingBird(ns_bird, tmp_path / "bird", procs, "wrong")
        reason = "Passive: TCP MD5 dropped"
        row = wait_for(lambda: reason in (r := _row(node_status(speaker))) and r, REASON_WINDOW,
                       what="node status giving the MD5 drops as the reason")
        assert not _established(lt, speaker)
        assert lt.call(lambda: "md5" in speaker._timers), "the counters are sampled while it is down"
        assert re.search(r"\| Idle Passive: TCP MD5 dropped \d+ incoming segments? signed with another "
                         r"password \(check the BGP password\) \|$", row), row
        lt.run(speaker.set_peers(frozenset({_passive_peer("wrong")})))  # now matching: it comes up
        wait_for(lambda: _established(lt, speaker), NEVER_WINDOW, what="session up with BIRD's password")
        assert "| up |" in _row(node_status(speaker)) and "Established" in _row(node_status(speaker))
        # every session up: the speaker stops reading the counters (a quiet agent wakes for nothing)
        wait_for(lambda: lt.call(lambda: "md5" not in speaker._timers), 3 * MD5_SAMPLE_INTERVAL,
                 what="the MD5 counter sampling to stop")
    finally:
        lt.run(speaker.stop())


def test_passive_side_with_the_right_password_shows_no_md5_reason(link, procs, loop_thread, tmp_path,
                                                                  node_status):
    lt, (ns_us, ns_bird) = loop_thread, link
    speaker = _start_speaker(lt, ns_us, tmp_path / "us", _passive_peer(PASSWORD))
    try:
        ConnectingBird(ns_bird, tmp_path / "bird", procs, PASSWORD)
        seen = []

        def up() -> bool:
            seen.append(_row(node_status(speaker)))
            return "Established" in seen[-1]
        wait_for(up, 20, what="our passive MD5 session established")
        assert not [row for row in seen if "MD5" in row], seen
    finally:
        lt.run(speaker.stop())


# -- two of our speakers, as two mesh nodes: the higher address is passive and takes the signed
# connection on ExaBGP's listening socket (the key set per peer address there) -----------------

A, B = IPv4Address("10.250.1.1"), IPv4Address("10.250.1.2")


def _mesh_speaker(lt, ns: str, me: IPv4Address, other: IPv4Address, run_dir: Path,
                  password: str | None) -> Speaker:
    async def make() -> Speaker:
        return Speaker(node_name=ns, router_id=me, local_address=me, local_asn=64512,
                       run_dir=run_dir, on_change=lambda: None, netns=ns, hold_time=9,
                       sync_deadline=60.0)
    speaker = lt.run(make())
    lt.run(speaker.set_peers(frozenset({_mesh_peer(me, other, password)})))
    lt.run(speaker.start())
    return speaker


def _mesh_peer(me: IPv4Address, other: IPv4Address, password: str | None) -> PeerSpec:
    return PeerSpec(address=other, asn=64512, local_asn=64512, passive=me > other,
                    peer_type="node-to-node mesh", name="other", password=password)


def _up(lt, speaker) -> bool:
    return [s.state for s in lt.call(speaker.peer_status)] == ["up"]


def test_mesh_password_between_our_speakers_active_and_passive(netns, loop_thread, tmp_path):
    """B (higher address) is passive: its ExaBGP must hold A's key on the listening socket. A
    wrong key on B keeps the session down, and B's node status says its kernel drops A's
    signed SYNs; the right one brings it up without a restart."""
    lt = loop_thread
    ns_a, ns_b = netns("m5x"), netns("m5y")
    veth_between(ns_a, "eth0", f"{A}/24", ns_b, "eth0", f"{B}/24")
    sa = _mesh_speaker(lt, ns_a, A, B, tmp_path / "a", PASSWORD)
    sb = _mesh_speaker(lt, ns_b, B, A, tmp_path / "b", "wrong")
    try:
        deadline = time.monotonic() + NEVER_WINDOW
        while time.monotonic() < deadline:
            assert not _up(lt, sa) and not _up(lt, sb), "mesh session up with different keys"
            time.sleep(0.2)  # the polling interval of this check, not a synchronisation
        # B, listening, sees nothing of A's attempts but its kernel's MD5 drop counters.
        wait_for(lambda: "Passive: TCP MD5 dropped" in _info(lt, sb), REASON_WINDOW,
                 what="the passive side's reason: MD5 drops")
        assert "signed with another password (check the BGP password)" in _info(lt, sb)
        lt.run(sb.set_peers(frozenset({_mesh_peer(B, A, PASSWORD)})))
        wait_for(lambda: _up(lt, sa) and _up(lt, sb), NEVER_WINDOW, what="mesh session up with one key")
    finally:
        lt.run(sa.stop())
        lt.run(sb.stop())
