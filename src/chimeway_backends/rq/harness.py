"""The RQ backend in chimeway's test suites: burst workers on a scratch queue.

:class:`RQHarness` is the conformance suite's and the stateful machine's
harness for RQ (:mod:`chimeway_core.testing.conformance`), and
:func:`open_harness` is what ``chimeway selftest --app`` opens on an
application's own Redis: a queue of its own, every key of which
:func:`purge` deletes at the end.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Final
from uuid import UUID

import redis

from chimeway_backends.rq.backend import RQBackend
from chimeway_backends.rq.worker import ChimewaySimpleWorker, run_worker
from chimeway_core.backend import Backend
from chimeway_core.engine import Chimeway
from chimeway_core.store import SQLStore
from chimeway_core.testing.conformance import EngineFactory, conformance_engine

__all__ = ["DeafSimpleWorker", "RQHarness", "open_harness", "purge"]

_UUID: Final = re.compile(rb"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


class DeafSimpleWorker(ChimewaySimpleWorker):
    """A :class:`ChimewaySimpleWorker` that does not listen on RQ's command channel.

    The channel carries an operator's stop and kill requests and plays no part
    in running jobs; leaving it out saves the ~0.3 s every burst otherwise
    spends joining its listener thread, which many short bursts add up to.
    """

    def subscribe(self) -> None:
        """Listen to nothing."""


class RQHarness:
    """An RQBackend on a queue; draining runs burst SimpleWorkers (with the scheduler).

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


def purge(conn: redis.Redis, queue: str) -> None:
    """Delete every key of ``queue``: its registries and its jobs' hashes, results, executions."""
    job_keys = list(conn.scan_iter(match="rq:job:*", count=1000))
    with conn.pipeline(transaction=False) as pipe:
        for key in job_keys:
            pipe.hget(key, "origin")
        # A job key that is not a hash (a poisoned one) has an error for an origin.
        origins = pipe.execute(raise_on_error=False)
    ours = {
        found.group()
        for key, origin in zip(job_keys, origins, strict=True)
        if origin == queue.encode() and (found := _UUID.search(key)) is not None
    }
    doomed = [
        key
        for key in conn.scan_iter(count=1000)
        if queue.encode() in key or ((found := _UUID.search(key)) and found.group() in ours)
    ]
    if doomed:
        conn.delete(*doomed)
    conn.srem("rq:queues", f"rq:queue:{queue}")


@contextmanager
def open_harness(
    backend: Backend,
    store: SQLStore,
    engine_factory: EngineFactory,
    queue: str,
    *,
    time_limit: float,
) -> Iterator[RQHarness]:
    """An :class:`RQHarness` on ``backend``'s Redis and the scratch ``queue``, purged at the end.

    ``time_limit`` (seconds, rounded up) is the job timeout: the tests'
    channels are quick, and a job RQ cuts short is one more worker death
    for the rescuer.
    """
    assert isinstance(backend, RQBackend)
    harness = RQHarness(
        store,
        backend.connection,
        queue,
        engine_factory=engine_factory,
        job_timeout=max(1, math.ceil(time_limit)),
        worker_class=DeafSimpleWorker,
    )
    try:
        yield harness
    finally:
        purge(backend.connection, queue)
