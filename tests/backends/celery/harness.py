"""The Celery harness of the conformance suite and the stateful machine: an embedded worker.

The worker is Celery's embedded one (``celery.contrib.testing``: a real
consumer on the real broker, solo pool, in a thread of the test process),
performing with the very engine the harness built.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from uuid import UUID

from chimeway_backends.celery import CeleryBackend
from chimeway_core.engine import Chimeway
from chimeway_core.store import SQLStore
from chimeway_core.testing.conformance import EngineFactory, conformance_engine
from tests.backends.celery.conftest import Broker, worker_for


class CeleryHarness:
    """A CeleryBackend on the test's broker and queue, with an embedded worker running."""

    def __init__(self, engine: Chimeway) -> None:
        self.engine = engine

    def run_due(self) -> None:
        """The worker takes due jobs on its own: give it a moment."""
        time.sleep(0.1)

    def drain(self, delivery_ids: Sequence[UUID], *, timeout: float) -> None:
        """Wait until every given delivery is terminal (the suite reports what is not)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(self.engine.get(i).delivery.is_terminal for i in delivery_ids):
                return
            time.sleep(0.05)

    def sleep(self, seconds: float) -> None:
        """Really wait: the worker runs in real time."""
        time.sleep(seconds)


@contextmanager
def celery_harness(
    broker: Broker,
    store: SQLStore,
    *,
    engine_factory: EngineFactory = conformance_engine,
    error_retry_delay: float = 10.0,
) -> Iterator[CeleryHarness]:
    """An engine on a CeleryBackend over ``broker``, its embedded worker running meanwhile.

    The backend never rescues on its own (the test does); a job whose
    ``perform()`` raised runs again after ``error_retry_delay`` seconds.
    """
    app = broker.app()
    backend = CeleryBackend(
        app, queue=broker.queue, rescue_interval=None, error_retry_delay=error_retry_delay
    )
    engine = engine_factory(store, backend)
    backend.bind(engine)
    with worker_for(app, broker.queue):
        yield CeleryHarness(engine)
