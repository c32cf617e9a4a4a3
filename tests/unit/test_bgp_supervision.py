"""bgp.supervision without a child: what the speaker shows about ExaBGP and when it starts the next."""
from __future__ import annotations

import doctest
from datetime import datetime, timedelta, timezone
from ipaddress import IPv4Address

import pytest

from bgp import supervision
from bgp.supervision import (RESTART_BACKOFF, ChildStatus, Md5Counts, Md5Session, Md5Watch, SpeakerStatus,
                             md5_counts)

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
T1 = T0 + timedelta(seconds=1)


def test_the_module_docstring_runs():
    assert doctest.testmod(supervision).failed == 0


def test_a_child_starts_runs_and_stops():
    child = ChildStatus()
    assert child.status == SpeakerStatus("stopped", None, "not started")
    child.spawned(7, T0)
    assert child.status == SpeakerStatus("starting", T0, "exabgp pid 7 waiting for its relay")
    child.relay_connected(7, T1)
    assert child.status == SpeakerStatus("running", T1, "exabgp pid 7")
    child.stopped(T1)
    assert child.status == SpeakerStatus("stopped", T1, "stopped by the agent")


def test_an_exit_downs_every_session_and_says_so_until_the_next_child_is_up():
    child = ChildStatus()
    child.spawned(7, T0)
    child.relay_connected(7, T0)
    assert child.exited(1, ran_for=5.0, now=T1) == ("down: exabgp exited with code 1", RESTART_BACKOFF[0])
    assert child.status == SpeakerStatus("restarting", T1, "exabgp exited with code 1")
    child.spawned(8, T1)
    assert child.status.reason == "exabgp exited with code 1; exabgp pid 8 waiting for its relay"
    child.relay_connected(8, T1)
    child.spawned(9, T1)  # the cause went with the child that came up
    assert child.status.state == "starting"


def test_the_exit_of_a_child_we_killed_keeps_the_kills_cause():
    child = ChildStatus()
    child.spawned(7, T0)
    assert child.restart("relay connection closed", T0) == "down: relay connection closed"
    down, _ = child.exited(-9, ran_for=5.0, now=T1)
    assert down is None, "the sessions went down with the kill's reason already"
    assert child.status == SpeakerStatus("restarting", T0, "relay connection closed")


def test_restarts_back_off_doubling_to_the_longest_and_reset_after_a_steady_run():
    child = ChildStatus()
    delays = [child.exited(1, ran_for=1.0, now=T0)[1] for _ in range(7)]
    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert child.exited(1, ran_for=supervision.STEADY_RUN + 1, now=T0)[1] == 1.0
    assert child.exited(1, ran_for=1.0, now=T0)[1] == 2.0


def test_a_status_given_again_keeps_its_since():
    child = ChildStatus()
    child.restart("x", T0)
    child.restart("x", T1)
    assert child.status.since == T0


# -- TCP MD5 drops: why a passive session is down -------------------------------------------------

A, B, C = (IPv4Address(f"10.0.0.{i}") for i in (2, 3, 4))
NETSTAT = ("TcpExt: SyncookiesSent TCPMD5NotFound TCPMD5Unexpected TCPMD5Failure TCPAOGood\n"
           "TcpExt: 0 {unsigned} {unexpected} {failure} 0\n"
           "IpExt: InNoRoutes InTruncatedPkts\nIpExt: 0 0\n")
HINT = "(check the BGP password)"


def _s(address, key="idle", *, up=False, passive=True, password=True) -> Md5Session:
    return Md5Session(address, key, up, passive, password)


def test_netstat_counters_are_read_by_name():
    text = NETSTAT.format(unsigned=3, unexpected=4, failure=5)
    assert md5_counts(text) == Md5Counts(unsigned=3, failure=5, unexpected=4)
    assert md5_counts("TcpExt: SyncookiesSent\nTcpExt: 0\n") is None  # a kernel without TCP MD5
    assert md5_counts("") is None


def test_no_reason_before_drops_rise_since_the_baseline():
    watch = Md5Watch()
    assert watch.reasons([_s(A)]) == {}  # never sampled
    watch.sample(Md5Counts(failure=7), [_s(A)])  # drops before the baseline are not this session's
    assert watch.reasons([_s(A)]) == {}
    watch.sample(Md5Counts(failure=7), [_s(A)])
    assert watch.reasons([_s(A)]) == {}


