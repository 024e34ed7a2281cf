"""The testing kit itself: fake channel steps, assertion helpers, strategies, machine_on."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta, timezone
from uuid import UUID, uuid4

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
    PermanentFailure,
    RetryPolicy,
    Sent,
    SQLStore,
    TemporaryFailure,
    VirtualClock,
)
from chimeway_core.errors import DeliveryNotFoundError, OutcomeUnknownError
from chimeway_core.policies import Defer, Proceed, Suppress
from chimeway_core.testing import (
    FakeChannel,
    Hang,
    LoseResponse,
    ScriptedChannel,
    assert_attempts,
    assert_delivery,
    assert_enqueued,
    assert_not_enqueued,
    make_delivery,
    script_for,
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


@given(
    specs=st.lists(
        strategies.notification_specs,
        min_size=1,
        max_size=5,
        # One key for two different requests is refused, by design.
        unique_by=lambda spec: spec.idempotency_key or id(spec),
    )
)
def test_notification_specs_are_accepted_by_the_ledger(specs: list[NewDelivery]) -> None:
    """Every generated spec is valid input: the store creates it and reads it back."""
    from datetime import UTC, datetime

    store = SQLStore(create_engine("sqlite://", poolclass=StaticPool))
    store.create_all()
    created = store.create_many(specs, now=datetime(2030, 1, 1, tzinfo=UTC))
    for spec, result in zip(specs, created, strict=True):
        assert result.created
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


def _not_a_script() -> list[object]:
    return [Sent(), (step for step in [Sent()]), {"step": Sent()}, "sent", b"sent", 42, None]


@pytest.mark.parametrize(
    "script",
    [*_not_a_script(), Sent, RuntimeError],
    ids=["step", "generator", "dict", "str", "bytes", "int", "none", "class", "exception-class"],
)
def test_fake_channel_refuses_a_script_that_is_not_steps_or_a_function(script: object) -> None:
    """A single step, a string, a generator, a mapping or a class is a TypeError at construction."""
    with pytest.raises(TypeError, match="script must be a sequence of steps"):
        FakeChannel(script)  # type: ignore[arg-type]


@pytest.mark.parametrize("script", [[], ()], ids=["list", "tuple"])
def test_fake_channel_refuses_an_empty_script(script: Sequence[object]) -> None:
    """An empty script has no step to give: a ValueError, as it always was."""
    with pytest.raises(ValueError, match="at least one step"):
        FakeChannel(script)


@pytest.mark.parametrize(
    ("script", "error"),
    [*((bad, TypeError) for bad in _not_a_script()), ([], ValueError), (Sent, TypeError)],
    ids=["step", "generator", "dict", "str", "bytes", "int", "none", "empty", "class"],
)
def test_assigning_a_bad_script_is_refused_and_keeps_the_old_one(
    script: object, error: type[Exception]
) -> None:
    """`channel.script = ...` (as the plugin's docs say) is checked like the constructor."""
    channel = FakeChannel([TemporaryFailure("busy")])
    with pytest.raises(error, match="script"):
        channel.script = script  # type: ignore[assignment]
    assert (TemporaryFailure("busy"),) == channel.script


def test_a_script_is_copied_when_given() -> None:
    """The channel keeps a tuple of the steps: changing the list afterwards changes nothing."""
    steps: list[object] = [TemporaryFailure("busy"), Sent()]
    channel = FakeChannel(steps)
    steps.clear()
    assert (TemporaryFailure("busy"), Sent()) == channel.script
    channel.script = [Sent()]
    assert (Sent(),) == channel.script


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("guarantee", "at_least_once"),
        ("exception_class", "bogus"),
        ("clock", 42),
        ("on_call", 42),
    ],
)
def test_fake_channel_refuses_options_of_the_wrong_kind(option: str, value: object) -> None:
    """guarantee, exception_class, clock and on_call are checked at construction, by name."""
    with pytest.raises(TypeError, match=option):
        FakeChannel(**{option: value})  # type: ignore[arg-type]


