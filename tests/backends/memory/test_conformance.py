"""The memory backend passes the conformance suite, and a broken backend does not."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from uuid import UUID

import pytest

from chimeway_backends.memory import MemoryBackend
from chimeway_core import Chimeway, SQLStore, VirtualClock
from chimeway_core.testing.conformance import BackendConformance, conformance_engine


class MemoryHarness:
    """The memory backend on a virtual clock: draining runs jobs in virtual time."""

    def __init__(self, store: SQLStore, backend: MemoryBackend | None = None) -> None:
        self.clock = VirtualClock()
        self.backend = backend or MemoryBackend(self.clock)
        self.backend.clock = self.clock
        self.engine: Chimeway = conformance_engine(store, self.backend, clock=self.clock)

    def drain(self, delivery_ids: Sequence[UUID], *, timeout: float) -> None:
        self.backend.run_until_idle(self.engine, max_jobs=10_000)

    def sleep(self, seconds: float) -> None:
        self.clock.advance(seconds)


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

    def _put(self, delivery_id: UUID, run_at: datetime, now: datetime) -> None:
        if run_at > now:
            return
        super()._put(delivery_id, run_at, now)


def test_a_backend_that_drops_delayed_jobs_fails_the_suite(sqlite_ledger: SQLStore) -> None:
    """The suite can fail: a backend losing delayed jobs is reported with what broke."""
    harness = MemoryHarness(sqlite_ledger, DropsDelayedJobs())
    with pytest.raises(pytest.fail.Exception, match="left deliveries live after draining"):
        TestMemoryBackendConformance().test_retry_with_backoff(harness)
