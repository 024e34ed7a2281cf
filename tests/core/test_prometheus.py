"""chimeway_core.prometheus.render: the text exposition format, exactly."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from chimeway_core.prometheus import render
from chimeway_core.records import LedgerGauges
from chimeway_core.states import DeliveryStatus

NOW = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
# One sample line of the format: a name, optional labels with escaped values, a number.
SAMPLE = re.compile(
    r'[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_][a-zA-Z0-9_]*="([^"\\\n]|\\[\\"n])*",?)*\})? '
    r"-?[0-9]+(\.[0-9]+)?(e-?[0-9]+)?"
)


def _gauges(**changes: object) -> LedgerGauges:
    fields: dict[str, object] = {
        "at": NOW,
        "counts": {
            (DeliveryStatus.CANCELLED, "bounced"): 2,
            (DeliveryStatus.READY, None): 3,
            (DeliveryStatus.SUCCEEDED, None): 40,
        },
        "live_by_channel": {("sms", DeliveryStatus.FAILED): 1, ("email", DeliveryStatus.READY): 2},
        "due": 3,
        "oldest_due_at": NOW - timedelta(seconds=90),
        "stuck": 1,
        "outbox": 4,
        "oldest_outbox_at": NOW - timedelta(seconds=2.5),
    }
    fields.update(changes)
    return LedgerGauges(**fields)  # type: ignore[arg-type]


def test_every_family_in_a_fixed_order() -> None:
    """Statuses in their declared order, then reasons; channels by name; all gauges."""
    assert render(_gauges(), scrape_seconds=0.25) == "\n".join(
        [
            "# HELP chimeway_up 1 when the ledger answered this scrape, 0 when it did not.",
            "# TYPE chimeway_up gauge",
            "chimeway_up 1",
            "# HELP chimeway_deliveries Deliveries in the ledger, by status and reason "
            "(reason empty when there is none).",
            "# TYPE chimeway_deliveries gauge",
            'chimeway_deliveries{status="ready",reason=""} 3',
            'chimeway_deliveries{status="succeeded",reason=""} 40',
            'chimeway_deliveries{status="cancelled",reason="bounced"} 2',
            "# HELP chimeway_live_deliveries Ready and failed deliveries, by channel and status.",
            "# TYPE chimeway_live_deliveries gauge",
            'chimeway_live_deliveries{channel="email",status="ready"} 2',
            'chimeway_live_deliveries{channel="sms",status="failed"} 1',
            "# HELP chimeway_due_deliveries Live deliveries due now that no worker holds.",
            "# TYPE chimeway_due_deliveries gauge",
            "chimeway_due_deliveries 3",
            "# HELP chimeway_due_lag_seconds How long the oldest due delivery has waited past "
            "its time (0 when none is due).",
            "# TYPE chimeway_due_lag_seconds gauge",
            "chimeway_due_lag_seconds 90.0",
            "# HELP chimeway_stuck_deliveries Leases that expired with an attempt in flight, "
            "not yet resolved by a rescuer.",
            "# TYPE chimeway_stuck_deliveries gauge",
            "chimeway_stuck_deliveries 1",
            "# HELP chimeway_outbox_rows Outbox rows of deliveries due now: not yet claimed, "
            "or waiting for the relay.",
            "# TYPE chimeway_outbox_rows gauge",
            "chimeway_outbox_rows 4",
            "# HELP chimeway_outbox_age_seconds How long the longest-waiting of those rows "
            "has waited (0 when there is none).",
            "# TYPE chimeway_outbox_age_seconds gauge",
            "chimeway_outbox_age_seconds 2.5",
            "# HELP chimeway_scrape_duration_seconds How long reading the ledger took.",
            "# TYPE chimeway_scrape_duration_seconds gauge",
            "chimeway_scrape_duration_seconds 0.25",
            "",
        ]
    )


def test_label_values_are_escaped() -> None:
    """A channel or reason with a backslash, a quote or a newline stays one valid line."""
    text = render(
        _gauges(
            counts={(DeliveryStatus.CANCELLED, 'say "no"\\\n'): 1},
            live_by_channel={('a"b\\c\nd', DeliveryStatus.READY): 1},
        ),
        scrape_seconds=0.1,
    )
    assert 'chimeway_deliveries{status="cancelled",reason="say \\"no\\"\\\\\\n"} 1' in text
    assert 'chimeway_live_deliveries{channel="a\\"b\\\\c\\nd",status="ready"} 1' in text
    for line in text.splitlines():
        assert line.startswith("# ") or SAMPLE.fullmatch(line), line


def test_a_ledger_that_did_not_answer_is_up_zero_and_nothing_else() -> None:
    """With no gauges only chimeway_up 0 and the scrape's duration are written."""
    assert render(None, scrape_seconds=5.0).splitlines()[2::3] == [
        "chimeway_up 0",
        "chimeway_scrape_duration_seconds 5.0",
    ]


def test_ages_are_zero_when_nothing_waits_and_never_negative() -> None:
    """No due delivery or outbox row is age 0; a clock behind the rows is not a negative age."""
    idle = _gauges(due=0, oldest_due_at=None, outbox=0, oldest_outbox_at=None)
    ahead = _gauges(oldest_due_at=NOW + timedelta(seconds=5), oldest_outbox_at=NOW)
    assert (0.0, 0.0, 0.0, 0.0) == (
        idle.due_lag_seconds,
        idle.outbox_age_seconds,
        ahead.due_lag_seconds,
        ahead.outbox_age_seconds,
    )
