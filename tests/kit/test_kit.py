"""The testing kit itself: fake channel steps, assertion helpers, strategies, machine_on."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import run_state_machine_as_test
from sqlalchemy import create_engine
from sqlalchemy.pool import StaticPool

from chimeway_backends.memory import MemoryBackend
from chimeway_core import (
    Chimeway,
    DeliveryStatus,
    NewDelivery,
    Outcome,
    RetryPolicy,
    Sent,
    SQLStore,
    VirtualClock,
)
from chimeway_core.policies import Defer, Proceed, Suppress
from chimeway_core.testing import (
    FakeChannel,
    Hang,
    LoseResponse,
    assert_attempts,
    assert_delivery,
    assert_enqueued,
    assert_not_enqueued,
    strategies,
)
from chimeway_core.testing.conformance import EngineFactory, MemoryHarness
from chimeway_core.testing.stateful import MachineHarness, RealTimeEngineMachine, machine_on


def _engine(tmp_path_factory: pytest.TempPathFactory, channel: FakeChannel) -> Chimeway:
    store = SQLStore(f"sqlite:///{tmp_path_factory.mktemp('kit') / 'ledger.db'}")
    store.create_all()
    clock = channel.clock
    assert isinstance(clock, VirtualClock)
    retry = RetryPolicy(max_attempts=3, initial_delay=1, jitter=0)
    return Chimeway(store, MemoryBackend(clock), {"fake": channel}, clock=clock, retry=retry)


def test_hang_and_lost_response_are_unknown_outcomes(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """A hang past the timeout and a lost answer both record outcome unknown; retried, then sent."""
    clock = VirtualClock()
    channel = FakeChannel([Hang(30), LoseResponse(), Sent()], clock=clock)
    engine = _engine(tmp_path_factory, channel)
    delivery = engine.notify("fake", "user@example.test")
    assert_enqueued(engine, delivery.id)
    engine.backend.run_until_idle(engine, fail_fast=True)  # type: ignore[attr-defined]
    history = assert_delivery(engine, delivery.id, status=DeliveryStatus.SUCCEEDED, attempts=3)
    assert [Outcome.UNKNOWN, Outcome.UNKNOWN, Outcome.SUCCEEDED] == [
        a.outcome for a in history.attempts
    ]
    assert [2, 3] == [call.attempt for call in channel.accepted]
    assert history.attempts[0].finished_at == history.attempts[0].started_at + timedelta(seconds=30)
    assert_not_enqueued(engine, delivery.id)


def test_assertion_helpers_say_what_differs(tmp_path_factory: pytest.TempPathFactory) -> None:
    """A failed assertion names the expected and the actual value."""
    engine = _engine(tmp_path_factory, FakeChannel(clock=VirtualClock()))
    delivery = engine.notify("fake", "user@example.test")
    with pytest.raises(AssertionError, match="status 'ready' \\(expected 'succeeded'\\)"):
        assert_delivery(engine, delivery.id, status=DeliveryStatus.SUCCEEDED)
    with pytest.raises(AssertionError, match="0 attempts \\(expected 1\\)"):
        assert_attempts(engine, delivery.id, 1)
    with pytest.raises(AssertionError, match="expected no pending job"):
        assert_not_enqueued(engine, delivery.id)


@given(data=st.data())
def test_a_channel_can_draw_its_results(data: st.DataObject) -> None:
    """FakeChannel.drawing takes each result from a strategy; the delivery ends terminal."""
    clock = VirtualClock()
    channel = FakeChannel.drawing(lambda: data.draw(strategies.channel_results), clock=clock)
    store = SQLStore(create_engine("sqlite://", poolclass=StaticPool))
    store.create_all()
    engine = Chimeway(
        store,
        MemoryBackend(clock),
        {"fake": channel},
        clock=clock,
        retry=RetryPolicy(max_attempts=3, initial_delay=1, jitter=0),
    )
    delivery = engine.notify("fake", "user@example.test")
    engine.backend.run_until_idle(engine)  # type: ignore[attr-defined]
    assert engine.get(delivery.id).delivery.is_terminal
    store.engine.dispose()


@given(specs=st.lists(strategies.notification_specs, min_size=1, max_size=5))
def test_notification_specs_are_accepted_by_the_ledger(specs: list[NewDelivery]) -> None:
    """Every generated spec is valid input: the store creates it and reads it back."""
    from datetime import UTC, datetime

    store = SQLStore(create_engine("sqlite://", poolclass=StaticPool))
    store.create_all()
    created = store.create_many(specs, now=datetime(2030, 1, 1, tzinfo=UTC))
    for spec, result in zip(specs, created, strict=True):
        if result.created:  # a repeated idempotency key returns the first delivery
            assert spec.recipient == result.delivery.recipient
            assert spec.payload == result.delivery.payload
    store.engine.dispose()


@given(decision=strategies.policy_decisions())
def test_policy_decisions_are_decisions(decision: object) -> None:
    """policy_decisions yields only Proceed, Suppress or Defer."""
    assert isinstance(decision, Proceed | Suppress | Defer)


def test_machine_on_runs_the_real_time_machine_on_the_factorys_harness() -> None:
    """machine_on(factory): a RealTimeEngineMachine that opens and closes a harness per example."""
    opened: list[str] = []

    @contextmanager
    def factory(engine_factory: EngineFactory) -> Iterator[MachineHarness]:
        store = SQLStore(create_engine("sqlite://", poolclass=StaticPool))
        store.create_all()
        opened.append("open")
        try:
            yield MemoryHarness(store, engine_factory=engine_factory)
        finally:
            opened.append("close")
            store.engine.dispose()

    machine = machine_on(factory)
    assert issubclass(machine, RealTimeEngineMachine)
    run_state_machine_as_test(
        machine,
        settings=settings(max_examples=3, stateful_step_count=5, deadline=None, database=None),
    )
    assert opened
    assert ["open", "close"] * (len(opened) // 2) == opened


@pytest.mark.parametrize(
    ("timeout", "error"), [(0, ValueError), (-1.0, ValueError), ("5", TypeError)]
)
def test_fake_channel_refuses_a_timeout_no_channel_could_have(
    timeout: object, error: type[Exception]
) -> None:
    """A FakeChannel's timeout is checked like a real channel's (the lease is built on it)."""
    with pytest.raises(error, match="timeout"):
        FakeChannel(timeout=timeout)  # type: ignore[arg-type]