def test_drawing_refuses_a_draw_that_is_not_callable() -> None:
    """FakeChannel.drawing(42) is a TypeError now, not on every send."""
    with pytest.raises(TypeError, match="draw must be callable"):
        FakeChannel.drawing(42)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("seconds", "error"),
    [
        (-1, ValueError),
        (float("nan"), ValueError),
        (float("inf"), ValueError),
        ("5", TypeError),
        (True, TypeError),
        (None, TypeError),
    ],
)
def test_hang_refuses_a_time_no_call_could_take(seconds: object, error: type[Exception]) -> None:
    """Hang's seconds is a finite number >= 0, checked when the step is built."""
    with pytest.raises(error, match="seconds"):
        Hang(seconds)  # type: ignore[arg-type]


def test_a_hang_of_no_time_is_an_unknown_outcome() -> None:
    """Hang(0) is allowed: the answer is lost at once."""
    clock = VirtualClock()
    channel = FakeChannel([Hang(0)], clock=clock)
    with pytest.raises(OutcomeUnknownError):
        channel.send(make_delivery(attempt_count=1), "key-1")
    assert VirtualClock().now() == clock.now()


@pytest.mark.parametrize(
    ("step", "problem"),
    [
        ("temporary@abc", "retry-after hint must be a finite number"),
        ("temporary@nan", "retry-after hint must be a finite number"),
        ("temporary@inf", "retry-after hint must be a finite number"),
        ("temporary@-1", "retry-after hint must be a finite number"),
        ("temporary@", "retry-after hint must be a finite number"),
        ("sent@3", "only \\['temporary'\\] take a retry-after hint"),
        ("permanent@1", "only \\['temporary'\\] take a retry-after hint"),
        ("temporary@1/permanent", "holds '/'"),
        ("sent#tag", "holds '#'"),
        ("nope", "unknown script step"),
    ],
)
def test_script_for_refuses_a_malformed_step_naming_it(step: str, problem: str) -> None:
    """Every step is parsed up front; the ValueError names the step and what is wrong."""
    with pytest.raises(ValueError, match=problem) as raised:
        script_for("sent", step)
    assert repr(step) in str(raised.value)


@pytest.mark.parametrize(
    ("steps", "tag"), [((["sent"],), ""), ((1,), ""), (("sent",), 7)], ids=["list", "int", "tag"]
)
def test_script_for_refuses_steps_and_tags_that_are_not_strings(
    steps: tuple[object, ...], tag: object
) -> None:
    """script_for(["sent"]) is a TypeError, not an AttributeError."""
    with pytest.raises(TypeError, match="must be a str"):
        script_for(*steps, tag=tag)  # type: ignore[arg-type]


def test_a_scripted_hint_reaches_the_result() -> None:
    """A valid hint becomes the TemporaryFailure's retry_after."""
    channel = ScriptedChannel()
    recipient = script_for("temporary@2.5", "sent")
    result = channel.send(make_delivery(recipient=recipient, attempt_count=1), "key-1")
    assert TemporaryFailure("scripted", 2.5) == result


def test_a_hand_written_malformed_script_is_a_permanent_failure() -> None:
    """A recipient script:... that script_for would refuse fails for good, saying why."""
    channel = ScriptedChannel()
    delivery = make_delivery(recipient="script:temporary@abc#", attempt_count=1)
    result = channel.send(delivery, "key-1")
    assert isinstance(result, PermanentFailure)
    assert "'temporary@abc'" in result.message


def _one_delivery(tmp_path_factory: pytest.TempPathFactory) -> tuple[Chimeway, UUID]:
    engine = _engine(tmp_path_factory, FakeChannel(clock=VirtualClock()))
    delivery = engine.notify("fake", "user@example.test")
    engine.backend.run_until_idle(engine)  # type: ignore[attr-defined]
    return engine, delivery.id


