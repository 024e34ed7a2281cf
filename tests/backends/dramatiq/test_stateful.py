"""The stateful model test of the whole engine on Dramatiq: a real broker, an in-process worker.

The kit's :class:`~chimeway_core.testing.stateful.RealTimeEngineMachine`
runs on :func:`~tests.backends.dramatiq.harness.dramatiq_harness`: every job
travels through a real broker (Redis database 2 under a namespace of its
own, or RabbitMQ; a fresh queue per example, removed after it) and is
performed by a :class:`dramatiq.Worker` in threads of the test's process,
concurrently with the machine's steps. A crash inside that worker is
Dramatiq's own interrupt, ``TimeLimitExceeded``, raised in the channel
call: the attempt is left in flight for the rescuer, the message fails and
Dramatiq's Retries middleware does not retry it. The ledger is PostgreSQL.
Few examples: each costs real seconds.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from functools import partial

import pytest
from dramatiq.middleware import TimeLimitExceeded
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
from tests.backends.dramatiq.conftest import cleanup_broker, make_broker
from tests.backends.dramatiq.harness import dramatiq_harness

pytestmark = pytest.mark.slow


def dramatiq_machine(broker_name: str, store: SQLStore) -> type[RealTimeEngineMachine]:
    """The real-time machine on Dramatiq over ``broker_name``, its ledger on ``store``."""

    def open_harness(engine_factory: EngineFactory) -> AbstractContextManager[MachineHarness]:
        return scratch_harness(
            partial(make_broker, broker_name),
            cleanup_broker,
            partial(
                dramatiq_harness, store=store, engine_factory=engine_factory, error_retry_delay=0.2
            ),
        )

    return broker_machine(open_harness, TimeLimitExceeded)


def test_engine_machine_on_dramatiq_redis(pg_store: SQLStore) -> None:
    """The engine's invariants hold with every job going through Dramatiq on Redis (15 examples)."""
    run_state_machine_as_test(dramatiq_machine("redis", pg_store), settings=SETTINGS)


def test_engine_machine_on_dramatiq_rabbitmq(pg_store: SQLStore) -> None:
    """The same on RabbitMQ, with fewer examples (10): the broker differs, not the rules."""
    fewer = settings(SETTINGS, max_examples=10)
    run_state_machine_as_test(dramatiq_machine("rabbitmq", pg_store), settings=fewer)


def test_a_broken_table_is_caught_on_dramatiq(
    pg_store: SQLStore, table_without_retry: None
) -> None:
    """With the temporary_retry row changed to ACK, the Dramatiq machine reports a leak."""
    # Random examples: the derandomized thirty were seen to end without a leak;
    # a temporary step (one in seven) among thirty examples is all but certain.
    assert_broken_table_is_caught(dramatiq_machine("redis", pg_store), derandomize=False)
