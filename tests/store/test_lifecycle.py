"""Claims, attempts and transitions: state machine and compare-and-set guard every write."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from chimeway_core.errors import (
    DeliveryNotFoundError,
    DeliveryTerminalError,
    IllegalTransitionError,
    LeaseLostError,
    StaleDeliveryError,
)
from chimeway_core.outcomes import (
    Bounced,
    Classification,
    ErrorClass,
    Outcome,
    Sent,
    TemporaryFailure,
    classify,
)
from chimeway_core.records import Claim, Delivery, DeliveryHistory, JournalKind, NewDelivery
from chimeway_core.states import DeliveryStatus, Event
from chimeway_core.store import SQLStore

FAILED = classify(TemporaryFailure("busy"))
SENT = classify(Sent())
UNKNOWN = Classification(Outcome.UNKNOWN, None)


def _new(store: SQLStore, now: datetime, **changes: object) -> Delivery:
    fields: dict[str, object] = {"channel": "email", "recipient": "r"}
    fields.update(changes)
    return store.create(NewDelivery(**fields), now=now).delivery  # type: ignore[arg-type]


def _claim(store: SQLStore, delivery: Delivery, now: datetime, owner: str = "w1") -> Claim:
    claim = store.claim(delivery.id, owner=owner, lease_seconds=30, now=now)
    assert claim is not None
    return claim


def _history(store: SQLStore, delivery: Delivery) -> DeliveryHistory:
    history = store.history(delivery.id)
    assert history is not None
    return history


def test_claim_takes_lease_and_writes_attempt_ahead(store: SQLStore, now: datetime) -> None:
    """A claim bumps attempt_count and version, sets the lease and writes an in-flight attempt."""
    delivery = _new(store, now)
    claim = _claim(store, delivery, now)
    assert ("w1", now + timedelta(seconds=30), 1, 2) == (
        claim.delivery.lease_owner,
        claim.delivery.lease_expires_at,
        claim.delivery.attempt_count,
        claim.delivery.version,
    )
    assert (1, None, "w1", now) == (
        claim.attempt.number,
        claim.attempt.outcome,
        claim.attempt.worker,
        claim.attempt.started_at,
    )
    assert (claim.delivery, (claim.attempt,)) == (
        _history(store, delivery).delivery,
        _history(store, delivery).attempts,
    )


def test_claim_refuses_terminal(store: SQLStore, now: datetime) -> None:
    """A terminal delivery cannot be claimed."""
    delivery = store.cancel(_new(store, now).id, now=now)
    assert None is store.claim(delivery.id, owner="w", lease_seconds=30, now=now)


def test_claim_refuses_not_due(store: SQLStore, now: datetime) -> None:
    """A delivery scheduled later cannot be claimed yet, and can be once due."""
    delivery = _new(store, now, scheduled_at=now + timedelta(minutes=5))
    assert None is store.claim(delivery.id, owner="w", lease_seconds=30, now=now)
    assert None is not store.claim(
        delivery.id, owner="w", lease_seconds=30, now=now + timedelta(minutes=5)
    )


def test_claim_refuses_live_lease(store: SQLStore, now: datetime) -> None:
    """A second claimer is refused while the first lease is live."""
    delivery = _new(store, now)
    _claim(store, delivery, now)
    assert None is store.claim(
        delivery.id, owner="w2", lease_seconds=30, now=now + timedelta(seconds=29)
    )


def test_claim_refuses_when_attempts_used_up(store: SQLStore, now: datetime) -> None:
    """attempt_count >= max_attempts refuses a claim (the delivery awaits exhaust)."""
    delivery = _new(store, now, max_attempts=1)
    store.record_attempt(_claim(store, delivery, now), FAILED, event=Event.FAIL_TEMPORARY, now=now)
    assert None is store.claim(delivery.id, owner="w", lease_seconds=30, now=now)


def test_claim_refuses_expired_lease_with_attempt_in_flight(store: SQLStore, now: datetime) -> None:
    """An expired lease with an in-flight attempt belongs to the rescuer, not a new claimer."""
    delivery = _new(store, now)
    _claim(store, delivery, now)
    later = now + timedelta(minutes=5)
    assert None is store.claim(delivery.id, owner="w2", lease_seconds=30, now=later)


def test_claim_unknown_id_is_none(store: SQLStore, now: datetime) -> None:
    """Claiming an id nobody created returns None."""
    assert None is store.claim(uuid.uuid4(), owner="w", lease_seconds=1, now=now)


def test_record_attempt_completes_attempt_and_transition(store: SQLStore, now: datetime) -> None:
    """One call completes the attempt, moves the status, clears the lease and journals it."""
    delivery = _new(store, now)
    claim = _claim(store, delivery, now)
    later = now + timedelta(seconds=2)
    retry_at = now + timedelta(minutes=1)
    after = store.record_attempt(
        claim, FAILED, event=Event.FAIL_TEMPORARY, now=later, next_run_at=retry_at
    )
    assert (DeliveryStatus.FAILED, None, None, retry_at, 3, later) == (
        after.status,
        after.lease_owner,
        after.lease_expires_at,
        after.scheduled_at,
        after.version,
        after.updated_at,
    )
    history = _history(store, delivery)
    (attempt,) = history.attempts
    assert (later, Outcome.FAILED, ErrorClass.TEMPORARY.value, "busy") == (
        attempt.finished_at,
        attempt.outcome,
        attempt.error_class,
        attempt.error,
    )
    last = history.journal[-1]
    assert (
        JournalKind.TRANSITION,
        "fail_temporary",
        DeliveryStatus.READY,
        DeliveryStatus.FAILED,
    ) == (
        last.kind,
        last.event,
        last.from_status,
        last.to_status,
    )


def test_attempt_numbers_are_contiguous(store: SQLStore, now: datetime) -> None:
    """Each claim after a recorded failure takes the next attempt number, from 1."""
    delivery = _new(store, now, max_attempts=4)
    for _ in range(3):
        claim = _claim(store, delivery, now)
        store.record_attempt(claim, FAILED, event=Event.FAIL_TEMPORARY, now=now)
    claim = _claim(store, delivery, now)
    final = store.record_attempt(claim, SENT, event=Event.SUCCEED, now=now)
    assert (DeliveryStatus.SUCCEEDED, 4) == (final.status, final.attempt_count)
    assert [1, 2, 3, 4] == [a.number for a in _history(store, delivery).attempts]


def test_fixed_reason_wins_over_given_reason(store: SQLStore, now: datetime) -> None:
    """A transition with a fixed reason writes it; the caller's reason fills only the gaps."""
    delivery = _new(store, now)
    claim = _claim(store, delivery, now)
    failure = classify(Bounced("no such user"))
    after = store.record_attempt(claim, failure, event=Event.BOUNCE, now=now, reason="ignored")
    assert (DeliveryStatus.CANCELLED, "bounced") == (after.status, after.reason)


