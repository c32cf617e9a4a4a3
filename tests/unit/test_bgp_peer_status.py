"""What node status says about a session that is not up (bgp.speaker's PeerStatus), in BIRD's words."""
from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timezone
from ipaddress import IPv4Address

import pytest

from bgp import protocol
from bgp.core import PeerSession as _Peer, notification_reason
from bgp.exabgp_conf import ExaBGPConfig
from bgp.peers import PeerSpec
from bgp.speaker_core import SpeakerCore
from bgp.supervision import Md5Counts

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
SPEC = PeerSpec(IPv4Address("10.0.0.2"), 64512, 64512, False, "node-to-node mesh", "n2")


@pytest.mark.parametrize("state,reason,info", [
    ("start", "", "Idle"),
    ("idle", "Socket: Connection refused", "Active Socket: Connection refused"),
    ("active", "Socket: No route to host", "Active Socket: No route to host"),
    ("connect", "", "Connect"),
    ("opensent", "", "OpenSent"),
    ("openconfirm", "down: hold timer expired", "OpenConfirm down: hold timer expired"),
])
def test_state_and_reason(state, reason, info):
    status = _Peer(SPEC, state=state, reason=reason).status()
    assert (status.state, status.info, status.reason) == (state, info, reason)
    assert status.peer_type == "node-to-node mesh"


def test_a_cause_outranks_the_down_reason_until_the_session_is_up():
    """A NOTIFICATION from the peer (or a limit of ours, e.g. max-prefix) is followed by the
    session's own 'down': the cause is what the user needs to see."""
    peer = _Peer(SPEC, state="idle", reason="down: closing connection", cause="max-prefix exceeded")
    assert peer.status().info == "Active max-prefix exceeded"
    assert peer.status().reason == "max-prefix exceeded"
    up = _Peer(SPEC, state="up").status()
    assert (up.info, up.reason) == ("Established", "")


def test_a_connect_timeout_to_a_peer_with_a_password_says_to_check_it():
    """With TCP MD5 a wrong or missing key drops our SYNs silently: a timed-out connect is all
    there is to see, and with a password configured the likeliest cause."""
    timed_out = "Socket: Connection timed out"
    with_password = _Peer(replace(SPEC, password="s3cret"), state="idle", reason=timed_out).status()
    assert with_password.info == "Active Socket: Connection timed out (check the BGP password)"
    assert with_password.reason == "Socket: Connection timed out (check the BGP password)"
    assert "s3cret" not in repr(with_password)
    without = _Peer(SPEC, state="idle", reason=timed_out).status()
    assert without.info == "Active Socket: Connection timed out"
    refused = _Peer(replace(SPEC, password="s3cret"), state="idle",
                    reason="Socket: Connection refused").status()
    assert refused.info == "Active Socket: Connection refused"


def test_notification_reason():
    assert notification_reason(2, 2) == "Received: Bad peer AS (2/2)"
    assert notification_reason(6, 3, "") == "Received: Peer de-configured (6/3)"
    assert notification_reason(3, 11, "") == "Received: UPDATE message error (3/11)"
    assert notification_reason(9, 9, "odd") == "Received: Notification (9/9) odd"
    assert notification_reason(2, 2, "bad peer as") == "Received: Bad peer AS (2/2)"


def test_an_exabgp_restart_replaces_an_earlier_cause():
    """Every session goes down with the child: that is the reason now, not the last NOTIFICATION."""
    sc = SpeakerCore(base=ExaBGPConfig(router_id=IPv4Address("10.0.0.1"),
                                       local_address=IPv4Address("10.0.0.1"), relay_command=("socat",)),
                     local_asn=64512, clock=lambda: 0.0)
    sc.set_peers(frozenset({SPEC}), None, now=0.0)
    sc.feed([protocol.NotificationReceived(SPEC.address, 2, 2, "")], 0.0, T0)
    assert sc.peer_status()[0].reason == "Received: Bad peer AS (2/2)"
    sc.child_lost("down: exabgp exited with code 1", 1.0, T0)
    [status] = sc.peer_status()
    assert status.reason == "down: exabgp exited with code 1", status


def _core(*specs: PeerSpec) -> SpeakerCore:
    sc = SpeakerCore(base=ExaBGPConfig(router_id=IPv4Address("10.0.0.1"),
                                       local_address=IPv4Address("10.0.0.1"), relay_command=("socat",)),
                     local_asn=64512, clock=lambda: 0.0)
    sc.set_peers(frozenset(specs), None, now=0.0)
    return sc


def test_a_passive_session_down_shows_the_md5_drops_since_its_last_state_change():
    """We listen and the kernel drops the peer's SYNs (wrong key): ExaBGP never hears of them,
    the namespace's counters are all there is (bgp.supervision.Md5Watch)."""
    passive = replace(SPEC, passive=True, password="s3cret")
    sc = _core(passive)
    assert sc.md5_wanted
    sc.md5_counters(Md5Counts(failure=10))
    assert sc.peer_status()[0].info == "Idle"
    sc.md5_counters(Md5Counts(failure=14))
    [status] = sc.peer_status()
    assert status.reason == ("Passive: TCP MD5 dropped 4 incoming segments signed with another "
                             "password (check the BGP password)")
    assert status.info == f"Idle {status.reason}"
    # Up: no reason, and nothing to sample for; down again: counted from then on.
    sc.feed([protocol.PeerStateChanged(SPEC.address, "up", "")], 1.0, T0)
    assert sc.peer_status()[0].info == "Established"
    assert not sc.md5_wanted
    sc.md5_counters(Md5Counts(failure=20))
    sc.feed([protocol.PeerStateChanged(SPEC.address, "down", "peer closed the connection")], 2.0, T0)
    assert sc.peer_status()[0].info == "Active down: peer closed the connection"
    sc.md5_counters(Md5Counts(failure=20))
    sc.md5_counters(Md5Counts(failure=20, unsigned=1))
    [status] = sc.peer_status()
    assert status.info == ("Active down: peer closed the connection; Passive: TCP MD5 dropped 1 "
                           "incoming segment without a signature (check the BGP password)")


def test_an_active_session_gets_no_md5_reason():
    """Its own connect says it (``Socket: Connection timed out (check the BGP password)``)."""
    sc = _core(replace(SPEC, password="s3cret"))
    assert not sc.md5_wanted
    sc.md5_counters(Md5Counts())
    sc.md5_counters(Md5Counts(failure=5))
    assert sc.peer_status()[0].info == "Idle"
