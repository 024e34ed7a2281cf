"""The Celery harness of the conformance suite and the stateful machine: an embedded worker.

The harness itself is shipped (:mod:`chimeway_backends.celery.harness`, what
``chimeway selftest --app`` opens); this opens one on the tests' brokers.

The worker is Celery's embedded one (``celery.contrib.testing``: a real
consumer on the real broker, solo pool, in a thread of the test process),
performing with the very engine the harness built.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from chimeway_backends.celery import CeleryBackend
from chimeway_backends.celery.harness import CeleryHarness, worker_for
from chimeway_core.store import SQLStore
from chimeway_core.testing.conformance import EngineFactory, conformance_engine
from tests.backends.celery.conftest import Broker

__all__ = ["CeleryHarness", "celery_harness"]


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
