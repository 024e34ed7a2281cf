"""Traces with the real OpenTelemetry SDK: one trace per delivery, from the request on.

The memory backend runs the jobs after the request's span has ended, as a
worker would: what links them is the trace context stored with the delivery.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from typing import Any

import pytest

from chimeway_backends.memory import MemoryBackend
from chimeway_core import Sent, TemporaryFailure, VirtualClock
from chimeway_core.channels.base import DeliveryGuarantee
from chimeway_core.engine import Chimeway
from chimeway_core.store import SQLStore
from chimeway_core.telemetry import OpenTelemetrySubscriber, Telemetry
from chimeway_core.testing import FakeChannel
from tests.engine.conftest import RETRY, START

pytestmark = pytest.mark.extras

CANARIES = ("CANARY-PAYLOAD-7f3a", "canary-recipient-7f3a", "CANARY-META-7f3a")


@pytest.fixture
def otel() -> Iterator[tuple[Any, Any]]:
    """A real SDK tracer provider writing to an in-memory exporter: (provider, exporter)."""
    sdk_trace = pytest.importorskip("opentelemetry.sdk.trace")
    export = pytest.importorskip("opentelemetry.sdk.trace.export")
    in_memory = pytest.importorskip("opentelemetry.sdk.trace.export.in_memory_span_exporter")
    exporter = in_memory.InMemorySpanExporter()
    provider = sdk_trace.TracerProvider()
    provider.add_span_processor(export.SimpleSpanProcessor(exporter))
    yield provider, exporter
    provider.shutdown()


def _engine(store: SQLStore, channels: dict[str, Any], provider: Any) -> tuple[Chimeway, Any]:
    clock = VirtualClock(START)
    backend = MemoryBackend(clock)
    telemetry = Telemetry()
    telemetry.subscribe(OpenTelemetrySubscriber(tracer_provider=provider))
    engine = Chimeway(store, backend, channels, retry=RETRY, clock=clock, telemetry=telemetry)
    return engine, backend


def _text_of(spans: Any) -> str:
    """Every name, attribute and event of ``spans``, as one string to search."""
    parts = []
    for span in spans:
        parts += [span.name, repr(dict(span.attributes or {}))]
        parts += [f"{e.name} {dict(e.attributes or {})!r}" for e in span.events]
    return "\n".join(parts)


def test_a_delivery_is_one_trace_from_the_request_through_every_attempt(
    store: SQLStore, otel: tuple[Any, Any]
) -> None:
    """request > notify > one perform span per job, each attempt an event; no canary anywhere."""
    provider, exporter = otel
    channel = FakeChannel([TemporaryFailure("busy"), Sent()])
    engine, backend = _engine(store, {"sms": channel}, provider)
    tracer = provider.get_tracer("app")
    with tracer.start_as_current_span("POST /signup") as request:
        delivery = engine.notify(
            "sms", CANARIES[1], {"text": CANARIES[0]}, metadata={"m": CANARIES[2]}
        )
    backend.run_until_idle(engine, fail_fast=True)
    spans = exporter.get_finished_spans()
    by_name: dict[str, list[Any]] = {}
    for span in spans:
        by_name.setdefault(span.name, []).append(span)
    [notify] = by_name["chimeway.notify"]
    performs = by_name["chimeway.perform"]
    trace_id = request.get_span_context().trace_id
    assert {trace_id} == {span.context.trace_id for span in spans}
    assert request.get_span_context().span_id == notify.parent.span_id
    assert [notify.context.span_id] * 2 == [span.parent.span_id for span in performs]
    assert [("failed", 1, "temporary"), ("succeeded", 2, None)] == [
        (
            span.attributes["chimeway.status"],
            span.attributes["chimeway.attempt"],
            span.attributes.get("chimeway.error_class"),
        )
        for span in performs
    ]
    assert [[1, 1], [2, 2]] == [
        [event.attributes["chimeway.attempt"] for event in span.events] for span in performs
    ]
    assert [["chimeway.attempt.recorded", "chimeway.status.transition"]] * 2 == [
        [event.name for event in span.events] for span in performs
    ]
    # The delivery's own attributes are on each span once, never repeated by its events.
    assert [str(delivery.id)] * 3 == [
        span.attributes["chimeway.delivery_id"] for span in [notify, *performs]
    ]
    assert [] == [
        event.name
        for span in [notify, *performs]
        for event in span.events
        if {"chimeway.delivery_id", "messaging.message.id"} & set(event.attributes or {})
    ]
    stored = engine.get(delivery.id).delivery.trace_context
    assert stored is not None
    assert f"{notify.context.trace_id:032x}-{notify.context.span_id:016x}" in stored
    text = _text_of(spans)
    assert [] == [canary for canary in CANARIES if canary in text]


def test_a_repeat_in_another_trace_is_the_same_delivery_in_the_first_trace(
    store: SQLStore, otel: tuple[Any, Any]
) -> None:
    """The stored context is not part of the request: a repeat is found, its trace kept."""
    provider, _ = otel
    engine, _ = _engine(store, {"sms": FakeChannel()}, provider)
    tracer = provider.get_tracer("app")
    with tracer.start_as_current_span("first"):
        first = engine.notify("sms", "+15550100", idempotency_key="k")
    with tracer.start_as_current_span("second"):
        again = engine.notify("sms", "+15550100", idempotency_key="k")
    assert (True, first.id, first.trace_context) == (
        again.found_existing,
        again.id,
        engine.get(first.id).delivery.trace_context,
    )


def test_the_channel_call_nests_under_the_perform_span(
    store: SQLStore, otel: tuple[Any, Any]
) -> None:
    """An httpx client that opens a span per request (as its instrumentation does) nests it."""
    httpx = pytest.importorskip("httpx")
    trace = pytest.importorskip("opentelemetry.trace")
    from chimeway_core.channels.webhook import WebhookChannel

    provider, exporter = otel
    tracer = provider.get_tracer("httpx-instrumentation-stand-in")

    class TracedTransport(httpx.BaseTransport):  # type: ignore[misc]
        """Opens a CLIENT span in the current context around each request."""

        def __init__(self, inner: Any) -> None:
            self.inner = inner

        def handle_request(self, request: Any) -> Any:
            with tracer.start_as_current_span(f"{request.method}", kind=trace.SpanKind.CLIENT):
                return self.inner.handle_request(request)

    transport = TracedTransport(httpx.MockTransport(lambda request: httpx.Response(202)))
    with httpx.Client(transport=transport) as client:
        webhook = WebhookChannel(
            "https://hooks.example.test/hook",
            resolver=lambda host, port: [ipaddress.ip_address("93.184.216.34")],
            client=client,
        )
        engine, backend = _engine(store, {"hook": webhook}, provider)
        with provider.get_tracer("app").start_as_current_span("request"):
            engine.notify("hook", "https://ignored.example.test", {"n": 1})
        backend.run_until_idle(engine, fail_fast=True)
    spans = {span.name: span for span in exporter.get_finished_spans()}
    perform, call = spans["chimeway.perform"], spans["POST"]
    assert (perform.context.trace_id, perform.context.span_id) == (
        call.context.trace_id,
        call.parent.span_id,
    )
    assert "succeeded" == perform.attributes["chimeway.status"]


def test_a_rescue_is_recorded_in_the_deliverys_trace(
    store: SQLStore, otel: tuple[Any, Any]
) -> None:
    """The rescuer runs in no trace of its own: its span joins the delivery's."""
    provider, exporter = otel
    channel = FakeChannel(guarantee=DeliveryGuarantee.AT_LEAST_ONCE)
    engine, _ = _engine(store, {"sms": channel}, provider)
    with provider.get_tracer("app").start_as_current_span("request") as request:
        delivery = engine.notify("sms", "+15550100")
    clock = engine.clock
    claim = store.claim(delivery.id, owner="dead-worker", lease_seconds=60, now=clock.now())
    assert claim is not None  # ... and the worker dies here, mid-call.
    clock.advance(61)  # type: ignore[attr-defined]
    assert 1 == engine.rescue().resolved
    [rescued] = [s for s in exporter.get_finished_spans() if s.name == "chimeway.delivery.rescued"]
    assert (request.get_span_context().trace_id, "failed", "unknown") == (
        rescued.context.trace_id,
        rescued.attributes["chimeway.status"],
        rescued.attributes["chimeway.outcome"],
    )
