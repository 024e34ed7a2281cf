"""The RQ backend passes the conformance suite on PostgreSQL, with a real RQ worker."""

from __future__ import annotations

import pytest
import redis

from chimeway_core.store import SQLStore
from chimeway_core.testing.conformance import BackendConformance
from tests.backends.rq.harness import RQHarness


class TestRQBackendConformance(BackendConformance):
    """RQ on a real Redis, the ledger on PostgreSQL."""

    drain_timeout = 30.0

    @pytest.fixture
    def harness(self, pg_store: SQLStore, redis_conn: redis.Redis, queue_name: str) -> RQHarness:
        return RQHarness(pg_store, redis_conn, queue_name)