def test_stale_record_attempt_changes_nothing(store: SQLStore, now: datetime) -> None:
    """A fenced write that matches nothing rolls back the attempt update too: nothing changes."""
    delivery = _new(store, now)
    claim = _claim(store, delivery, now)
    cancelled = store.cancel(delivery.id, now=now)
    before = _history(store, delivery)
    with pytest.raises(LeaseLostError) as raised:
        store.record_attempt(claim, SENT, event=Event.SUCCEED, now=now)
    assert (delivery.id, "w1", claim.delivery.version) == (
        raised.value.delivery_id,
        raised.value.owner,
        raised.value.expected_version,
    )
    assert before == _history(store, delivery)
    # cancel closed the in-flight attempt as unknown; the late write changed nothing.
    assert (Outcome.UNKNOWN, "cancel while the call was in flight") == (
        before.attempts[0].outcome,
        before.attempts[0].error,
    )
    assert cancelled == before.delivery


def test_illegal_event_writes_nothing(store: SQLStore, now: datetime) -> None:
    """EXHAUST from ready is illegal: IllegalTransitionError and no write."""
    delivery = _new(store, now)
    claim = _claim(store, delivery, now)
    before = _history(store, delivery)
    with pytest.raises(IllegalTransitionError):
        store.record_attempt(claim, FAILED, event=Event.EXHAUST, now=now)
    assert before == _history(store, delivery)


