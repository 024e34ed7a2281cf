"""A machine harness factory for ``chimeway selftest --machine-harness``: RQ on real Redis.

``tests.cli.selftest_machine_rq:machine_harness`` is what a user's own
factory looks like: it takes the machine's engine factory and opens an
:class:`~tests.backends.rq.harness.RQHarness` (an in-process burst
``SimpleWorker``) on Redis database :data:`REDIS_DB` and a queue of its own,
purged when the example ends. The ledger is the PostgreSQL database whose URL
:data:`LEDGER_VARIABLE` holds (the test creates it empty; the tables are
created on first use). The selftest's pytest process imports this module.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final

import redis

from chimeway_core.store import SQLStore
from chimeway_core.testing.conformance import EngineFactory
from chimeway_core.testing.stateful import MachineHarness
from tests.backends.rq.conftest import redis_url
from tests.backends.rq.harness import machine_harness as rq_machine_harness

#: The Redis database of this test alone (8 to 15 belong to other suites).
REDIS_DB: Final = 7
#: The environment variable holding the ledger's URL.
LEDGER_VARIABLE: Final = "SELFTEST_MACHINE_LEDGER_URL"


@functools.cache
def _store() -> SQLStore:
    """The ledger, with chimeway's tables, shared by every example of the run."""
    store = SQLStore(os.environ[LEDGER_VARIABLE])
    store.create_all()
    return store


@contextmanager
def machine_harness(engine_factory: EngineFactory) -> Iterator[MachineHarness]:
    """An RQHarness on a fresh queue whose every key is deleted at the end."""
    connection = redis.Redis.from_url(redis_url(REDIS_DB))
    try:
        with rq_machine_harness(
            _store(), connection, engine_factory, prefix="chimeway-selftest"
        ) as harness:
            yield harness
    finally:
        connection.close()
