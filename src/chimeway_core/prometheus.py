"""The ledger's gauges in Prometheus' text exposition format (version 0.0.4).

:func:`render` turns a :class:`~chimeway_core.records.LedgerGauges` into what
a Prometheus server scrapes; ``chimeway metrics`` prints it once (for
node_exporter's textfile collector) or serves it over HTTP. Every figure is
read from the ledger, so one exporter per database covers every worker,
whatever queue they run on. No client library is needed: the format is a
few lines of text.

The families, all gauges:

- ``chimeway_up``: 1 when the ledger answered the scrape, 0 when it did not
  (then only it and the scrape's duration follow);
- ``chimeway_deliveries{status, reason}``: every delivery, per status and
  reason (``reason=""`` when it has none);
- ``chimeway_live_deliveries{channel, status}``: ``ready`` and ``failed``
  deliveries per channel;
- ``chimeway_due_deliveries`` and ``chimeway_due_lag_seconds``: live deliveries
  due now that no worker holds, and how long the oldest of them has waited
  past its time (0 when none is due): the figure to alert on;
- ``chimeway_stuck_deliveries``: leases that expired with an attempt in flight;
- ``chimeway_outbox_rows`` and ``chimeway_outbox_age_seconds``: outbox rows of
  deliveries due now (not yet claimed, or waiting for the relay), and how long
  the longest-waiting has waited since it was written or fell due;
- ``chimeway_scrape_duration_seconds``: how long reading the ledger took.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Final

from chimeway_core.records import LedgerGauges
from chimeway_core.states import DeliveryStatus

__all__ = ["CONTENT_TYPE", "render"]

#: The ``Content-Type`` of :func:`render`'s text.
CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"

_STATUS_ORDER: Final = {status: n for n, status in enumerate(DeliveryStatus)}


def _escape(value: str) -> str:
    # The exposition format's label-value escapes: backslash, quote, newline.
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _sample(name: str, value: float, labels: Mapping[str, str] | None = None) -> str:
    text = str(value) if isinstance(value, int) else repr(float(value))
    if not labels:
        return f"{name} {text}"
    pairs = ",".join(f'{key}="{_escape(label)}"' for key, label in labels.items())
    return f"{name}{{{pairs}}} {text}"


def _family(name: str, help_text: str, samples: Iterable[str]) -> list[str]:
    return [f"# HELP {name} {help_text}", f"# TYPE {name} gauge", *samples]


def _single(name: str, help_text: str, value: float) -> list[str]:
    """A family of one unlabelled sample."""
    return _family(name, help_text, [_sample(name, value)])


def render(gauges: LedgerGauges | None, *, scrape_seconds: float) -> str:
    """The exposition text of ``gauges``; ``None`` means the ledger did not answer.

    Samples come in a fixed order (statuses in their declared order, then
    reasons, channels by name), so two renders of equal gauges are equal.
    """
    lines = _single(
        "chimeway_up",
        "1 when the ledger answered this scrape, 0 when it did not.",
        int(gauges is not None),
    )
    if gauges is not None:
        lines += _ledger(gauges)
    lines += _single(
        "chimeway_scrape_duration_seconds", "How long reading the ledger took.", scrape_seconds
    )
    return "\n".join(lines) + "\n"


def _ledger(gauges: LedgerGauges) -> list[str]:
    counts = sorted(
        gauges.counts.items(), key=lambda item: (_STATUS_ORDER[item[0][0]], item[0][1] or "")
    )
    live = sorted(
        gauges.live_by_channel.items(), key=lambda item: (item[0][0], _STATUS_ORDER[item[0][1]])
    )
    return [
        *_family(
            "chimeway_deliveries",
            "Deliveries in the ledger, by status and reason (reason empty when there is none).",
            [
                _sample(
                    "chimeway_deliveries",
                    count,
                    {"status": status.value, "reason": reason or ""},
                )
                for (status, reason), count in counts
            ],
        ),
        *_family(
            "chimeway_live_deliveries",
            "Ready and failed deliveries, by channel and status.",
            [
                _sample(
                    "chimeway_live_deliveries", count, {"channel": channel, "status": status.value}
                )
                for (channel, status), count in live
            ],
        ),
        *_single(
            "chimeway_due_deliveries", "Live deliveries due now that no worker holds.", gauges.due
        ),
        *_single(
            "chimeway_due_lag_seconds",
            "How long the oldest due delivery has waited past its time (0 when none is due).",
            gauges.due_lag_seconds,
        ),
        *_single(
            "chimeway_stuck_deliveries",
            "Leases that expired with an attempt in flight, not yet resolved by a rescuer.",
            gauges.stuck,
        ),
        *_single(
            "chimeway_outbox_rows",
            "Outbox rows of deliveries due now: not yet claimed, or waiting for the relay.",
            gauges.outbox,
        ),
        *_single(
            "chimeway_outbox_age_seconds",
            "How long the longest-waiting of those rows has waited (0 when there is none).",
            gauges.outbox_age_seconds,
        ),
    ]