@pytest.mark.parametrize("later,text", [
    (Md5Counts(failure=3), "3 incoming segments signed with another password"),
    (Md5Counts(unsigned=2), "2 incoming segments without a signature"),
    (Md5Counts(failure=3, unsigned=2), "5 incoming segments (3 signed with another password, 2 unsigned)"),
])
def test_drops_of_a_session_with_a_password(later, text):
    watch = Md5Watch()
    watch.sample(Md5Counts(), [_s(A)])
    watch.sample(later, [_s(A)])
    assert watch.reasons([_s(A)]) == {A: f"Passive: TCP MD5 dropped {text} {HINT}"}


def test_signed_segments_to_a_session_without_a_password():
    watch = Md5Watch()
    sessions = [_s(A, password=False)]
    watch.sample(Md5Counts(), sessions)
    watch.sample(Md5Counts(failure=5), sessions)  # a key held for someone else: not this session's
    assert watch.reasons(sessions) == {}
    watch.sample(Md5Counts(failure=5, unexpected=2), sessions)
    assert watch.reasons(sessions) == {A: (
        "Passive: TCP MD5 dropped 2 incoming segments signed with a password, from addresses it "
        f"holds no key for; this session has no password {HINT}")}


def test_a_session_without_a_password_is_not_given_drops_of_keyed_sessions():
    watch = Md5Watch()
    sessions = [_s(A), _s(B, password=False)]
    watch.sample(Md5Counts(), sessions)
    watch.sample(Md5Counts(failure=4), sessions)
    assert set(watch.reasons(sessions)) == {A}


def test_a_state_change_takes_a_new_baseline():
    watch = Md5Watch()
    watch.sample(Md5Counts(), [_s(A)])
    watch.sample(Md5Counts(failure=4), [_s(A)])
    assert A in watch.reasons([_s(A)])
    assert watch.reasons([_s(A, key="idle again")]) == {}  # changed since the last sample
    watch.sample(Md5Counts(failure=4), [_s(A, key="idle again")])
    assert watch.reasons([_s(A, key="idle again")]) == {}
    watch.sample(Md5Counts(failure=6), [_s(A, key="idle again")])
    assert watch.reasons([_s(A, key="idle again")])[A].startswith("Passive: TCP MD5 dropped 2 ")


def test_only_passive_sessions_that_are_down_get_a_reason_or_ask_for_samples():
    up, active = _s(A, up=True), _s(B, passive=False)
    assert not Md5Watch.wanted([up, active])
    assert Md5Watch.wanted([up, active, _s(C)])
    watch = Md5Watch()
    watch.sample(Md5Counts(), [up, active])
    watch.sample(Md5Counts(failure=4), [up, active])
    assert watch.reasons([up, active]) == {}


def test_an_unknown_sample_keeps_the_last():
    watch = Md5Watch()
    watch.sample(Md5Counts(), [_s(A)])
    watch.sample(Md5Counts(failure=1), [_s(A)])
    watch.sample(None, [_s(A)])  # no child to read from: nothing new is known
    assert A in watch.reasons([_s(A)])


def test_several_sessions_down_with_a_password_share_the_drops_and_say_so():
    """The kernel counts per namespace: with two keyed sessions down, either may be the one."""
    watch = Md5Watch()
    sessions = [_s(A), _s(B, passive=False), _s(C)]
    watch.sample(Md5Counts(), sessions)
    watch.sample(Md5Counts(failure=3), sessions)
    reasons = watch.reasons(sessions)
    assert set(reasons) == {A, C}  # the active one has its connect's reason (core.PASSWORD_HINT)
    assert reasons[A] == (
        "Passive: TCP MD5 dropped 3 incoming segments signed with another password, from this peer "
        "or from 2 other sessions with a password that are down (the kernel counts per namespace, "
        f"not per peer) {HINT}")
    reasons = watch.reasons([_s(A), _s(B, up=True, passive=False), _s(C, password=False)])
    assert reasons[A] == f"Passive: TCP MD5 dropped 3 incoming segments signed with another password {HINT}"
