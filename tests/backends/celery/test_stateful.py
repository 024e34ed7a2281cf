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

import re
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager

import pytest
from celery.exceptions import SoftTimeLimitExceeded
from hypothesis import HealthCheck, Phase, settings
from hypothesis.stateful import run_state_machine_as_test

from chimeway_core.store import SQLStore
from chimeway_core.testing.conformance import EngineFactory
from chimeway_core.testing.stateful import MachineHarness, RealTimeEngineMachine
from tests.backends.celery.conftest import cleanup_broker, make_broker
from tests.backends.celery.harness import CeleryHarness, celery_harness
from tests.services import require

pytestmark = pytest.mark.slow

#: The Redis database of these tests alone.
STATEFUL_REDIS_DB = 8

SETTINGS = settings(
    max_examples=15,
    stateful_step_count=15,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


@contextmanager
def broker_harness(
    broker_name: str, store: SQLStore, engine_factory: EngineFactory
) -> Iterator[CeleryHarness]:
    """A Celery harness on a queue of its own, every trace of which is removed at the end."""
    broker = make_broker(broker_name, redis_db=STATEFUL_REDIS_DB)
    try:
        with celery_harness(
            broker, store, engine_factory=engine_factory, error_retry_delay=0.2
        ) as harness:
            yield harness
    finally:
        cleanup_broker(broker)


def celery_machine(broker_name: str, store: SQLStore) -> type[RealTimeEngineMachine]:
    """The real-time machine on Celery over ``broker_name``, its ledger on ``store``."""

    class CeleryEngineMachine(RealTimeEngineMachine):
        worker_crash = SoftTimeLimitExceeded

        def open_harness(
            self, engine_factory: EngineFactory
        ) -> AbstractContextManager[MachineHarness]:
            return broker_harness(broker_name, store, engine_factory)

    return CeleryEngineMachine


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
    machine = celery_machine("redis", pg_store)
    machine.drain_timeout = 2.0  # a leaked delivery never ends: do not wait long for it
    with pytest.raises(AssertionError, match="still live after draining") as caught:
        run_state_machine_as_test(
            machine,
            settings=settings(
                max_examples=30,
                stateful_step_count=6,
                deadline=None,
                phases=[Phase.generate],  # the first failure is enough; shrinking costs seconds
                derandomize=True,  # the same few examples each run, so the same few seconds
            ),
        )
    notes = "\n".join(getattr(caught.value, "__notes__", []))
    assert re.search(r"state\.(first_)?notify\(", notes)
