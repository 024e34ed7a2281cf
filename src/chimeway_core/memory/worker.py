"""Threads that run an in-memory queue's jobs in real time: :class:`MemoryWorker`.

The demo and ``chimeway worker --backend memory`` run these; tests and
scripts call :meth:`MemoryBackend.run_until_idle` in their own thread
instead. See :mod:`chimeway_core.memory` for the theory of operation.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence

from chimeway_core._checks import seconds, whole
from chimeway_core.clock import Clock
from chimeway_core.jobs import Performer
from chimeway_core.memory.backend import MemoryBackend, _queue_name, _served

__all__ = ["MemoryWorker"]

_log = logging.getLogger(__name__)


class MemoryWorker:
    """Threads that run a :class:`MemoryBackend`'s jobs in real time.

    ``concurrency`` threads each take the earliest due job, call ``performer``
    and translate the result; idle, they sleep until an enqueue or
    ``poll_interval`` seconds. ``clock`` decides what is due (the backend's by
    default). ``tick``, when given, is called every ``tick_interval`` seconds
    on its own thread (the engine's rescuer runs there); an exception from it
    is logged and the ticks go on. ``queues``, when given, are the only
    queues it serves, the first that has a due job first (``None``: every
    queue, earliest job first); workers of different queues share a backend.
    Failures of ``perform`` are recorded on the backend, never raised from a
    worker thread.
    """

    def __init__(
        self,
        backend: MemoryBackend,
        performer: Performer,
        *,
        concurrency: int = 1,
        poll_interval: float = 0.05,
        clock: Clock | None = None,
        tick: Callable[[], object] | None = None,
        tick_interval: float = 30.0,
        queues: Sequence[str] | None = None,
    ) -> None:
        whole("concurrency", concurrency, minimum=1)
        _served(queues)
        seconds("poll_interval", poll_interval, positive=True)
        seconds("tick_interval", tick_interval, positive=True)
        self.backend = backend
        self.performer = performer
        self.concurrency = concurrency
        self.poll_interval = poll_interval
        self.clock: Clock = clock if clock is not None else backend.clock
        self.tick = tick
        self.tick_interval = tick_interval
        self.queues: tuple[str, ...] | None = (
            None if queues is None else tuple(_queue_name(queue) for queue in queues)
        )
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []

    @property
    def running(self) -> bool:
        """Whether threads were started and have not all stopped."""
        return any(thread.is_alive() for thread in self._threads)

    def start(self) -> None:
        """Start the worker threads (and the tick thread). Raises if already running."""
        if self.running:
            raise RuntimeError("this MemoryWorker is already running")
        self._stopping.clear()
        self._threads = [
            threading.Thread(target=self._work, name=f"chimeway-memory-worker-{n}", daemon=True)
            for n in range(self.concurrency)
        ]
        if self.tick is not None:
            self._threads.append(
                threading.Thread(target=self._tick, name="chimeway-memory-tick", daemon=True)
            )
        for thread in self._threads:
            thread.start()

    def stop(self, timeout: float | None = None) -> bool:
        """Take no new job, let running ones finish, join; ``True`` if all threads ended.

        ``timeout`` bounds the whole wait, in seconds (``None``: wait as long as
        the running jobs take).
        """
        self._stopping.set()
        self.backend._wake_all()
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self._threads:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            thread.join(remaining)
        return not self.running

    def run_forever(self) -> None:
        """Start, then block until :meth:`stop` is called or KeyboardInterrupt; stop gracefully."""
        self.start()
        try:
            while not self._stopping.wait(0.2):
                pass
        except KeyboardInterrupt:
            _log.info("interrupted: finishing running jobs")
        finally:
            self.stop()

    def __enter__(self) -> MemoryWorker:
        """Start the worker for a ``with`` block."""
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        """Stop the worker gracefully at the end of the ``with`` block."""
        self.stop()

    def _work(self) -> None:
        backend = self.backend
        while not self._stopping.is_set():
            delivery_id = backend._take_due(self.clock.now(), self.queues)
            if delivery_id is None:
                backend._wait_for_work(self.poll_interval)
                continue
            error = backend._run_one(delivery_id, self.performer)
            if error is not None:
                _log.warning(
                    "job for delivery %s failed: %s", delivery_id, type(error).__qualname__
                )

    def _tick(self) -> None:
        assert self.tick is not None
        while not self._stopping.wait(self.tick_interval):
            try:
                self.tick()
            except Exception:
                _log.exception("the worker's tick callback raised; ticking on")
