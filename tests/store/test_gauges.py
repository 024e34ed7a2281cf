"""SQLStore.gauges: the ledger's health in one read, on both databases."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from chimeway_core.records import LedgerGauges, NewDelivery
from chimeway_core.states import DeliveryStatus
from chimeway_core.store import SQLStore

READY, FAILED = DeliveryStatus.READY, DeliveryStatus.FAILED


def test_an_empty_ledger_has_nothing_due_stuck_or_waiting(store: SQLStore, now: datetime) -> None:
    """Every count is zero and neither age has anything to measure."""
    assert LedgerGauges(
        at=now,
        counts={},
        live_by_channel={},
        due=0,
        oldest_due_at=None,
        stuck=0,
        outbox=0,
        oldest_outbox_at=None,
    ) == store.gauges(now=now)


def test_each_gauge_counts_what_it_says(store: SQLStore, now: datetime) -> None:
    """Due means live, due and unheld; stuck means an expired lease over an attempt in flight."""

    def new(channel: str = "sms", **fields: object) -> NewDelivery:
        return NewDelivery(channel=channel, recipient="r", **fields)  # type: ignore[arg-type]

    hour_ago = now - timedelta(hours=1)
    due_early = store.create(new(), now=hour_ago).delivery
    store.create(new(), now=now - timedelta(minutes=5))
    store.create(new("email", scheduled_at=now + timedelta(hours=1)), now=now)
    held = store.create(new("email"), now=hour_ago).delivery
    assert store.claim(held.id, owner="w1", lease_seconds=600, now=now) is not None
    dead = store.create(new(), now=hour_ago).delivery
    assert store.claim(dead.id, owner="w2", lease_seconds=30, now=hour_ago) is not None
    store.cancel(store.create(new(), now=hour_ago).delivery.id, now=now)

    gauges = store.gauges(now=now)

    assert {(READY, None): 5, (DeliveryStatus.CANCELLED, "cancelled"): 1} == gauges.counts
    assert {("sms", READY): 3, ("email", READY): 2} == gauges.live_by_channel
    # The hour-old and the five-minute-old sms; not the future email, not the two leased.
    assert (2, due_early.scheduled_at, 3600.0) == (
        gauges.due,
        gauges.oldest_due_at,
        gauges.due_lag_seconds,
    )
    assert 1 == gauges.stuck
    # A claim clears its delivery's outbox row, and so does an end; of the three
    # rows left, the email scheduled for later waits for its time, not the relay.
    assert (2, hour_ago, 3600.0) == (
        gauges.outbox,
        gauges.oldest_outbox_at,
        gauges.outbox_age_seconds,
    )


def test_a_naive_now_is_refused(store: SQLStore, now: datetime) -> None:
    """gauges() reads nothing with a timestamp that names no timezone."""
    with pytest.raises(ValueError, match="timezone-aware"):
        store.gauges(now=now.replace(tzinfo=None))


@pytest.mark.postgres
@pytest.mark.parametrize("timeout", [2_147_484.0, 1e300], ids=["past 24.8 days", "1e300 s"])
def test_a_timeout_past_postgres_largest_waits_that_long(
    pg_store: SQLStore, now: datetime, timeout: float
) -> None:
    """statement_timeout holds at most 2**31-1 ms: a longer timeout is held to that, not refused."""
    gauges = pg_store.gauges(now=now, timeout=timeout)
    assert gauges.due == 0
