"""The memory backend passes the conformance suite, and a broken backend does not."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

import pytest

from chimeway_backends.memory import MemoryBackend
from chimeway_core import Enqueued, SQLStore
from chimeway_core.testing.conformance import BackendConformance, MemoryHarness


@pytest.fixture
def sqlite_ledger(tmp_path_factory: pytest.TempPathFactory) -> SQLStore:
    """A fresh SQLite ledger."""
    store = SQLStore(f"sqlite:///{tmp_path_factory.mktemp('conformance') / 'ledger.db'}")
    store.create_all()
    return store


class TestMemoryBackendConformance(BackendConformance):
    """chimeway's own in-memory backend."""

    @pytest.fixture
    def harness(self, sqlite_ledger: SQLStore) -> MemoryHarness:
        return MemoryHarness(sqlite_ledger)


class DropsDelayedJobs(MemoryBackend):
    """A broken backend: every job asked for a later time is silently dropped."""

    def _put(self, delivery_id: UUID, run_at: datetime, now: datetime, queue: str) -> Enqueued:
        if run_at > now:
            return Enqueued.SCHEDULED  # and a lie
        return super()._put(delivery_id, run_at, now, queue)


def test_a_backend_that_drops_delayed_jobs_fails_the_suite(sqlite_ledger: SQLStore) -> None:
    """The suite can fail: a backend losing delayed jobs is reported with what broke."""
    harness = MemoryHarness(sqlite_ledger, DropsDelayedJobs())
    with pytest.raises(pytest.fail.Exception, match="left deliveries live after draining"):
        TestMemoryBackendConformance().test_retry_with_backoff(harness)
