"""The count a cap across channels uses: a recipient's attempts since an instant."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from chimeway_core.outcomes import Sent, classify
from chimeway_core.records import NewDelivery
from chimeway_core.states import Event
from chimeway_core.store import SQLStore


def _attempt(store: SQLStore, channel: str, recipient: str, at: datetime) -> None:
    """A delivery created at ``at`` whose one attempt started (and succeeded) then."""
    delivery = store.create(NewDelivery(channel=channel, recipient=recipient), now=at).delivery
    claim = store.claim(delivery.id, owner="w", lease_seconds=30, now=at)
    assert claim is not None
    store.record_attempt(claim, classify(Sent()), event=Event.SUCCEED, now=at)


def test_counts_a_recipients_attempts_across_channels(store: SQLStore, now: datetime) -> None:
    """Every channel by default, only the named ones otherwise; never other recipients."""
    for channel, minutes_ago in (("email", 1), ("sms", 2), ("push", 3), ("email", 20)):
        _attempt(store, channel, "alice", now - timedelta(minutes=minutes_ago))
    _attempt(store, "email", "bob", now - timedelta(minutes=1))
    # A delivery never attempted counts for nothing.
    store.create(NewDelivery(channel="sms", recipient="alice"), now=now)
    since = now - timedelta(minutes=10)
    assert 3 == store.count_recipient_attempts(recipient="alice", since=since)
    assert 4 == store.count_recipient_attempts(recipient="alice", since=now - timedelta(hours=1))
    assert 2 == store.count_recipient_attempts(
        recipient="alice", since=since, channels={"email", "push", "chat"}
    )
    assert 1 == store.count_recipient_attempts(recipient="alice", since=since, channels=["sms"])
    assert 0 == store.count_recipient_attempts(recipient="alice", since=since, channels=())
    assert 1 == store.count_recipient_attempts(recipient="bob", since=since)
    # ``since`` is inclusive, as the channel count's is.
    assert 1 == store.count_recipient_attempts(recipient="alice", since=now - timedelta(minutes=1))


def test_counts_every_attempt_of_a_retried_delivery(store: SQLStore, now: datetime) -> None:
    """Attempts count, not deliveries: a retry is one more, as in the channel count."""
    delivery = store.create(
        NewDelivery(channel="sms", recipient="alice", max_attempts=3), now=now
    ).delivery
    for n in range(2):
        at = now + timedelta(seconds=n)
        claim = store.claim(delivery.id, owner="w", lease_seconds=30, now=at)
        assert claim is not None
        store.record_attempt(claim, classify(Sent()), event=Event.FAIL_TEMPORARY, now=at)
    assert 2 == store.count_recipient_attempts(recipient="alice", since=now)
    assert 2 == store.count_recent_attempts(channel="sms", recipient="alice", since=now)


def test_counts_inside_the_lock(store: SQLStore, now: datetime) -> None:
    """The lock's count runs on its own connection and sees its own claim."""
    _attempt(store, "email", "alice", now - timedelta(minutes=1))
    delivery = store.create(NewDelivery(channel="sms", recipient="alice"), now=now).delivery
    since = now - timedelta(minutes=5)
    with store.lock(delivery.id) as locked:
        assert 1 == locked.recipient_attempts("alice", None, since)
        assert 0 == locked.recipient_attempts("alice", frozenset({"sms"}), since)
        locked.claim(owner="w", lease_seconds=30, now=now)
        assert 2 == locked.recipient_attempts("alice", None, since)
        assert 1 == locked.recipient_attempts("alice", frozenset({"sms"}), since)


def test_arguments_are_checked(store: SQLStore, now: datetime) -> None:
    """A naive ``since`` or a bare string for ``channels`` is refused."""
    with pytest.raises(ValueError, match="since"):
        store.count_recipient_attempts(recipient="alice", since=now.replace(tzinfo=None))
    with pytest.raises(TypeError, match="channels"):
        store.count_recipient_attempts(recipient="alice", since=now, channels="email")
