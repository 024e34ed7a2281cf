"""The Celery backend passes the shared conformance suite on Redis and on RabbitMQ.

The worker is Celery's embedded one (``celery.contrib.testing``: a real
consumer on the real broker, solo pool, in a thread of the test process).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from chimeway_core.store import SQLStore
from chimeway_core.testing.conformance import BackendConformance
from tests.backends.celery.conftest import Broker, wait_until
from tests.backends.celery.harness import CeleryHarness, celery_harness


class TestCeleryConformance(BackendConformance):
    """Celery with an embedded solo worker, the ledger on PostgreSQL."""

    drain_timeout = 30.0

    @pytest.fixture
    def harness(self, broker: Broker, pg_store: SQLStore) -> Iterator[CeleryHarness]:
        """The conformance engine on a CeleryBackend, its worker started and stopped around."""
        with celery_harness(broker, pg_store) as harness:
            yield harness


def test_wait_until_fails_on_timeout() -> None:
    """The bounded poll the Celery tests use fails the test instead of hanging."""
    with pytest.raises(pytest.fail.Exception, match=r"timed out after 0\.1 s waiting for nothing"):
        wait_until(lambda: False, timeout=0.1, what="nothing")