def test_provider_response_and_error_are_capped_not_rejected(tmp_path: Path, now: datetime) -> None:
    """Oversized responses become a truncation note and long errors are cut to the cap."""
    store = SQLStore(
        f"sqlite:///{tmp_path / 'caps.db'}", max_response_bytes=100, max_error_chars=50
    )
    store.create_all()
    delivery = _new(store, now)
    claim = _claim(store, delivery, now)
    huge = Classification(
        Outcome.FAILED,
        ErrorClass.TEMPORARY,
        {"body": "x" * 500, "odd": object(), "bad": "\ud800\x00"},
        error="E" * 5000,
    )
    store.record_attempt(claim, huge, event=Event.FAIL_TEMPORARY, now=now)
    (attempt,) = _history(store, delivery).attempts
    assert attempt.provider_response is not None
    assert True is attempt.provider_response["truncated"]
    assert attempt.provider_response["original_bytes"] > 500
    assert attempt.error is not None
    assert 50 == len(attempt.error)
    assert attempt.error.endswith("chars]")
    store.engine.dispose()


def test_caps_apply_on_every_database(store: SQLStore, now: datetime) -> None:
    """Surrogates, NUL and odd objects in a provider response are cleaned, never rejected."""
    delivery = _new(store, now)
    claim = _claim(store, delivery, now)
    odd = Classification(
        Outcome.FAILED,
        ErrorClass.TEMPORARY,
        {"bad": "a\ud800b\x00c", "odd": object()},
        error="boom\x00",
    )
    store.record_attempt(claim, odd, event=Event.FAIL_TEMPORARY, now=now)
    (attempt,) = _history(store, delivery).attempts
    assert {"bad": "a?b\ufffdc", "odd": "<object>"} == attempt.provider_response
    assert "boom\ufffd" == attempt.error


def test_exhaust_failed_delivery(store: SQLStore, now: datetime) -> None:
    """exhaust moves failed to cancelled/retries_exhausted under compare-and-set."""
    delivery = _new(store, now, max_attempts=1)
    failed = store.record_attempt(
        _claim(store, delivery, now), FAILED, event=Event.FAIL_TEMPORARY, now=now
    )
    with pytest.raises(StaleDeliveryError) as raised:
        store.exhaust(delivery.id, expected_version=failed.version - 1, now=now)
    assert (failed.version - 1, failed.version) == (
        raised.value.expected_version,
        raised.value.actual_version,
    )
    done = store.exhaust(delivery.id, expected_version=failed.version, now=now)
    assert (DeliveryStatus.CANCELLED, "retries_exhausted", failed.version + 1) == (
        done.status,
        done.reason,
        done.version,
    )
    with pytest.raises(IllegalTransitionError):
        store.exhaust(delivery.id, expected_version=done.version, now=now)


def test_suppress_and_cancel(store: SQLStore, now: datetime) -> None:
    """suppress writes the policy's reason; cancel is refused on a terminal delivery."""
    delivery = _new(store, now)
    suppressed = store.suppress(delivery.id, "opted_out", expected_version=None, now=now)
    assert (DeliveryStatus.SUPPRESSED, "opted_out") == (suppressed.status, suppressed.reason)
    with pytest.raises(IllegalTransitionError):
        store.cancel(delivery.id, now=now)
    with pytest.raises(DeliveryNotFoundError):
        store.cancel(uuid.uuid4(), now=now)


def test_cancel_while_leased_fences_the_worker(store: SQLStore, now: datetime) -> None:
    """Cancelling a leased delivery clears the lease and bumps version past the worker's."""
    delivery = _new(store, now)
    claim = _claim(store, delivery, now)
    cancelled = store.cancel(delivery.id, now=now)
    assert (DeliveryStatus.CANCELLED, "cancelled", None, claim.delivery.version + 1) == (
        cancelled.status,
        cancelled.reason,
        cancelled.lease_owner,
        cancelled.version,
    )
    with pytest.raises(LeaseLostError):
        store.record_attempt(claim, SENT, event=Event.SUCCEED, now=now)


