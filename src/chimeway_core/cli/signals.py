"""SIGINT and SIGTERM as a stop request, and serving until one, for long-running commands."""

from __future__ import annotations

import contextlib
import signal
import socketserver
import threading
from collections.abc import Iterator
from types import FrameType

__all__ = ["serve_until", "stop_on_signals"]


@contextlib.contextmanager
def stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """Set ``stop`` on SIGINT or SIGTERM inside the block (main thread only).

    The previous handlers come back when the block ends.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handle(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def serve_until(server: socketserver.BaseServer, stop: threading.Event, *, name: str) -> None:
    """Serve ``server`` in a thread called ``name`` until ``stop`` is set, then shut it down.

    The socket is closed on the way out, whatever ends the wait.
    """
    thread = threading.Thread(target=server.serve_forever, name=name, daemon=True)
    thread.start()
    try:
        while not stop.wait(0.2):
            pass
    finally:
        server.shutdown()
        server.server_close()
