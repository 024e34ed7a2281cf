"""A total deadline over socket work: timeouts cut to what is left, sockets cut at the end.

Per-operation socket timeouts bound each read, not a whole exchange: a peer
that sends one byte just inside each read timeout keeps a read going for as
long as it likes. That peer can hold a channel's send past its lease (and the
rescuer then starts a second, overlapping call), or a thread of the metrics
exporter for ever. So such work runs inside a :class:`Deadline`:

- every timeout handed to a socket operation is first cut to the time left
  (:meth:`Deadline.clamp`), so nothing *starts* waiting past it;
- every socket involved is registered (:meth:`Deadline.watch`, or
  :meth:`Deadline.trace` as httpcore's trace hook); when the deadline passes,
  a timer thread shuts each of them down, and whatever call is blocked on one
  returns at once with an error (or end of file) its caller reports.

A registered socket is kept as a duplicate of its descriptor: ``shutdown``
acts on the connection, not the descriptor, so it also cuts the TLS socket
that later wraps the same connection (wrapping detaches the original object).
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Mapping
from typing import Any, Final, Self

__all__ = ["Deadline"]

#: The timeout an operation gets once nothing is left: it fails at once.
_NOTHING_LEFT: Final = 0.001


class Deadline:
    """An end ``seconds`` from entering the context; leaving it disarms the cut."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._end = time.monotonic() + seconds
        self._lock = threading.Lock()
        self._watched: list[socket.socket] = []
        self._expired = False
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def __enter__(self) -> Self:
        self._end = time.monotonic() + self.seconds
        self._timer.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._timer.cancel()
        with self._lock:
            watched, self._watched = self._watched, []
        for twin in watched:
            twin.close()

    @property
    def expired(self) -> bool:
        """Whether the deadline has passed (its sockets are then being cut)."""
        return self._expired or time.monotonic() >= self._end

    def clamp(self, seconds: float) -> float:
        """``seconds``, or the time left if that is shorter (never zero: zero means no timeout)."""
        return max(min(seconds, self._end - time.monotonic()), _NOTHING_LEFT)

    def watch(self, sock: socket.socket) -> None:
        """Shut ``sock``'s connection down when the deadline passes (at once if it has)."""
        twin = sock.dup()
        with self._lock:
            if not self._expired:
                self._watched.append(twin)
                return
        _cut(twin)
        twin.close()

    def trace(self, event: str, info: Mapping[str, Any]) -> None:
        """httpcore's ``trace`` request extension: watch each connection it opens."""
        if event != "connection.connect_tcp.complete":
            return
        stream = info.get("return_value")
        sock = stream.get_extra_info("socket") if stream is not None else None
        if isinstance(sock, socket.socket):
            self.watch(sock)

    def _expire(self) -> None:
        with self._lock:
            self._expired = True
            watched = list(self._watched)
        for twin in watched:
            _cut(twin)


def _cut(sock: socket.socket) -> None:
    # The peer may have closed it already: nothing is left to cut then.
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
