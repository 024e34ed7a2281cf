"""Telemetry: the safe-metadata allowlist, subscribers, spans and the bridges."""

from __future__ import annotations

import logging
import sys
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime

import pytest

from chimeway_core.errors import MissingExtraError
from chimeway_core.outcomes import ErrorClass, Outcome
from chimeway_core.states import DeliveryStatus
from chimeway_core.telemetry import (
    SAFE_KEYS,
    LoggingSubscriber,
    MetaValue,
    OpenTelemetrySubscriber,
    Telemetry,
    TelemetryEvent,
    safe_meta,
)

Recorded = list[tuple[TelemetryEvent, Mapping[str, MetaValue]]]


def recorder(telemetry: Telemetry) -> Recorded:
    """Subscribe a handler that records every event; return its list."""
    events: Recorded = []
    telemetry.subscribe(lambda event, meta: events.append((event, meta)))
    return events


class FakeClock:
    """A monotonic clock that advances by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        """The current reading."""
        return self.now


def test_safe_meta_drops_unknown_keys() -> None:
    """Payload, recipient, provider response and secrets are dropped; known keys stay."""
    meta = {
        "delivery_id": "d-1",
        "attempt": 2,
        "payload": {"card": "4111"},
        "recipient": "a@b.test",
        "provider_response": {"body": "x"},
        "api_key": "sk-live",
        "password": "hunter2",
    }
    assert {"delivery_id": "d-1", "attempt": 2} == safe_meta(meta)


def test_safe_meta_coerces_values_to_scalars() -> None:
    """Enums, UUIDs, datetimes, booleans and objects become str/int/float/None."""
    delivery_id = uuid.UUID(int=7)
    meta = {
        "delivery_id": delivery_id,
        "outcome": Outcome.FAILED,
        "error_class": ErrorClass.TEMPORARY,
        "status": DeliveryStatus.FAILED,
        "duration": 0.25,
        "attempt": True,
        "reason": datetime(2026, 1, 1, tzinfo=UTC),
        "row": ("a", 1),
        "worker": None,
        "action": "x" * 500,
    }
    expected = {
        "delivery_id": str(delivery_id),
        "outcome": "failed",
        "error_class": "temporary",
        "status": "failed",
        "duration": 0.25,
        "attempt": 1,
        "reason": "2026-01-01T00:00:00+00:00",
        "row": "('a', 1)",
        "worker": None,
        "action": "x" * 200,
    }
    assert expected == safe_meta(meta)


def test_documented_keys_are_allowed() -> None:
    """The allowlist holds exactly the keys docs/telemetry.md lists."""
    documented = {
        "delivery_id",
        "channel",
        "notification_key",
        "attempt",
        "max_attempts",
        "outcome",
        "error_class",
        "status",
        "from_status",
        "to_status",
        "reason",
        "action",
        "row",
        "duration",
        "job_kind",
        "worker",
        "event",
        "exception_type",
        "copy_id",
        "count",
        "trace_context",
        "age",
        "attempt_count",
        "call_duration",
    }
    assert documented == set(SAFE_KEYS)


def test_emit_delivers_safe_meta_with_the_event_name() -> None:
    """A handler receives the event and only safe metadata, named with the event."""
    telemetry = Telemetry()
    events = recorder(telemetry)
    telemetry.emit(TelemetryEvent.SUPPRESSED, {"reason": "opted_out", "recipient": "a@b.test"})
    expected = [
        (
            TelemetryEvent.SUPPRESSED,
            {"reason": "opted_out", "event": "chimeway.delivery.suppressed"},
        )
    ]
    assert expected == [(event, dict(meta)) for event, meta in events]


def test_raising_handler_is_isolated_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    """A handler that raises is logged; later handlers still run and emit does not raise."""
    telemetry = Telemetry()

    def broken(event: TelemetryEvent, meta: Mapping[str, MetaValue]) -> None:
        raise RuntimeError("handler bug")

    telemetry.subscribe(broken)
    events = recorder(telemetry)
    with caplog.at_level(logging.WARNING, logger="chimeway.telemetry"):
        telemetry.emit(TelemetryEvent.EXHAUSTED, {"delivery_id": "d"})
    assert [TelemetryEvent.EXHAUSTED] == [event for event, _ in events]
    (record,) = caplog.records
    assert ("chimeway.telemetry", RuntimeError) == (record.name, record.exc_info[0])  # type: ignore[index]


def test_handlers_cannot_alter_each_others_meta() -> None:
    """Each handler gets a read-only view of the metadata."""
    telemetry = Telemetry()

    def mutate(event: TelemetryEvent, meta: Mapping[str, MetaValue]) -> None:
        meta["attempt"] = 99  # type: ignore[index]

    telemetry.subscribe(mutate)
    events = recorder(telemetry)
    telemetry.emit(TelemetryEvent.ATTEMPT_RECORDED, {"attempt": 1})
    assert 1 == events[0][1]["attempt"]


def test_unsubscribe_stops_delivery_and_is_idempotent() -> None:
    """After unsubscribing, a handler gets nothing; unsubscribing twice is harmless."""
    telemetry = Telemetry()
    events: Recorded = []
    unsubscribe = telemetry.subscribe(lambda e, m: events.append((e, m)))
    telemetry.emit(TelemetryEvent.DEFERRED)
    unsubscribe()
    unsubscribe()
    telemetry.emit(TelemetryEvent.DEFERRED)
    assert (1, ()) == (len(events), telemetry.handlers)


def test_unsubscribe_removes_only_its_own_subscription() -> None:
    """The same handler subscribed twice is removed once per unsubscribe call."""
    telemetry = Telemetry()
    events: Recorded = []

    def handler(event: TelemetryEvent, meta: Mapping[str, MetaValue]) -> None:
        events.append((event, meta))

    first = telemetry.subscribe(handler)
    telemetry.subscribe(handler)
    first()
    telemetry.emit(TelemetryEvent.RESCUED)
    assert 1 == len(events)


def test_span_emits_start_and_stop_with_duration() -> None:
    """A span emits start, then stop with its duration and what the block added."""
    clock = FakeClock()
    telemetry = Telemetry(clock=clock)
    events = recorder(telemetry)
    with telemetry.span("perform", {"delivery_id": "d-1", "payload": "x"}) as meta:
        clock.now += 1.5
        meta["outcome"] = Outcome.SUCCEEDED
    expected = [
        (TelemetryEvent.PERFORM_START, {"delivery_id": "d-1", "event": "chimeway.perform.start"}),
        (
            TelemetryEvent.PERFORM_STOP,
            {
                "delivery_id": "d-1",
                "outcome": "succeeded",
                "duration": 1.5,
                "event": "chimeway.perform.stop",
            },
        ),
    ]
    assert expected == [(event, dict(meta)) for event, meta in events]


def test_span_emits_exception_and_reraises() -> None:
    """A failing block emits the exception event with its type (not message) and re-raises."""
    clock = FakeClock()
    telemetry = Telemetry(clock=clock)
    events = recorder(telemetry)

    def work() -> None:
        with telemetry.span("perform", {"delivery_id": "d-1"}):
            clock.now += 0.25
            raise KeyError("secret@example.com")

    with pytest.raises(KeyError):
        work()
    event, meta = events[-1]
    expected = {
        "delivery_id": "d-1",
        "duration": 0.25,
        "exception_type": "KeyError",
        "event": "chimeway.perform.exception",
    }
    assert (TelemetryEvent.PERFORM_EXCEPTION, expected) == (event, dict(meta))


def test_unknown_span_is_refused() -> None:
    """Only documented spans exist."""
    with pytest.raises(ValueError, match="unknown telemetry span"), Telemetry().span("nope"):
        pass


def test_logging_subscriber_writes_structured_records(caplog: pytest.LogCaptureFixture) -> None:
    """Each event is one record with the metadata in extra; unhandled outcomes are errors."""
    telemetry = Telemetry()
    telemetry.subscribe(LoggingSubscriber())
    with caplog.at_level(logging.DEBUG, logger="chimeway.events"):
        telemetry.emit(
            TelemetryEvent.STATUS_TRANSITION, {"from_status": "ready", "to_status": "failed"}
        )
        telemetry.emit(TelemetryEvent.UNHANDLED_OUTCOME, {"delivery_id": "d"})
    first, second = caplog.records
    assert (
        logging.INFO,
        "chimeway.status.transition from_status=ready to_status=failed",
        {"from_status": "ready", "to_status": "failed", "event": "chimeway.status.transition"},
        "chimeway.status.transition",
        logging.ERROR,
    ) == (
        first.levelno,
        first.getMessage(),
        first.__dict__["chimeway"],
        first.__dict__["chimeway_event"],
        second.levelno,
    )


def test_event_names_are_unique_and_namespaced() -> None:
    """Every event name is distinct and starts with chimeway."""
    names = [event.value for event in TelemetryEvent]
    assert (len(names), True) == (len(set(names)), all(n.startswith("chimeway.") for n in names))


def test_otel_subscriber_names_the_extra_when_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without opentelemetry-api, constructing the bridge names the otel extra."""
    monkeypatch.setitem(sys.modules, "opentelemetry", None)
    monkeypatch.setitem(sys.modules, "opentelemetry.trace", None)
    with pytest.raises(MissingExtraError, match=r'pip install "chimeway\[otel\]"'):
        OpenTelemetrySubscriber()


