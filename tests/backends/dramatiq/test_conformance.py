"""The Dramatiq backend passes the shared conformance suite on Redis and on RabbitMQ.

The worker is a real :class:`dramatiq.Worker` on the real broker, in
threads of the test process.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from chimeway_core.store import SQLStore
from chimeway_core.testing.conformance import BackendConformance
from tests.backends._workers import wait_until
from tests.backends.dramatiq.conftest import Broker
from tests.backends.dramatiq.harness import DramatiqHarness, dramatiq_harness


class TestDramatiqConformance(BackendConformance):
    """Dramatiq with an in-process worker, the ledger on PostgreSQL."""

    drain_timeout = 30.0

    @pytest.fixture
    def harness(self, broker: Broker, pg_store: SQLStore) -> Iterator[DramatiqHarness]:
        """The conformance engine on a DramatiqBackend, its worker started and stopped around."""
        with dramatiq_harness(broker, pg_store) as harness:
            yield harness


def test_wait_until_fails_on_timeout() -> None:
    """The bounded poll the Dramatiq tests use fails the test instead of hanging."""
    with pytest.raises(pytest.fail.Exception, match=r"timed out after 0\.1 s waiting for nothing"):
        wait_until(lambda: False, timeout=0.1, what="nothing")
