"""Metrics: counters and histograms from a mixed run equal what the ledger holds.

The same run feeds the OpenTelemetry instruments (read with the SDK's
in-memory reader) and the prometheus_client collector (registered in an
application's own registry, read back with prometheus_client's parser).
"""

from __future__ import annotations

from collections import Counter
from datetime import timedelta
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from chimeway_backends.memory import MemoryBackend
from chimeway_core import PermanentFailure, Sent, TemporaryFailure, VirtualClock
from chimeway_core.channels.base import DeliveryGuarantee
from chimeway_core.engine import Chimeway
from chimeway_core.metrics import OpenTelemetryMetrics
from chimeway_core.prometheus_collector import PrometheusCollector
from chimeway_core.records import Delivery
from chimeway_core.states import TERMINAL_STATUSES
from chimeway_core.store import SQLStore
from chimeway_core.telemetry import Telemetry, TelemetryEvent
from chimeway_core.testing import FakeChannel
from tests.engine.conftest import RETRY, START

pytestmark = pytest.mark.extras

CANARIES = ("CANARY-PAYLOAD-55e1", "canary-recipient-55e1")


def _script(delivery: Delivery) -> object:
    kind = delivery.recipient.split("-", 1)[0]
    first = delivery.attempt_count == 1
    results: dict[str, object] = {
        "retry": TemporaryFailure("busy") if first else Sent(),
        "perm": PermanentFailure("rejected"),
        "down": TemporaryFailure("down"),
        "weird": {"undocumented": "shape"} if first else Sent(),
    }
    return results.get(kind, Sent())


def _mixed_run(store: SQLStore, telemetry: Telemetry) -> tuple[Chimeway, list[Delivery]]:
    """Sent, retried, failed, exhausted, raised, expired, cancelled, rescued and repeated."""
    clock = VirtualClock(START)
    backend = MemoryBackend(clock)
    channel = FakeChannel(_script, guarantee=DeliveryGuarantee.AT_LEAST_ONCE)
    engine = Chimeway(
        store, backend, {"sms": channel}, retry=RETRY, clock=clock, telemetry=telemetry
    )
    made = [
        engine.notify("sms", recipient, {"text": CANARIES[0]}, max_attempts=3)
        for recipient in ("ok-1", "ok-2", "retry-1", "perm-1", "down-1", "weird-1")
    ]
    made.append(engine.notify("sms", f"ok-{CANARIES[1]}", expires_at=START))
    later = engine.notify("sms", "ok-later", scheduled_at=START + timedelta(days=1))
    engine.cancel(later.id)
    lost = engine.notify("sms", "ok-lost", idempotency_key="lost")
    engine.notify("sms", "ok-lost", idempotency_key="lost")  # a repeat: counted nowhere
    claim = store.claim(lost.id, owner="dead-worker", lease_seconds=60, now=clock.now())
    assert claim is not None
    backend.run_until_idle(engine)
    clock.advance(61)
    assert 1 == engine.rescue().resolved
    backend.run_until_idle(engine)
    return engine, [*made, later, lost]


def _ledger(engine: Chimeway, made: list[Delivery]) -> dict[str, Counter[Any]]:
    """What the ledger says: attempts by outcome, terminal deliveries by (status, reason)."""
    histories = [engine.get(delivery.id) for delivery in made]
    assert all(h.delivery.status in TERMINAL_STATUSES for h in histories)
    return {
        "attempts": Counter(a.outcome.value for h in histories for a in h.attempts if a.outcome),
        "ended": Counter((h.delivery.status.value, h.delivery.reason or "") for h in histories),
        "tries": Counter({"sum": sum(h.delivery.attempt_count for h in histories)}),
    }


