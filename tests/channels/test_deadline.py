"""The total deadline of one send: clamped timeouts, and sockets cut when it passes."""

from __future__ import annotations

import socket
import time

from chimeway_core._deadline import Deadline


def test_clamp_gives_the_shorter_of_the_timeout_and_the_time_left() -> None:
    """Before the end a timeout is cut to what is left; after it, to next to nothing."""
    with Deadline(10.0) as deadline:
        assert 1.0 == deadline.clamp(1.0)
        assert 9.0 < deadline.clamp(60.0) <= 10.0
    with Deadline(0.01) as deadline:
        time.sleep(0.05)
        assert (True, 0.001) == (deadline.expired, deadline.clamp(60.0))


def test_a_watched_socket_is_cut_when_the_deadline_passes() -> None:
    """A read blocked on a watched socket returns (empty) once the deadline passes."""
    ours, theirs = socket.socketpair()
    with ours, theirs, Deadline(0.2) as deadline:
        deadline.watch(ours)
        ours.settimeout(30)
        started = time.monotonic()
        assert b"" == ours.recv(1)
        assert time.monotonic() - started < 10


def test_a_socket_watched_after_the_deadline_is_cut_at_once() -> None:
    """A connection made just as the deadline passed is cut when it is registered."""
    ours, theirs = socket.socketpair()
    with ours, theirs, Deadline(0.01) as deadline:
        time.sleep(0.2)  # the timer has fired
        deadline.watch(ours)
        ours.settimeout(30)
        assert b"" == ours.recv(1)


def test_leaving_the_deadline_closes_its_duplicates_and_not_the_socket() -> None:
    """Only the duplicate descriptors are closed on exit; the caller's socket stays open."""
    ours, theirs = socket.socketpair()
    with ours, theirs:
        with Deadline(30.0) as deadline:
            deadline.watch(ours)
        theirs.sendall(b"x")
        assert b"x" == ours.recv(1)
