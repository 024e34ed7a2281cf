"""The stateful model test of the whole engine on Celery: a real broker, an embedded worker.

The kit's :class:`~chimeway_core.testing.stateful.RealTimeEngineMachine`
runs on :func:`~tests.backends.celery.harness.celery_harness`: every job
travels through a real broker (Redis database :data:`STATEFUL_REDIS_DB`, or
RabbitMQ; a fresh queue per example, removed after it) and is performed by
Celery's embedded solo worker in a thread of the test's process, concurrently
with the machine's steps. A crash inside that worker is Celery's own
interrupt, the soft time limit, raised in the channel call: the attempt is
left in flight for the rescuer and the job is retried by the backend. The
ledger is PostgreSQL. Few examples: each costs real seconds.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from functools import partial

import pytest
from celery.exceptions import SoftTimeLimitExceeded
from hypothesis import settings
from hypothesis.stateful import run_state_machine_as_test

from chimeway_core.store import SQLStore
from chimeway_core.testing.conformance import EngineFactory
from chimeway_core.testing.stateful import MachineHarness, RealTimeEngineMachine
from tests.backends._stateful import (
    SETTINGS,
    assert_broken_table_is_caught,
    broker_machine,
    scratch_harness,
)
from tests.backends.celery.conftest import cleanup_broker, make_broker
from tests.backends.celery.harness import celery_harness
from tests.services import require

pytestmark = pytest.mark.slow

#: The Redis database of these tests alone.
STATEFUL_REDIS_DB = 8


def celery_machine(broker_name: str, store: SQLStore) -> type[RealTimeEngineMachine]:
    """The real-time machine on Celery over ``broker_name``, its ledger on ``store``."""

    def open_harness(engine_factory: EngineFactory) -> AbstractContextManager[MachineHarness]:
        return scratch_harness(
            partial(make_broker, broker_name, redis_db=STATEFUL_REDIS_DB),
            cleanup_broker,
            partial(
                celery_harness, store=store, engine_factory=engine_factory, error_retry_delay=0.2
            ),
        )

    return broker_machine(open_harness, SoftTimeLimitExceeded)


def test_engine_machine_on_celery_redis(pg_store: SQLStore) -> None:
    """The engine's invariants hold with every job going through Celery on Redis (15 examples)."""
    require("redis")
    run_state_machine_as_test(celery_machine("redis", pg_store), settings=SETTINGS)


def test_engine_machine_on_celery_rabbitmq(pg_store: SQLStore) -> None:
    """The same on RabbitMQ, with fewer examples (10): the broker differs, not the rules."""
    require("rabbitmq")
    fewer = settings(SETTINGS, max_examples=10)
    run_state_machine_as_test(celery_machine("rabbitmq", pg_store), settings=fewer)


def test_a_broken_table_is_caught_on_celery(pg_store: SQLStore, table_without_retry: None) -> None:
    """With the temporary_retry row changed to ACK, the Celery machine reports a leaked delivery."""
    require("redis")
    assert_broken_table_is_caught(celery_machine("redis", pg_store))
