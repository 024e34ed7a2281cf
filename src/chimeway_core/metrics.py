"""Metrics: counters and histograms made from telemetry events.

Theory of operation
-------------------
:func:`measurements` is the one place that says what an event counts: a
pure function from a :class:`~chimeway_core.telemetry.TelemetryEvent` and
its safe metadata to :class:`Measurement` values of the instruments in
:data:`INSTRUMENTS`. Two telemetry handlers feed them somewhere:

- :class:`OpenTelemetryMetrics` (the ``otel`` extra) records them on
  OpenTelemetry instruments of a meter provider (the global one by
  default), for whatever exporter the application set up. Counters are
  observable counters: a :class:`CounterTally` adds them up in the process
  (a dict update per event) and the SDK reads the totals at each
  collection, so an event costs the SDK a call only for a histogram.
- :class:`~chimeway_core.prometheus_collector.PrometheusCollector` (the
  ``prometheus`` extra) keeps them in the process and is a
  ``prometheus_client`` collector the application registers into its own
  registry, beside the ledger's gauges.

Labels come from the safe metadata only (channel, status, reason, outcome,
error class): a payload or a recipient can never become a label value.
Counts are per process: every process that notifies or performs (web and
workers) exports its own, and the backend sums them.
"""

from __future__ import annotations

import enum
import importlib
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final, TypeAlias

import attrs

from chimeway_core.errors import MissingExtraError
from chimeway_core.telemetry import MetaValue, TelemetryEvent

__all__ = [
    "INSTRUMENTS",
    "CounterTally",
    "Instrument",
    "InstrumentKind",
    "Measurement",
    "OpenTelemetryMetrics",
    "measurements",
]


class InstrumentKind(enum.Enum):
    """How an instrument aggregates."""

    COUNTER = "counter"
    HISTOGRAM = "histogram"


@attrs.frozen
class Instrument:
    """One metric, named for OpenTelemetry and for Prometheus."""

    name: str
    """The OpenTelemetry instrument name (dotted)."""
    prometheus: str
    """The Prometheus family name (a counter's samples end ``_total``)."""
    kind: InstrumentKind
    unit: str
    description: str
    labels: tuple[str, ...]
    buckets: tuple[float, ...] = ()
    """A histogram's bucket upper bounds (``+Inf`` is implied)."""


_SECONDS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_LATENCY: Final = (0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 21600.0, 86400.0)
_COUNTS: Final = (1.0, 2.0, 3.0, 4.0, 5.0, 7.0, 10.0, 15.0, 20.0)

#: Every instrument chimeway records, by key.
INSTRUMENTS: Final[Mapping[str, Instrument]] = {
    "notified": Instrument(
        "chimeway.deliveries.notified",
        "chimeway_deliveries_notified",
        InstrumentKind.COUNTER,
        "{delivery}",
        "Deliveries written by notify() or resend() (repeats of a request not counted).",
        ("channel",),
    ),
    "attempts": Instrument(
        "chimeway.attempts",
        "chimeway_attempts",
        InstrumentKind.COUNTER,
        "{attempt}",
        "Attempts recorded (rescued ones included), by channel, outcome and error class.",
        ("channel", "outcome", "error_class"),
    ),
    "ended": Instrument(
        "chimeway.deliveries.ended",
        "chimeway_deliveries_ended",
        InstrumentKind.COUNTER,
        "{delivery}",
        "Deliveries that reached a terminal status, by channel, status and reason.",
        ("channel", "status", "reason"),
    ),
    "unhandled": Instrument(
        "chimeway.unhandled_outcomes",
        "chimeway_unhandled_outcomes",
        InstrumentKind.COUNTER,
        "{attempt}",
        "Attempts of a shape the dispatch table does not cover (RAISE), by channel.",
        ("channel",),
    ),
    "rescued": Instrument(
        "chimeway.rescues",
        "chimeway_rescues",
        InstrumentKind.COUNTER,
        "{attempt}",
        "Attempts left in flight by a dead worker that the rescuer resolved, by channel.",
        ("channel",),
    ),
    "relayed": Instrument(
        "chimeway.outbox.relayed",
        "chimeway_outbox_relayed",
        InstrumentKind.COUNTER,
        "{delivery}",
        "Outbox rows a relay handed to the queue.",
        (),
    ),
    "latency": Instrument(
        "chimeway.delivery.duration",
        "chimeway_delivery_duration_seconds",
        InstrumentKind.HISTOGRAM,
        "s",
        "From notify() to the terminal status, by channel and status.",
        ("channel", "status"),
        _LATENCY,
    ),
    "call": Instrument(
        "chimeway.channel.call.duration",
        "chimeway_channel_call_duration_seconds",
        InstrumentKind.HISTOGRAM,
        "s",
        "How long a channel call took, by channel and outcome.",
        ("channel", "outcome"),
        _SECONDS,
    ),
    "attempts_per_delivery": Instrument(
        "chimeway.delivery.attempts",
        "chimeway_delivery_attempts",
        InstrumentKind.HISTOGRAM,
        "{attempt}",
        "Attempts a delivery took, counted when it reached a terminal status.",
        ("channel", "status"),
        _COUNTS,
    ),
}


#: An instrument's label names and values, in the order of its ``labels``.
Labels: TypeAlias = tuple[tuple[str, str], ...]


@attrs.frozen
class Measurement:
    """One value for one instrument (a key of :data:`INSTRUMENTS`), with its labels."""

    instrument: str
    value: float
    labels: Labels