def test_defer_moves_schedule_not_status(store: SQLStore, now: datetime) -> None:
    """defer sets scheduled_at and reason, counts the deferral and journals it."""
    delivery = _new(store, now)
    until = now + timedelta(hours=8)
    deferred = store.defer(delivery.id, until, "quiet_hours", expected_version=1, now=now)
    assert (DeliveryStatus.READY, 0, until, "quiet_hours", 1, 2) == (
        deferred.status,
        deferred.attempt_count,
        deferred.scheduled_at,
        deferred.reason,
        deferred.deferral_count,
        deferred.version,
    )
    entry = _history(store, delivery).journal[-1]
    assert (JournalKind.DEFERRED, "quiet_hours") == (entry.kind, entry.reason)
    with pytest.raises(StaleDeliveryError):
        store.defer(delivery.id, until, "again", expected_version=1, now=now)
    store.cancel(delivery.id, now=now)
    with pytest.raises(DeliveryTerminalError):
        store.defer(delivery.id, until, "late", expected_version=None, now=now)


def test_rescue_expired_claim(store: SQLStore, now: datetime) -> None:
    """A dead worker's claim shows up in expired_claims and resolves as unknown, fenced."""
    delivery = _new(store, now)
    claim = _claim(store, delivery, now, owner="dead")
    assert [] == store.expired_claims(now=now)
    later = now + timedelta(minutes=1)
    (rescued,) = store.expired_claims(now=later)
    assert claim == rescued
    after = store.record_attempt(rescued, UNKNOWN, event=Event.LOSE_OUTCOME_RETRYABLE, now=later)
    assert (DeliveryStatus.FAILED, None) == (after.status, after.lease_owner)
    assert [] == store.expired_claims(now=later)
    with pytest.raises(LeaseLostError):
        store.record_attempt(claim, SENT, event=Event.SUCCEED, now=later)


def test_stale_worker_after_takeover_is_fenced(store: SQLStore, now: datetime) -> None:
    """After rescue and a new claim, the original worker's late write is rejected, state intact."""
    delivery = _new(store, now)
    stale = _claim(store, delivery, now, owner="slow")
    later = now + timedelta(minutes=1)
    (rescued,) = store.expired_claims(now=later)
    store.record_attempt(rescued, UNKNOWN, event=Event.LOSE_OUTCOME_RETRYABLE, now=later)
    fresh = _claim(store, delivery, later, owner="fast")
    before = _history(store, delivery)
    with pytest.raises(LeaseLostError):
        store.record_attempt(stale, SENT, event=Event.SUCCEED, now=later)
    assert before == _history(store, delivery)
    assert ("fast", 2) == (fresh.delivery.lease_owner, fresh.attempt.number)


def test_due_lists_unheld_due_deliveries(store: SQLStore, now: datetime) -> None:
    """due returns live, due, unleased deliveries, optionally only those untouched since."""
    ready = _new(store, now)
    _new(store, now, scheduled_at=now + timedelta(hours=1))
    leased = _new(store, now)
    _claim(store, leased, now)
    store.cancel(_new(store, now).id, now=now)
    assert [ready.id] == [d.id for d in store.due(now=now)]
    assert [] == store.due(now=now, not_touched_since=now - timedelta(seconds=1))
    assert [ready.id] == [d.id for d in store.due(now=now, not_touched_since=now)]


def test_counts_oldest_and_recent_attempts(store: SQLStore, now: datetime) -> None:
    """Operator queries: counts by (status, reason), oldest live delivery, recent attempts."""
    first = _new(store, now - timedelta(hours=1), recipient="a")
    _new(store, now, recipient="a")
    store.suppress(_new(store, now).id, "opted_out", expected_version=None, now=now)
    store.record_attempt(_claim(store, first, now), FAILED, event=Event.FAIL_TEMPORARY, now=now)
    assert {
        (DeliveryStatus.READY, None): 1,
        (DeliveryStatus.FAILED, None): 1,
        (DeliveryStatus.SUPPRESSED, "opted_out"): 1,
    } == store.counts()
    oldest = store.oldest_non_terminal()
    assert oldest is not None
    assert first.id == oldest.id
    assert 1 == store.count_recent_attempts(channel="email", recipient="a", since=now)
    assert 0 == store.count_recent_attempts(
        channel="email", recipient="a", since=now + timedelta(seconds=1)
    )
