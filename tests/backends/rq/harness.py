"""The RQ harness of the conformance suite and the stateful machine: in-process burst workers."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from uuid import UUID

import redis

from chimeway_backends.rq import ChimewaySimpleWorker, RQBackend, run_worker
from chimeway_core.engine import Chimeway
from chimeway_core.store import SQLStore
from chimeway_core.testing.conformance import EngineFactory, conformance_engine
from tests.backends.rq.conftest import purge


class DeafSimpleWorker(ChimewaySimpleWorker):
    """A :class:`ChimewaySimpleWorker` that does not listen on RQ's command channel.

    The channel carries an operator's stop and kill requests and plays no part
    in running jobs; leaving it out saves the ~0.3 s every burst otherwise
    spends joining its listener thread, which many short bursts add up to.
    """

    def subscribe(self) -> None:
        """Listen to nothing."""


class RQHarness:
    """An RQBackend on a test queue; draining runs burst SimpleWorkers (with the scheduler).

    Each burst enqueues the due scheduled jobs, runs the engine's rescuer, then
    every queued job; between bursts real time passes until the next retry is due.
    The worker performs with the very engine ``engine_factory`` built.
    """

    def __init__(
        self,
        store: SQLStore,
        connection: redis.Redis,
        queue: str,
        *,
        engine_factory: EngineFactory = conformance_engine,
        job_timeout: int = 5,
        worker_class: type[ChimewaySimpleWorker] = ChimewaySimpleWorker,
    ) -> None:
        # The scheduled channels time out at 0.5 s; a 5 s job timeout keeps a slow
        # database round trip on a busy machine from being cut off mid-job.
        self.backend = RQBackend(connection, queue, job_timeout=job_timeout)
        self.engine: Chimeway = engine_factory(store, self.backend)
        self.worker_class = worker_class

    def run_due(self) -> None:
        """One burst: the scheduler moves due scheduled jobs, then every queued job runs."""
        run_worker(self.engine, burst=True, worker_class=self.worker_class, logging_level="WARNING")

    def drain(self, delivery_ids: Sequence[UUID], *, timeout: float) -> None:
        """Bursts, 0.25 s apart, until every given delivery is terminal or ``timeout`` passes."""
        deadline = time.monotonic() + timeout
        while True:
            self.run_due()
            done = all(self.engine.get(i).delivery.is_terminal for i in delivery_ids)
            if done or time.monotonic() > deadline:
                return
            time.sleep(0.25)

    def sleep(self, seconds: float) -> None:
        """Really wait."""
        time.sleep(seconds)


@contextmanager
def machine_harness(
    store: SQLStore, connection: redis.Redis, engine_factory: EngineFactory, *, prefix: str
) -> Iterator[RQHarness]:
    """An RQHarness for the kit's stateful machine, on a fresh queue purged at the end.

    The queue is named ``prefix`` plus a random suffix. RQ's job timeout (1 s)
    is within the machine's lease (0.5 s call + 0.5 s margin): a job cut short
    by it is one more worker death for the rescuer to resolve.
    """
    queue = f"{prefix}-{secrets.token_hex(6)}"
    try:
        yield RQHarness(
            store,
            connection,
            queue,
            engine_factory=engine_factory,
            job_timeout=1,
            worker_class=DeafSimpleWorker,
        )
    finally:
        purge(connection, queue)
