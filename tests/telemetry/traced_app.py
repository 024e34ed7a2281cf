"""The traced application real RQ, Celery and Dramatiq workers run in the trace tests.

Its telemetry has an :class:`OpenTelemetrySubscriber` on a real SDK
provider whose spans go, as JSON lines, to the ``TRACED_SPANS`` file: the
test process reads what every worker process exported. Its channel opens a
CLIENT span around each call, as an instrumented HTTP or SMTP client does,
and then plays the recipient's script: ``retry-*`` fails temporarily once,
then sends; anything else sends.

RQ workers load :func:`engine` (``CHIMEWAY_APP=tests.telemetry.traced_app:engine``);
Celery workers run ``celery -A tests.telemetry.traced_celery_app``, Dramatiq
workers ``dramatiq tests.telemetry.traced_dramatiq_app:broker``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

from chimeway_core import RetryPolicy, Sent, TemporaryFailure
from chimeway_core.backend import Backend
from chimeway_core.engine import Chimeway
from chimeway_core.outcomes import ChannelResult
from chimeway_core.records import Delivery
from chimeway_core.store import SQLStore
from chimeway_core.telemetry import OpenTelemetrySubscriber, Telemetry
from chimeway_core.testing import FakeChannel

#: Two attempts at most, 0.2 s apart.
RETRY = RetryPolicy(max_attempts=2, initial_delay=0.2, backoff_factor=1.0, jitter=0.0)


def span_record(span: ReadableSpan) -> dict[str, Any]:
    """What the tests read of a span: names, ids, attributes and events."""
    context = span.get_span_context()
    assert context is not None
    return {
        "name": span.name,
        "trace_id": f"{context.trace_id:032x}",
        "span_id": f"{context.span_id:016x}",
        "parent_id": None if span.parent is None else f"{span.parent.span_id:016x}",
        "pid": os.getpid(),
        "attributes": dict(span.attributes or {}),
        "events": [
            {"name": event.name, "attributes": dict(event.attributes or {})}
            for event in span.events
        ],
    }


class JsonLinesExporter(SpanExporter):
    """Appends each finished span to a file shared by every process of a test."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        """Append one JSON line per span (one write: lines of processes never mix)."""
        text = "".join(json.dumps(span_record(span), default=str) + "\n" for span in spans)
        with self.path.open("a") as file:
            file.write(text)
        return SpanExportResult.SUCCESS


class ClientSpanChannel(FakeChannel):
    """A channel whose call opens a CLIENT span in the current context, as instrumentation does."""

    def send(self, delivery: Delivery, idempotency_key: str) -> ChannelResult:
        """Open the provider-call span, then play the script inside it."""
        tracer = trace.get_tracer("provider-client")
        with tracer.start_as_current_span("provider call", kind=trace.SpanKind.CLIENT):
            return super().send(delivery, idempotency_key)


def _script(delivery: Delivery) -> object:
    if delivery.recipient.startswith("retry-") and delivery.attempt_count == 1:
        return TemporaryFailure("busy")
    return Sent()


def traced_telemetry(spans: Path) -> Telemetry:
    """Telemetry exporting spans to ``spans``, on a provider that is also the global one."""
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(JsonLinesExporter(spans)))
    trace.set_tracer_provider(provider)
    telemetry = Telemetry()
    telemetry.subscribe(OpenTelemetrySubscriber(tracer_provider=provider))
    return telemetry


def build(backend: Backend, db_url: str, telemetry: Telemetry) -> Chimeway:
    """The engine of every process of one test, on ``backend``."""
    return Chimeway(
        SQLStore(db_url),
        backend,
        {"traced": ClientSpanChannel(_script)},
        retry=RETRY,
        telemetry=telemetry,
    )


def engine() -> Chimeway:
    """An RQ worker's engine, configured from ``TRACED_*`` environment variables."""
    import redis

    from chimeway_backends.rq import RQBackend

    env = os.environ
    backend = RQBackend(redis.Redis.from_url(env["TRACED_REDIS"]), env["TRACED_QUEUE"])
    return build(backend, env["TRACED_DB"], traced_telemetry(Path(env["TRACED_SPANS"])))
