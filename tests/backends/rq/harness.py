"""The RQ harness of the conformance suite and the stateful machine: in-process burst workers.

The harness itself is shipped (:mod:`chimeway_backends.rq.harness`, what
``chimeway selftest --app`` opens); this is the tests' way to open one.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager

import redis

from chimeway_backends.rq.harness import DeafSimpleWorker, RQHarness, purge
from chimeway_core.store import SQLStore
from chimeway_core.testing.conformance import EngineFactory


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
