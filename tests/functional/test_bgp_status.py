"""Why a session is not up, as ``node status`` shows it (BIRD's words, as calicoctl shows BIRD's).

A peer address where nothing listens: ``Active Socket: Connection refused`` (ExaBGP 5.0.15 took a
refused connect for an established one and said only "closing connection"; bgp/exabgp_main.py
adapts that). A peer that rejects our OPEN with a NOTIFICATION: that notification.
"""
from __future__ import annotations

from ipaddress import IPv4Address

import pytest

from bgp.peers import PeerSpec
from tests.functional.test_bgp_interop import BIRD_CONF, OUTSIDE, PEER, PEER_BLOCK, US, Bird, \
    _start_speaker
from tests.helpers import veth_between, wait_for

pytestmark = pytest.mark.root


def _peer(asn: int = 64512) -> PeerSpec:
    return PeerSpec(address=PEER, asn=asn, local_asn=64512, passive=False, peer_type="global",
                    name="p")


def _status(lt, speaker):
    [status] = lt.call(speaker.peer_status)
    return status


def test_nothing_listening_shows_connection_refused(netns, loop_thread, tmp_path):
    lt = loop_thread
    ns_us, ns_peer = netns("sru"), netns("srp")
    veth_between(ns_us, "eth0", f"{US}/24", ns_peer, "eth0", f"{PEER}/24")  # no BGP there
    speaker = _start_speaker(lt, ns_us, tmp_path / "us", _peer())
    try:
        status = wait_for(lambda: (s := _status(lt, speaker)).reason and s, 15,
                          what="a reason for the session not being up")
        assert status.state != "up"
        assert status.reason == "Socket: Connection refused", status
        assert status.info == "Active Socket: Connection refused", status
    finally:
        lt.run(speaker.stop())


class AsBird(Bird):
    """BIRD expecting us under another AS: it answers our OPEN with NOTIFICATION Bad peer AS."""

    def _conf(self) -> str:
        text = BIRD_CONF.format(peer=PEER, us=US, peer_block=PEER_BLOCK, outside=OUTSIDE, log=self.log)
        return text.replace(f"neighbor {US} as 64512;", f"neighbor {US} as 64999;")


def test_a_rejecting_peer_shows_its_notification(netns, procs, loop_thread, tmp_path):
    lt = loop_thread
    ns_us, ns_bird = netns("snu"), netns("snb")
    veth_between(ns_us, "eth0", f"{US}/24", ns_bird, "eth0", f"{PEER}/24")
    AsBird(ns_bird, tmp_path / "bird", procs)
    speaker = _start_speaker(lt, ns_us, tmp_path / "us", _peer())
    try:
        status = wait_for(lambda: (s := _status(lt, speaker)).reason.startswith("Received") and s, 20,
                          what="the peer's NOTIFICATION as the reason")
        assert status.state != "up"
        assert status.reason.startswith("Received: Bad peer AS (2/2)"), status
        assert status.info.startswith(("Active Received: Bad peer AS", "Connect Received: Bad peer AS",
                                       "OpenSent Received: Bad peer AS")), status
    finally:
        lt.run(speaker.stop())