def test_prometheus_collector_counts_equal_the_ledgers_in_an_apps_registry(
    store: SQLStore,
) -> None:
    """prometheus_client's parser reads the collector's families; counts match the ledger."""
    collector = PrometheusCollector(store)
    telemetry = Telemetry()
    telemetry.subscribe(collector)
    engine, made = _mixed_run(store, telemetry)
    registry = CollectorRegistry()
    registry.register(collector)
    text = generate_latest(registry).decode()
    families = {family.name: family for family in text_string_to_metric_families(text)}
    samples = {name: family.samples for name, family in families.items()}
    ledger = _ledger(engine, made)

    def total(family: str, *labels: str) -> Counter[Any]:
        found: Counter[Any] = Counter()
        for sample in samples[family]:
            if sample.name == f"{family}_total":
                key = tuple(sample.labels[label] for label in labels)
                found[key[0] if len(key) == 1 else key] += sample.value
        return found

    assert len(made) == sum(total("chimeway_deliveries_notified", "channel").values())
    assert ledger["attempts"] == total("chimeway_attempts", "outcome")
    assert ledger["ended"] == total("chimeway_deliveries_ended", "status", "reason")
    assert Counter({"sms": 1}) == total("chimeway_unhandled_outcomes", "channel")
    assert Counter({"sms": 1}) == total("chimeway_rescues", "channel")
    histogram = samples["chimeway_delivery_attempts"]
    tries = sum(s.value for s in histogram if s.name == "chimeway_delivery_attempts_sum")
    count = sum(s.value for s in histogram if s.name == "chimeway_delivery_attempts_count")
    assert (ledger["tries"]["sum"], len(made)) == (tries, count)
    gauges = {
        (s.labels["status"], s.labels["reason"]): s.value for s in samples["chimeway_deliveries"]
    }
    assert ledger["ended"] == Counter(gauges)
    assert 1.0 == samples["chimeway_up"][0].value
    assert [] == [canary for canary in CANARIES if canary in text]


def test_opentelemetry_counters_equal_the_ledgers(store: SQLStore) -> None:
    """The SDK's in-memory reader: the same counts on OpenTelemetry instruments."""
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    telemetry = Telemetry()
    telemetry.subscribe(OpenTelemetryMetrics(meter_provider=provider))
    engine, made = _mixed_run(store, telemetry)
    data = reader.get_metrics_data()
    points: dict[str, list[Any]] = {}
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                points[metric.name] = list(metric.data.data_points)
    ledger = _ledger(engine, made)

    def total(name: str, *labels: str) -> Counter[Any]:
        found: Counter[Any] = Counter()
        for point in points[name]:
            key = tuple(point.attributes[label] for label in labels)
            found[key[0] if len(key) == 1 else key] += point.value
        return found

    assert len(made) == sum(total("chimeway.deliveries.notified", "channel").values())
    assert ledger["attempts"] == total("chimeway.attempts", "outcome")
    assert ledger["ended"] == total("chimeway.deliveries.ended", "status", "reason")
    assert (ledger["tries"]["sum"], len(made)) == (
        sum(p.sum for p in points["chimeway.delivery.attempts"]),
        sum(p.count for p in points["chimeway.delivery.attempts"]),
    )
    calls = sum(p.count for p in points["chimeway.channel.call.duration"])
    rescued_attempts = 1  # the rescuer records no call duration
    assert sum(ledger["attempts"].values()) - rescued_attempts == calls
    text = repr(points)
    assert [] == [canary for canary in CANARIES if canary in text]
    provider.shutdown()


def test_a_relay_counts_the_rows_it_handed_over() -> None:
    """The relayed event's count is added to the relay counter."""
    collector = PrometheusCollector()
    telemetry = Telemetry()
    telemetry.subscribe(collector)
    telemetry.emit(TelemetryEvent.RELAYED, {"count": 3})
    telemetry.emit(TelemetryEvent.RELAYED, {"count": 2})
    registry = CollectorRegistry()
    registry.register(collector)
    families = {
        f.name: f for f in text_string_to_metric_families(generate_latest(registry).decode())
    }
    assert [5.0] == [
        s.value for s in families["chimeway_outbox_relayed"].samples if s.name.endswith("_total")
    ]
    assert "chimeway_up" not in families
