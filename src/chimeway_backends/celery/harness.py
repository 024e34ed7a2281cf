"""The Celery backend in chimeway's test suites: an embedded worker on a scratch queue.

:class:`CeleryHarness` is the conformance suite's and the stateful machine's
harness for Celery (:mod:`chimeway_core.testing.conformance`), and
:func:`open_harness` is what ``chimeway selftest --app`` opens on an
application's own broker: an app of its own (chimeway's backend is one per
app) with the broker settings of the application's, a queue of its own, and
Celery's embedded worker (``celery.contrib.testing``: a real consumer, solo
pool, in a thread) consuming it. The queue is deleted at the end.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from celery import Celery, bootsteps
from celery.contrib.testing.worker import start_worker

from chimeway_backends.celery.backend import CeleryBackend
from chimeway_core.backend import Backend
from chimeway_core.store import SQLStore
from chimeway_core.testing.conformance import EngineFactory, RealTimeHarness

__all__ = ["CeleryHarness", "WakeUp", "open_harness", "scratch_app", "worker_for"]


class CeleryHarness(RealTimeHarness):
    """An engine on a CeleryBackend whose embedded worker runs meanwhile."""


class WakeUp(bootsteps.StartStopStep):  # type: ignore[misc]  # celery is untyped
    """Wakes the embedded worker's event loop every 0.1 s.

    Without it, an embedded solo worker on RabbitMQ was seen to sleep up to
    the hub's 10 s poll ceiling before taking a retry and before shutting
    down: a test would spend its time waiting.
    """

    def start(self, c: Any) -> None:
        """Add the no-op timer."""
        c.timer.call_repeatedly(0.1, _noop)


def _noop() -> None:
    pass


def worker_for(app: Any, queue: str) -> Any:
    """An embedded solo worker consuming ``queue`` (a context manager), stopped at its end."""
    return start_worker(
        app,
        pool="solo",
        concurrency=1,
        perform_ping_check=False,
        loglevel="WARNING",
        queues=[queue],
        shutdown_timeout=30.0,
    )


def scratch_app(app: Any, queue: str) -> Any:
    """A new Celery app on ``app``'s broker (its ``broker_*`` settings), for ``queue``."""
    scratch = Celery(f"chimeway-selftest-{secrets.token_hex(4)}", set_as_current=False)
    scratch.conf.update(
        {key: value for key, value in app.conf.items() if key.startswith("broker_")},
        broker_connection_retry_on_startup=True,
        worker_prefetch_multiplier=1,
        worker_hijack_root_logger=False,
        worker_enable_remote_control=False,
        task_default_queue=queue,
    )
    scratch.steps["consumer"].add(WakeUp)
    return scratch


@contextmanager
def open_harness(
    backend: Backend,
    store: SQLStore,
    engine_factory: EngineFactory,
    queue: str,
    *,
    time_limit: float,
) -> Iterator[CeleryHarness]:
    """A :class:`CeleryHarness` on ``backend``'s broker and the scratch ``queue``.

    The worker never rescues on its own (the tests do). ``time_limit`` is
    not used: a Celery job's time limits are the app's, and the tests'
    channels are quick. The queue is deleted from the broker at the end.
    """
    del time_limit
    assert isinstance(backend, CeleryBackend)
    app = scratch_app(backend.app, queue)
    scratch = CeleryBackend(app, queue=queue, rescue_interval=None, error_retry_delay=1.0)
    engine = engine_factory(store, scratch)
    scratch.bind(engine)
    try:
        with worker_for(app, queue):
            yield CeleryHarness(engine)
    finally:
        with app.connection_for_write() as connection:
            channel = connection.default_channel
            channel.queue_delete(queue)
        app.close()
