"""The stateful model test of the whole engine on RQ: real Redis, in-process burst workers.

The kit's :class:`~chimeway_core.testing.stateful.RealTimeEngineMachine`
runs on :class:`~tests.backends.rq.harness.RQHarness`: every job travels
through a real RQ queue (Redis database :data:`STATEFUL_REDIS_DB`, a fresh
queue per example, purged after it) and is performed by an RQ
``SimpleWorker`` bursting in the test's process, so a crash in the worker is
an exception RQ itself catches and files as a failed job. The ledger is
PostgreSQL. Few examples: each costs real seconds.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager

import pytest
import redis
from hypothesis import HealthCheck, settings
from hypothesis.stateful import run_state_machine_as_test

from chimeway_core.store import SQLStore
from chimeway_core.testing.conformance import EngineFactory
from chimeway_core.testing.stateful import MachineHarness, RealTimeEngineMachine
from tests.backends._stateful import assert_broken_table_is_caught
from tests.backends.rq.conftest import redis_url
from tests.backends.rq.harness import machine_harness
from tests.services import require

pytestmark = pytest.mark.slow

#: The Redis database of these tests alone.
STATEFUL_REDIS_DB = 9

SETTINGS = settings(
    max_examples=20,
    stateful_step_count=15,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


@pytest.fixture
def stateful_redis() -> Iterator[redis.Redis]:
    """A client on :data:`STATEFUL_REDIS_DB` (skips, or fails in CI, if Redis is down)."""
    require("redis")
    connection = redis.Redis.from_url(redis_url(STATEFUL_REDIS_DB))
    yield connection
    connection.close()


def rq_machine(store: SQLStore, connection: redis.Redis) -> type[RealTimeEngineMachine]:
    """The real-time machine on RQ, its ledger on ``store``."""

    class RQEngineMachine(RealTimeEngineMachine):
        def open_harness(
            self, engine_factory: EngineFactory
        ) -> AbstractContextManager[MachineHarness]:
            return machine_harness(store, connection, engine_factory, prefix="chimeway-stateful")

    return RQEngineMachine


def test_engine_machine_on_rq(pg_store: SQLStore, stateful_redis: redis.Redis) -> None:
    """The engine's invariants hold with every job going through RQ (20 examples of 15 steps)."""
    run_state_machine_as_test(rq_machine(pg_store, stateful_redis), settings=SETTINGS)


def test_a_broken_table_is_caught_on_rq(
    pg_store: SQLStore, stateful_redis: redis.Redis, table_without_retry: None
) -> None:
    """With the temporary_retry row changed to ACK, the RQ machine reports a leaked delivery."""
    assert_broken_table_is_caught(rq_machine(pg_store, stateful_redis), database=None)
