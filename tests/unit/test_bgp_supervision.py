"""bgp.supervision without a child: what the speaker shows about ExaBGP and when it starts the next."""
from __future__ import annotations

import doctest
from datetime import datetime, timedelta, timezone

from bgp import supervision
from bgp.supervision import RESTART_BACKOFF, ChildStatus, SpeakerStatus

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
