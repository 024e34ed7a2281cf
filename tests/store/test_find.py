"""SQLStore.find: the deliveries every filter given selects, newest first, on both databases."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest

from chimeway_core.records import NewDelivery
from chimeway_core.states import DeliveryStatus
from chimeway_core.store import SQLStore


def test_each_filter_narrows_and_the_newest_come_first(store: SQLStore, now: datetime) -> None:
    """status, reason, channel, recipient, key and created_since combine with AND."""

    def new(at: datetime, **fields: Any) -> Any:
        spec = NewDelivery(**({"channel": "sms", "recipient": "+1"} | fields))
        return store.create(spec, now=at).delivery

    oldest = new(now - timedelta(days=2), idempotency_key="k-old")
    email = new(now - timedelta(days=1), channel="email", recipient="a@example.test")
    cancelled = store.cancel(new(now - timedelta(hours=1), recipient="+2").id, now=now)
    newest = new(now, recipient="+2")

    assert [newest.id, cancelled.id, email.id, oldest.id] == [d.id for d in store.find()]
    assert [newest.id, cancelled.id] == [d.id for d in store.find(limit=2)]
    assert [cancelled] == store.find(status=DeliveryStatus.CANCELLED, reason="cancelled")
    assert [email.id] == [d.id for d in store.find(channel="email")]
    assert [newest.id, cancelled.id] == [d.id for d in store.find(recipient="+2")]
    assert [oldest.id] == [d.id for d in store.find(channel="sms", idempotency_key="k-old")]
    recent = store.find(created_since=now - timedelta(hours=2))
    assert [newest.id, cancelled.id] == [d.id for d in recent]
    assert [] == store.find(status=DeliveryStatus.SUCCEEDED)


@pytest.mark.parametrize(
    ("filters", "error", "message"),
    [
        ({"status": "ready"}, TypeError, "status must be a DeliveryStatus"),
        ({"channel": 3}, TypeError, "channel must be a str"),
        ({"limit": 0}, ValueError, "limit"),
        ({"created_since": datetime(2030, 1, 1)}, ValueError, "timezone-aware"),
    ],
)
def test_a_wrong_filter_is_refused_by_name(
    store: SQLStore, filters: dict[str, Any], error: type[Exception], message: str
) -> None:
    """A filter of the wrong kind or out of range raises before anything is read."""
    with pytest.raises(error, match=message):
        store.find(**filters)
