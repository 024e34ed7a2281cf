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

import re
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager

import pytest
from dramatiq.middleware import TimeLimitExceeded
from hypothesis import HealthCheck, Phase, settings
from hypothesis.stateful import run_state_machine_as_test

from chimeway_core.store import SQLStore
from chimeway_core.testing.conformance import EngineFactory
from chimeway_core.testing.stateful import MachineHarness, RealTimeEngineMachine
from tests.backends.dramatiq.conftest import cleanup_broker, make_broker
from tests.backends.dramatiq.harness import DramatiqHarness, dramatiq_harness

pytestmark = pytest.mark.slow

SETTINGS = settings(
    max_examples=15,
    stateful_step_count=15,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


@contextmanager
def broker_harness(
    broker_name: str, store: SQLStore, engine_factory: EngineFactory
) -> Iterator[DramatiqHarness]:
    """A Dramatiq harness on a queue of its own, every trace of which is removed at the end."""
    broker = make_broker(broker_name)
    try:
        with dramatiq_harness(
            broker, store, engine_factory=engine_factory, error_retry_delay=0.2
        ) as harness:
            yield harness
    finally:
        cleanup_broker(broker)


def dramatiq_machine(broker_name: str, store: SQLStore) -> type[RealTimeEngineMachine]:
    """The real-time machine on Dramatiq over ``broker_name``, its ledger on ``store``."""

    class DramatiqEngineMachine(RealTimeEngineMachine):
        worker_crash = TimeLimitExceeded

        def open_harness(
            self, engine_factory: EngineFactory
        ) -> AbstractContextManager[MachineHarness]:
            return broker_harness(broker_name, store, engine_factory)

    return DramatiqEngineMachine


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
    machine = dramatiq_machine("redis", pg_store)
    machine.drain_timeout = 2.0  # a leaked delivery never ends: do not wait long for it
    with pytest.raises(AssertionError, match="still live after draining") as caught:
        run_state_machine_as_test(
            machine,
            settings=settings(
                max_examples=30,
                stateful_step_count=6,
                deadline=None,
                phases=[Phase.generate],  # the first failure is enough; shrinking costs seconds
                # Random examples: the derandomized thirty were seen to end without a leak;
                # a temporary step (one in seven) among thirty examples is all but certain.
                derandomize=False,
            ),
        )
    notes = "\n".join(getattr(caught.value, "__notes__", []))
    assert re.search(r"state\.(first_)?notify\(", notes)