@pytest.mark.parametrize("helper", [assert_enqueued, assert_not_enqueued])
def test_enqueue_assertions_refuse_an_id_that_is_not_a_uuid(
    tmp_path_factory: pytest.TempPathFactory, helper: Callable[[Chimeway, UUID], None]
) -> None:
    """A str or None id is a TypeError, never a passing assertion."""
    engine, delivery_id = _one_delivery(tmp_path_factory)
    for bad in (str(delivery_id), None):
        with pytest.raises(TypeError, match=r"delivery_id must be a uuid\.UUID"):
            helper(engine, bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("helper", [assert_enqueued, assert_not_enqueued])
def test_enqueue_assertions_refuse_an_unknown_id(
    tmp_path_factory: pytest.TempPathFactory, helper: Callable[[Chimeway, UUID], None]
) -> None:
    """An id the ledger does not hold is DeliveryNotFoundError, as assert_delivery raises."""
    engine, _ = _one_delivery(tmp_path_factory)
    with pytest.raises(DeliveryNotFoundError):
        helper(engine, uuid4())


@pytest.mark.parametrize("status", ["succeeded", None, Outcome.SUCCEEDED])
def test_assert_delivery_refuses_a_status_that_is_not_the_enum(
    tmp_path_factory: pytest.TempPathFactory, status: object
) -> None:
    """status="succeeded" is a TypeError naming status, even when it would match."""
    engine, delivery_id = _one_delivery(tmp_path_factory)
    with pytest.raises(TypeError, match="status must be a DeliveryStatus"):
        assert_delivery(engine, delivery_id, status=status)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("count", "error"), [(True, TypeError), (1.0, TypeError), ("1", TypeError), (-1, ValueError)]
)
def test_expected_attempt_counts_are_checked(
    tmp_path_factory: pytest.TempPathFactory, count: object, error: type[Exception]
) -> None:
    """attempts= and expected are whole numbers >= 0: True and 1.0 no longer match 1 attempt."""
    engine, delivery_id = _one_delivery(tmp_path_factory)
    with pytest.raises(error, match="attempts"):
        assert_delivery(
            engine,
            delivery_id,
            status=DeliveryStatus.SUCCEEDED,
            attempts=count,  # type: ignore[arg-type]
        )
    with pytest.raises(error, match="expected"):
        assert_attempts(engine, delivery_id, count)  # type: ignore[arg-type]


def test_valid_assertions_still_pass(tmp_path_factory: pytest.TempPathFactory) -> None:
    """A sent delivery: one attempt, no pending job."""
    engine, delivery_id = _one_delivery(tmp_path_factory)
    assert_delivery(engine, delivery_id, status=DeliveryStatus.SUCCEEDED, attempts=1)
    assert_attempts(engine, delivery_id, 1)
    assert_not_enqueued(engine, delivery_id)


@pytest.mark.parametrize(
    ("changes", "error", "name"),
    [
        ({"status": "ready"}, TypeError, "status"),
        ({"attempt_count": -1}, ValueError, "attempt_count"),
        ({"attempt_count": 1.0}, TypeError, "attempt_count"),
        ({"max_attempts": 0}, ValueError, "max_attempts"),
        ({"deferral_count": -1}, ValueError, "deferral_count"),
        ({"expires_at": datetime(2030, 1, 2)}, ValueError, "expires_at"),
        ({"scheduled_at": "2030-01-01"}, TypeError, "scheduled_at"),
        ({"created_at": None}, TypeError, "created_at"),
    ],
)
def test_make_delivery_refuses_fields_that_would_break_later(
    changes: dict[str, object], error: type[Exception], name: str
) -> None:
    """A wrong status, count or time is named when the snapshot is built."""
    with pytest.raises(error, match=name):
        make_delivery(**changes)


def test_make_delivery_keeps_valid_overrides() -> None:
    """Valid overrides are kept; times come back in UTC; an optional time may be None."""
    later = datetime(2030, 1, 2, 1, tzinfo=timezone(timedelta(hours=1)))
    delivery = make_delivery(status=DeliveryStatus.FAILED, attempt_count=2, expires_at=later)
    assert (DeliveryStatus.FAILED, 2) == (delivery.status, delivery.attempt_count)
    assert datetime(2030, 1, 2, tzinfo=UTC) == delivery.expires_at
    assert UTC == delivery.expires_at.tzinfo
    assert make_delivery(expires_at=None).expires_at is None


@pytest.mark.parametrize("now", [datetime(2030, 1, 1), "2030-01-01"], ids=["naive", "str"])
def test_policy_decisions_refuses_a_now_that_is_not_aware(now: object) -> None:
    """policy_decisions(now) checks now at the call, not when a Defer is drawn."""
    with pytest.raises((TypeError, ValueError), match="now"):
        strategies.policy_decisions(now)  # type: ignore[arg-type]


def test_machine_on_refuses_a_factory_that_is_not_callable() -> None:
    """machine_on(42) is a TypeError at once, not a failure inside hypothesis."""
    with pytest.raises(TypeError, match="factory must be callable"):
        machine_on(42)  # type: ignore[arg-type]
