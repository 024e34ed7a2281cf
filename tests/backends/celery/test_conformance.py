"""The Celery backend passes the shared conformance suite on Redis and on RabbitMQ.

The worker is Celery's embedded one (``celery.contrib.testing``: a real
consumer on the real broker, solo pool, in a thread of the test process).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from uuid import UUID

import pytest

from chimeway_backends.celery import CeleryBackend
from chimeway_core.engine import Chimeway
from chimeway_core.store import SQLStore
from chimeway_core.testing.conformance import BackendConformance, conformance_engine
from tests.backends.celery.conftest import Broker, wait_until, worker_for


class CeleryHarness:
    """A CeleryBackend on the test's broker and queue, with an embedded worker running."""

    def __init__(self, engine: Chimeway) -> None:
        self.engine = engine

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


class TestCeleryConformance(BackendConformance):
    """Celery with an embedded solo worker, the ledger on PostgreSQL."""

    drain_timeout = 30.0

    @pytest.fixture
    def harness(self, broker: Broker, pg_store: SQLStore) -> Iterator[CeleryHarness]:
        """The conformance engine on a CeleryBackend, its worker started and stopped around."""
        app = broker.app()
        backend = CeleryBackend(app, queue=broker.queue, rescue_interval=None)
        engine = conformance_engine(pg_store, backend)
        backend.bind(engine)
        with worker_for(app, broker.queue):
            yield CeleryHarness(engine)


def test_wait_until_fails_on_timeout() -> None:
    """The bounded poll the Celery tests use fails the test instead of hanging."""
    with pytest.raises(pytest.fail.Exception, match=r"timed out after 0\.1 s waiting for nothing"):
        wait_until(lambda: False, timeout=0.1, what="nothing")