def _of(key: str, value: float, meta: Mapping[str, MetaValue]) -> Measurement:
    # A list made in one go, then a tuple: cheaper than a generator, and this
    # runs for every measurement.
    labels = [
        (label, "" if (found := meta.get(label)) is None else str(found))
        for label in INSTRUMENTS[key].labels
    ]
    return Measurement(key, value, tuple(labels))


def measurements(event: TelemetryEvent, meta: Mapping[str, MetaValue]) -> list[Measurement]:
    """What ``event`` counts: each value for an instrument of :data:`INSTRUMENTS`.

    A terminal status is counted once, from the event that reports it: the
    status transition (an attempt, an exhaustion, a cancel) or, for a
    suppression (which makes no transition event), the suppressed event.
    Those carry ``age`` and ``attempt_count`` only when the delivery is
    terminal.
    """
    found: list[Measurement] = []
    match event:
        case TelemetryEvent.CREATED:
            found.append(_of("notified", 1, meta))
        case TelemetryEvent.ATTEMPT_RECORDED:
            found.append(_of("attempts", 1, meta))
            duration = meta.get("call_duration")
            if isinstance(duration, int | float):
                found.append(_of("call", float(duration), meta))
        case TelemetryEvent.STATUS_TRANSITION | TelemetryEvent.SUPPRESSED:
            age, attempts = meta.get("age"), meta.get("attempt_count")
            if isinstance(age, int | float) and isinstance(attempts, int):
                found.append(_of("ended", 1, meta))
                found.append(_of("latency", float(age), meta))
                found.append(_of("attempts_per_delivery", attempts, meta))
        case TelemetryEvent.UNHANDLED_OUTCOME:
            found.append(_of("unhandled", 1, meta))
        case TelemetryEvent.RESCUED:
            found.append(_of("rescued", 1, meta))
        case TelemetryEvent.RELAYED:
            count = meta.get("count")
            if isinstance(count, int):
                found.append(_of("relayed", count, meta))
        case _:
            pass
    return found


class CounterTally:
    """The totals of the counters of :data:`INSTRUMENTS`, kept in the process.

    :meth:`add` adds a counter's measurement to the total of its label set;
    :meth:`totals` is a snapshot of one counter's. Thread-safe.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._totals: dict[str, dict[Labels, float]] = {key: {} for key in INSTRUMENTS}

    def add(self, measured: Measurement) -> None:
        """Add ``measured.value`` to its counter's total for ``measured.labels``."""
        with self._lock:
            series = self._totals[measured.instrument]
            series[measured.labels] = series.get(measured.labels, 0) + measured.value

    def totals(self, instrument: str) -> dict[Labels, float]:
        """Each label set's total of ``instrument`` (a key of :data:`INSTRUMENTS`) so far."""
        with self._lock:
            return dict(self._totals[instrument])


#: How many label sets OpenTelemetryMetrics keeps attribute dicts for; past
#: it (the SDK's own default cardinality limit) each record builds its own.
_ATTRIBUTE_SETS: Final = 2000


class OpenTelemetryMetrics:
    """Records :func:`measurements` on OpenTelemetry instruments (needs the ``otel`` extra).

    Subscribe it to the engine's telemetry. ``meter_provider`` defaults to
    the global one. Counters are OpenTelemetry observable counters (monotonic
    sums, exported as a counter's are) whose totals a :class:`CounterTally`
    keeps, read at each collection; histograms are histograms (with
    :data:`INSTRUMENTS`' bucket bounds as advice), each label set's
    attributes built once. Names are those of :data:`INSTRUMENTS`. Raises
    :class:`~chimeway_core.errors.MissingExtraError` if ``opentelemetry-api``
    is not installed.
    """

    def __init__(self, meter_provider: Any = None) -> None:
        try:
            metrics = importlib.import_module("opentelemetry.metrics")
        except ImportError:
            raise MissingExtraError("otel", feature="OpenTelemetryMetrics") from None
        self._observation = metrics.Observation
        meter = metrics.get_meter("chimeway", meter_provider=meter_provider)
        self._tally = CounterTally()
        self._histograms: dict[str, Any] = {}
        self._attribute_sets: dict[Labels, dict[str, str]] = {}
        for key, spec in INSTRUMENTS.items():
            if spec.kind is InstrumentKind.COUNTER:
                meter.create_observable_counter(
                    spec.name,
                    callbacks=[self._observe(key)],
                    unit=spec.unit,
                    description=spec.description,
                )
            else:
                self._histograms[key] = meter.create_histogram(
                    spec.name,
                    unit=spec.unit,
                    description=spec.description,
                    explicit_bucket_boundaries_advisory=list(spec.buckets),
                )

    def _observe(self, key: str) -> Callable[[Any], Iterable[Any]]:
        """The callback the SDK calls at each collection: counter ``key``'s totals."""

        def observe(_options: Any) -> Iterable[Any]:
            return [
                self._observation(total, attributes=dict(labels))
                for labels, total in self._tally.totals(key).items()
            ]

        return observe

    def __call__(self, event: TelemetryEvent, meta: Mapping[str, MetaValue]) -> None:
        """Record what ``event`` counts."""
        for measured in measurements(event, meta):
            histogram = self._histograms.get(measured.instrument)
            if histogram is None:
                self._tally.add(measured)
                continue
            # One dict per label set, built once: the SDK copies what it keeps.
            attributes = self._attribute_sets.get(measured.labels)
            if attributes is None:
                attributes = dict(measured.labels)
                if len(self._attribute_sets) < _ATTRIBUTE_SETS:
                    self._attribute_sets[measured.labels] = attributes
            histogram.record(measured.value, attributes=attributes)
