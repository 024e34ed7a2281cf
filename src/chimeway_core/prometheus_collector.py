"""A ``prometheus_client`` collector an application registers into its own registry.

Theory of operation
-------------------
:class:`PrometheusCollector` is two things at once: a telemetry handler
(subscribe it to the engine's :class:`~chimeway_core.telemetry.Telemetry`)
that keeps the counters and histograms of :mod:`chimeway_core.metrics` in
the process, and a ``prometheus_client`` collector (``registry.register(it)``)
that yields them at each scrape, with the ledger's gauges when it was given
a store — the same families ``chimeway metrics`` exports, read from the
ledger at scrape time. Needs the ``prometheus`` extra
(``pip install "chimeway[prometheus]"``).
"""

from __future__ import annotations

import importlib
import logging
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

from chimeway_core.clock import Clock, SystemClock
from chimeway_core.errors import MissingExtraError
from chimeway_core.ledger.protocol import Ledger
from chimeway_core.metrics import INSTRUMENTS, CounterTally, InstrumentKind, measurements
from chimeway_core.records import LedgerGauges
from chimeway_core.telemetry import MetaValue, TelemetryEvent

__all__ = ["PrometheusCollector"]

_logger = logging.getLogger("chimeway.telemetry")

_Labels = tuple[str, ...]


class _Histogram:
    """Cumulative bucket counts, sum and count of one label set."""

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.sum += value
        for index, bound in enumerate(self.bounds):
            if value <= bound:
                self.counts[index] += 1
                return
        self.counts[-1] += 1

    def buckets(self) -> list[tuple[str, float]]:
        cumulative, total = [], 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            total += count
            cumulative.append(("+Inf" if bound == float("inf") else repr(bound), float(total)))
        return cumulative


class PrometheusCollector:
    """Chimeway's counters, histograms and (with ``store``) ledger gauges for ``prometheus_client``.

    ``store`` is the engine's ledger (``engine.store``), read at each scrape
    for the gauges (``chimeway_up`` is 0 when it does not answer within
    ``timeout`` seconds, and the scrape goes on). Thread-safe. Raises
    :class:`~chimeway_core.errors.MissingExtraError` if ``prometheus_client``
    is not installed.
    """

    def __init__(
        self,
        store: Ledger | None = None,
        *,
        timeout: float = 5.0,
        clock: Clock | None = None,
    ) -> None:
        try:
            self._core = importlib.import_module("prometheus_client.core")
        except ImportError:
            raise MissingExtraError("prometheus", feature="PrometheusCollector") from None
        self.store = store
        self.timeout = timeout
        self.clock = clock or SystemClock()
        self._lock = threading.Lock()
        self._counters = CounterTally()
        self._histograms: dict[str, dict[_Labels, _Histogram]] = {}

    def __call__(self, event: TelemetryEvent, meta: Mapping[str, MetaValue]) -> None:
        """Count what ``event`` counts (see :func:`chimeway_core.metrics.measurements`)."""
        found = measurements(event, meta)
        if not found:
            return
        # One lock over counters and histograms: a scrape sees an event whole.
        with self._lock:
            for measured in found:
                spec = INSTRUMENTS[measured.instrument]
                if spec.kind is InstrumentKind.COUNTER:
                    self._counters.add(measured)
                    continue
                labels = tuple(value for _, value in measured.labels)
                histograms = self._histograms.setdefault(measured.instrument, {})
                histogram = histograms.get(labels)
                if histogram is None:
                    histogram = histograms[labels] = _Histogram(spec.buckets)
                histogram.observe(measured.value)

    def describe(self) -> list[Any]:
        """The families, without samples: registering reads no ledger."""
        return list(self._families(with_samples=False))

    def collect(self) -> Iterator[Any]:
        """Every family with its samples, the ledger's gauges read now."""
        yield from self._families(with_samples=True)

    def _families(self, *, with_samples: bool) -> Iterator[Any]:
        core = self._core
        with self._lock:
            counters = {
                key: {tuple(v for _, v in labels): total for labels, total in totals.items()}
                for key in INSTRUMENTS
                if (totals := self._counters.totals(key))
            }
            histograms = {
                k: {labels: (h.buckets(), h.sum) for labels, h in v.items()}
                for k, v in self._histograms.items()
            }
        for key, spec in INSTRUMENTS.items():
            labels = list(spec.labels)
            if spec.kind is InstrumentKind.COUNTER:
                family = core.CounterMetricFamily(spec.prometheus, spec.description, labels=labels)
                for values, total in sorted(counters.get(key, {}).items()) if with_samples else ():
                    family.add_metric(list(values), total)
            else:
                family = core.HistogramMetricFamily(
                    spec.prometheus, spec.description, labels=labels
                )
                for values, (buckets, total) in (
                    sorted(histograms.get(key, {}).items()) if with_samples else ()
                ):
                    family.add_metric(list(values), buckets, total)
            yield family
        if self.store is not None:
            yield from self._gauges(with_samples=with_samples)

    def _gauges(self, *, with_samples: bool) -> Iterator[Any]:
        gauge = self._core.GaugeMetricFamily
        gauges: LedgerGauges | None = None
        started = time.perf_counter()
        if with_samples and self.store is not None:
            try:
                gauges = self.store.gauges(now=self.clock.now(), timeout=self.timeout)
            except Exception:  # a scrape reports the ledger down, it does not fail
                _logger.warning("reading the ledger's gauges failed", exc_info=True)
        up = gauge("chimeway_up", "1 when the ledger answered this scrape, 0 when it did not.")
        deliveries = gauge(
            "chimeway_deliveries",
            "Deliveries in the ledger, by status and reason (reason empty when there is none).",
            labels=["status", "reason"],
        )
        live = gauge(
            "chimeway_live_deliveries",
            "Ready and failed deliveries, by channel and status.",
            labels=["channel", "status"],
        )
        singles = {
            "chimeway_due_deliveries": "Live deliveries due now that no worker holds.",
            "chimeway_due_lag_seconds": "How long the oldest due delivery has waited past its"
            " time (0 when none is due).",
            "chimeway_stuck_deliveries": "Leases that expired with an attempt in flight.",
            "chimeway_outbox_rows": "Outbox rows of deliveries due now.",
            "chimeway_outbox_age_seconds": "How long the longest-waiting outbox row has waited.",
        }
        single = {name: gauge(name, text) for name, text in singles.items()}
        if with_samples:
            up.add_metric([], int(gauges is not None))
        if gauges is not None:
            for (status, reason), count in sorted(
                gauges.counts.items(), key=lambda item: (item[0][0].value, item[0][1] or "")
            ):
                deliveries.add_metric([status.value, reason or ""], count)
            for (channel, status), count in sorted(
                gauges.live_by_channel.items(), key=lambda item: (item[0][0], item[0][1].value)
            ):
                live.add_metric([channel, status.value], count)
            values = {
                "chimeway_due_deliveries": gauges.due,
                "chimeway_due_lag_seconds": gauges.due_lag_seconds,
                "chimeway_stuck_deliveries": gauges.stuck,
                "chimeway_outbox_rows": gauges.outbox,
                "chimeway_outbox_age_seconds": gauges.outbox_age_seconds,
            }
            for name, value in values.items():
                single[name].add_metric([], value)
        yield up
        if gauges is not None or not with_samples:
            yield deliveries
            yield live
            yield from single.values()
        scrape = gauge("chimeway_scrape_duration_seconds", "How long reading the ledger took.")
        if with_samples:
            scrape.add_metric([], time.perf_counter() - started)
        yield scrape
