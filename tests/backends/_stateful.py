"""What the stateful machine's tests on real queues share (RQ, Celery, Dramatiq).

Each backend's ``test_stateful.py`` opens its harness; here are the
machine built on it (:func:`broker_machine`), a harness on a scratch broker
removed after each example (:func:`scratch_harness`), and the negative
control every backend runs (:func:`assert_broken_table_is_caught`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis.stateful import run_state_machine_as_test

from chimeway_core.testing.conformance import EngineFactory
from chimeway_core.testing.stateful import MachineHarness, RealTimeEngineMachine

B = TypeVar("B")

#: Few examples: each costs real seconds.
SETTINGS = settings(
    max_examples=15,
    stateful_step_count=15,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)

OpenHarness = Callable[[EngineFactory], AbstractContextManager[MachineHarness]]


def broker_machine(
    open_harness: OpenHarness, crash: type[BaseException] | None = None
) -> type[RealTimeEngineMachine]:
    """The real-time machine on the harnesses ``open_harness`` opens.

    ``crash`` is the exception the backend itself raises to cut a job off
    (its ``worker_crash``); ``None`` keeps the machine's default.
    """

    class BrokerEngineMachine(RealTimeEngineMachine):
        def open_harness(self, engine_factory: EngineFactory) -> AbstractContextManager[Any]:
            return open_harness(engine_factory)

    if crash is not None:
        BrokerEngineMachine.worker_crash = crash
    return BrokerEngineMachine


@contextmanager
def scratch_harness(
    make_broker: Callable[[], B],
    cleanup_broker: Callable[[B], None],
    harness: Callable[[B], AbstractContextManager[MachineHarness]],
) -> Iterator[MachineHarness]:
    """``harness(broker)`` on a broker of its own, every trace of which is removed at the end."""
    broker = make_broker()
    try:
        with harness(broker) as opened:
            yield opened
    finally:
        cleanup_broker(broker)


def assert_broken_table_is_caught(
    machine: type[RealTimeEngineMachine], *, derandomize: bool = True, **more: Any
) -> None:
    """With the temporary_retry row changed to ACK, ``machine`` reports a leaked delivery.

    ``derandomize``: the same few examples each run, so the same few
    seconds; ``more``: further hypothesis settings.
    """
    machine.drain_timeout = 2.0  # a leaked delivery never ends: do not wait long for it
    with pytest.raises(AssertionError, match="still live after draining") as caught:
        run_state_machine_as_test(
            machine,
            settings=settings(
                max_examples=30,
                stateful_step_count=6,
                deadline=None,
                phases=[Phase.generate],  # the first failure is enough; shrinking costs seconds
                derandomize=derandomize,
                **more,
            ),
        )
    notes = "\n".join(getattr(caught.value, "__notes__", []))
    assert re.search(r"state\.(first_)?notify\(", notes)
