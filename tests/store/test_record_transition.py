"""The ledger takes what the engine decided: a transition to record, a suppression reason."""

from __future__ import annotations

from datetime import datetime

import pytest

from chimeway_core.errors import IllegalTransitionError
from chimeway_core.outcomes import Sent, TemporaryFailure, classify
from chimeway_core.records import Claim, Delivery, DeliveryHistory, NewDelivery, resend_key
from chimeway_core.states import DeliveryStatus, Event, apply_event
from chimeway_core.store import SQLStore


def _claimed(store: SQLStore, now: datetime) -> Claim:
    delivery = store.create(NewDelivery(channel="email", recipient="r"), now=now).delivery
    claim = store.claim(delivery.id, owner="w1", lease_seconds=30, now=now)
    assert claim is not None
    return claim


def _history(store: SQLStore, claim: Claim) -> DeliveryHistory:
    history = store.history(claim.delivery.id)
    assert history is not None
    return history


def test_a_transition_records_as_its_event_would(store: SQLStore, now: datetime) -> None:
    """The same row, attempt and journal whether given the event or the transition."""
    by_event, by_transition = _claimed(store, now), _claimed(store, now)
    shape = classify(TemporaryFailure("busy"))
    after_event = store.record_attempt(by_event, shape, event=Event.FAIL_TEMPORARY, now=now)
    after_transition = store.record_attempt(
        by_transition,
        shape,
        transition=apply_event(DeliveryStatus.READY, Event.FAIL_TEMPORARY),
        now=now,
    )
    first, second = _history(store, by_event), _history(store, by_transition)
    assert (after_event.status, after_event.reason, after_event.version) == (
        after_transition.status,
        after_transition.reason,
        after_transition.version,
    )
    assert [(e.event, e.from_status, e.to_status, e.reason) for e in first.journal] == [
        (e.event, e.from_status, e.to_status, e.reason) for e in second.journal
    ]
    assert [(a.outcome, a.error) for a in first.attempts] == [
        (a.outcome, a.error) for a in second.attempts
    ]


def test_a_transition_from_another_status_writes_nothing(store: SQLStore, now: datetime) -> None:
    """A transition that does not start at the claimed status is illegal: nothing is written."""
    claim = _claimed(store, now)
    before = _history(store, claim)
    wrong = apply_event(DeliveryStatus.FAILED, Event.SUCCEED)
    with pytest.raises(IllegalTransitionError) as raised:
        store.record_attempt(claim, classify(Sent()), transition=wrong, now=now)
    assert (DeliveryStatus.READY, Event.SUCCEED) == (raised.value.status, raised.value.event)
    assert before == _history(store, claim)


@pytest.mark.parametrize("both", [True, False])
def test_exactly_one_of_event_and_transition(store: SQLStore, now: datetime, both: bool) -> None:
    """Neither or both is a TypeError, before anything is written."""
    claim = _claimed(store, now)
    before = _history(store, claim)
    given = (
        {"event": Event.SUCCEED, "transition": apply_event(DeliveryStatus.READY, Event.SUCCEED)}
        if both
        else {}
    )
    with pytest.raises(TypeError, match="record_attempt takes event or transition, exactly one"):
        store.record_attempt(claim, classify(Sent()), now=now, **given)  # type: ignore[arg-type]
    assert before == _history(store, claim)


def test_resend_still_asks_suppress_if_with_the_drafted_copy(
    store: SQLStore, now: datetime
) -> None:
    """The callback form callers used before drafts: it sees the copy, and its reason holds."""
    original = store.create(NewDelivery(channel="email", recipient="r"), now=now).delivery
    store.cancel(original.id, now=now)
    seen: list[tuple[str, str]] = []

    def suppress_if(copy: Delivery) -> str:
        seen.append((copy.recipient, copy.idempotency_key))
        return "opted out since"

    resent = store.resend(original.id, now=now, suppress_if=suppress_if)
    assert [("r", resend_key(original.id))] == seen
    assert (DeliveryStatus.SUPPRESSED, "opted out since", True) == (
        resent.copy.status,
        resent.copy.reason,
        resent.created,
    )
    with pytest.raises(TypeError, match="give suppress_if with a delivery id"):
        store.resend(original.id, now=now, suppress_if=suppress_if, suppress_reason="x")