@pytest.mark.extras
def test_otel_subscriber_records_spans() -> None:
    """A span is open from start to stop; other events become spans when none is current."""
    sdk_trace = pytest.importorskip("opentelemetry.sdk.trace")
    export = pytest.importorskip("opentelemetry.sdk.trace.export")
    in_memory = pytest.importorskip("opentelemetry.sdk.trace.export.in_memory_span_exporter")
    trace = pytest.importorskip("opentelemetry.trace")

    exporter = in_memory.InMemorySpanExporter()
    provider = sdk_trace.TracerProvider()
    provider.add_span_processor(export.SimpleSpanProcessor(exporter))
    clock = FakeClock()
    telemetry = Telemetry(clock=clock)
    telemetry.subscribe(OpenTelemetrySubscriber(tracer_provider=provider))
    meta = {"delivery_id": "d-1", "channel": "sms", "recipient": "a@b.test"}
    with telemetry.span("perform", meta):
        clock.now += 2.0
        telemetry.emit(TelemetryEvent.ATTEMPT_RECORDED, {"attempt": 1})
    with pytest.raises(RuntimeError), telemetry.span("perform", {"delivery_id": "d-2"}):
        raise RuntimeError
    telemetry.emit(TelemetryEvent.DEFERRED, {"delivery_id": "d-3"})
    ok, failed, deferred = exporter.get_finished_spans()
    assert (
        "chimeway.perform",
        trace.SpanKind.CONSUMER,
        {
            "chimeway.delivery_id": "d-1",
            "chimeway.channel": "sms",
            "chimeway.duration": 2.0,
            "chimeway.event": "chimeway.perform.stop",
            "messaging.system": "chimeway",
            "messaging.operation.type": "process",
            "messaging.destination.name": "sms",
            "messaging.message.id": "d-1",
        },
        [
            (
                "chimeway.attempt.recorded",
                {"chimeway.attempt": 1, "chimeway.event": "chimeway.attempt.recorded"},
            )
        ],
        trace.StatusCode.ERROR,
        "RuntimeError",
        "chimeway.delivery.deferred",
    ) == (
        ok.name,
        ok.kind,
        dict(ok.attributes),
        [(event.name, dict(event.attributes)) for event in ok.events],
        failed.status.status_code,
        failed.attributes["chimeway.exception_type"],
        deferred.name,
    )
    provider.shutdown()


def test_a_handler_or_clock_that_is_not_callable_is_refused_up_front() -> None:
    """subscribe(5) and Telemetry(clock=5) are TypeErrors, not a failure at every event."""
    telemetry = Telemetry()
    with pytest.raises(TypeError, match="handler must be callable"):
        telemetry.subscribe(5)  # type: ignore[arg-type]
    assert () == telemetry.handlers
    with pytest.raises(TypeError, match="clock must be callable"):
        Telemetry(clock=5)  # type: ignore[arg-type]
