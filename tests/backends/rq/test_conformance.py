"""The RQ backend passes the conformance suite on PostgreSQL, with a real RQ worker."""

from __future__ import annotations

import time
from collections.abc import Sequence
from uuid import UUID

import pytest
import redis
import rq

from chimeway_backends.rq import RQBackend, run_worker
from chimeway_core.engine import Chimeway
from chimeway_core.store import SQLStore
from chimeway_core.testing.conformance import BackendConformance, conformance_engine


class RQHarness:
    """An RQBackend on a test queue; draining runs burst SimpleWorkers (with the scheduler).

    Each burst enqueues the due scheduled jobs, runs the engine's rescuer, then
    every queued job; between bursts real time passes until the next retry is due.
    """

    def __init__(self, store: SQLStore, connection: redis.Redis, queue: str) -> None:
        # The scheduled channels time out at 0.5 s; a 5 s job timeout keeps a slow
        # database round trip on a busy machine from being cut off mid-job.
        self.backend = RQBackend(connection, queue, job_timeout=5)
        self.engine: Chimeway = conformance_engine(store, self.backend)

    def drain(self, delivery_ids: Sequence[UUID], *, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            run_worker(
                self.engine,
                burst=True,
                worker_class=rq.SimpleWorker,
                logging_level="WARNING",
            )
            done = all(self.engine.get(i).delivery.is_terminal for i in delivery_ids)
            if done or time.monotonic() > deadline:
                return
            time.sleep(0.25)

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


class TestRQBackendConformance(BackendConformance):
    """RQ on a real Redis, the ledger on PostgreSQL."""

    drain_timeout = 30.0

    @pytest.fixture
    def harness(self, pg_store: SQLStore, redis_conn: redis.Redis, queue_name: str) -> RQHarness:
        return RQHarness(pg_store, redis_conn, queue_name)
