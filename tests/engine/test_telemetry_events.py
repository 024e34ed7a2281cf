"""The engine's telemetry events say what the job left behind, not what it found."""

from __future__ import annotations

from collections.abc import Mapping

from chimeway_backends.memory import MemoryBackend
from chimeway_core import PermanentFailure, Sent, TemporaryFailure, VirtualClock
from chimeway_core.channels.base import DeliveryGuarantee
from chimeway_core.store import SQLStore
from chimeway_core.telemetry import MetaValue, Telemetry, TelemetryEvent
from chimeway_core.testing import FakeChannel
from tests.engine.conftest import MakeEngine

_ENDS = {TelemetryEvent.PERFORM_STOP, TelemetryEvent.PERFORM_EXCEPTION}
_FIELDS = ("status", "attempt", "outcome", "error_class", "action", "job_kind")


def _perform_ends(engine_telemetry: Telemetry) -> list[tuple[MetaValue, ...]]:
    ends: list[tuple[MetaValue, ...]] = []

    def record(event: TelemetryEvent, meta: Mapping[str, MetaValue]) -> None:
        if event in _ENDS:
            ends.append((event.value, *(meta.get(key) for key in _FIELDS)))

    engine_telemetry.subscribe(record)
    return ends


def test_perform_stop_carries_the_status_after_each_attempt(
    make_engine: MakeEngine, backend: MemoryBackend
) -> None:
    """A retried then sent delivery: perform.stop says failed, then succeeded — never ready."""
    telemetry = Telemetry()
    ends = _perform_ends(telemetry)
    engine = make_engine(
        {"sms": FakeChannel([TemporaryFailure("busy"), Sent()])}, telemetry=telemetry
    )
    engine.notify("sms", "+15550100")
    backend.run_until_idle(engine, fail_fast=True)
    stop = TelemetryEvent.PERFORM_STOP.value
    assert [
        (stop, "failed", 1, "failed", "temporary", "retry", "retry"),
        (stop, "succeeded", 2, "succeeded", None, "ack", "ack"),
    ] == ends


def test_perform_stop_carries_terminal_failure_and_exhaustion(
    make_engine: MakeEngine, backend: MemoryBackend
) -> None:
    """A permanent failure ends failed-terminal; an exhausted delivery ends cancelled."""
    telemetry = Telemetry()
    ends = _perform_ends(telemetry)
    engine = make_engine(
        {
            "permanent": FakeChannel([PermanentFailure("no")]),
            "busy": FakeChannel([TemporaryFailure("busy")]),
        },
        telemetry=telemetry,
    )
    engine.notify("permanent", "+15550100")
    backend.run_until_idle(engine, fail_fast=True)
    engine.notify("busy", "+15550101", max_attempts=1)
    backend.run_until_idle(engine, fail_fast=True)
    statuses = [(end[1], end[2]) for end in ends]
    assert 2 == len(ends)
    assert "ready" not in {status for status, _ in statuses}
    assert [1, 1] == [attempt for _, attempt in statuses]
    assert "cancelled" == statuses[1][0]


def test_perform_exception_carries_the_status_after_an_unhandled_outcome(
    make_engine: MakeEngine, backend: MemoryBackend
) -> None:
    """An undocumented shape raises; perform.exception still says the status it left."""
    telemetry = Telemetry()
    ends = _perform_ends(telemetry)
    engine = make_engine({"sms": FakeChannel([{"weird": "shape"}, Sent()])}, telemetry=telemetry)
    engine.notify("sms", "+15550100", max_attempts=3)
    backend.run_until_idle(engine)
    assert [
        (
            TelemetryEvent.PERFORM_EXCEPTION.value,
            "failed",
            1,
            "failed",
            "unknown_classification",
            "raise",
            None,
        ),
        (TelemetryEvent.PERFORM_STOP.value, "succeeded", 2, "succeeded", None, "ack", "ack"),
    ] == ends


def test_rescued_carries_the_status_after_the_lost_attempt_is_recorded(
    make_engine: MakeEngine, backend: MemoryBackend, store: SQLStore, clock: VirtualClock
) -> None:
    """An at-least-once attempt lost in flight: the rescue event says failed, outcome unknown."""
    telemetry = Telemetry()
    rescued: list[Mapping[str, MetaValue]] = []
    telemetry.subscribe(
        lambda event, meta: rescued.append(meta) if event is TelemetryEvent.RESCUED else None
    )
    channel = FakeChannel(guarantee=DeliveryGuarantee.AT_LEAST_ONCE)
    engine = make_engine({"sms": channel}, telemetry=telemetry)
    delivery = engine.notify("sms", "+15550100")
    claim = store.claim(delivery.id, owner="dead-worker", lease_seconds=60, now=clock.now())
    assert claim is not None  # ... and the worker dies here, mid-call.
    clock.advance(61)
    assert 1 == engine.rescue().resolved
    assert [("failed", 1, "unknown", "retry")] == [
        (meta["status"], meta["attempt"], meta["outcome"], meta["action"]) for meta in rescued
    ]
