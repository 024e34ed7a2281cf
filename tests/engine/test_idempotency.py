"""notify() and an idempotency key: a repeat gets its delivery, another request is refused.

Refused means nothing happens: no delivery, journal, attempt or outbox row,
no job queued, no telemetry event; on SQLite and PostgreSQL. A channel's
notify-time check (the webhook's key as a header) refuses the same way.
"""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import func, select

from chimeway_backends.memory import MemoryBackend
from chimeway_core import (
    IdempotencyKeyConflictError,
    InvalidDeliveryError,
    NewDelivery,
    SQLStore,
    TelemetryEvent,
    WebhookChannel,
    resend_key,
)
from chimeway_core.policies import PolicyContext, Proceed
from chimeway_core.records import Delivery
from chimeway_core.schema import AttemptRow, DeliveryRow, JournalRow, OutboxRow
from chimeway_core.telemetry import Telemetry
from chimeway_core.testing import FakeChannel
from tests.engine.conftest import MakeEngine


def _tables(store: SQLStore) -> tuple[int, ...]:
    """How many deliveries, attempts, journal entries and outbox rows the ledger holds."""
    with store.engine.connect() as conn:
        return tuple(
            int(conn.execute(select(func.count()).select_from(table)).scalar_one())
            for table in (DeliveryRow, AttemptRow, JournalRow, OutboxRow)
        )


class _Heard:
    """Every telemetry event, and every delivery a policy was shown."""

    def __init__(self) -> None:
        self.events: list[TelemetryEvent] = []
        self.shown: list[Delivery] = []
        self.name = "heard"

    def __call__(self, event: TelemetryEvent, meta: Any) -> None:
        self.events.append(event)

    def evaluate(self, delivery: Delivery, context: PolicyContext) -> Proceed:
        self.shown.append(delivery)
        return Proceed()


@pytest.fixture
def heard() -> _Heard:
    return _Heard()


@pytest.fixture
def engine(make_engine: MakeEngine, heard: _Heard) -> Any:
    telemetry = Telemetry()
    telemetry.subscribe(heard)
    return make_engine({"sms": FakeChannel()}, telemetry=telemetry, policies=(heard,))


def test_a_repeat_returns_the_delivery_and_another_request_is_refused(
    engine: Any, store: SQLStore, backend: MemoryBackend, heard: _Heard
) -> None:
    """The finding: a reused key with another recipient or payload got the first delivery."""
    first = engine.notify("sms", "+15550100", {"text": "code 1234"}, idempotency_key="otp-1")
    again = engine.notify("sms", "+15550100", {"text": "code 1234"}, idempotency_key="otp-1")
    assert first == again
    assert [TelemetryEvent.DUPLICATE_IGNORED] == [
        e for e in heard.events if e is TelemetryEvent.DUPLICATE_IGNORED
    ]
    written, jobs, events = _tables(store), backend.pending(), list(heard.events)
    for recipient, payload in [("+15550199", {"text": "code 1234"}), ("+15550100", {"x": 1})]:
        with pytest.raises(IdempotencyKeyConflictError) as raised:
            engine.notify("sms", recipient, payload, idempotency_key="otp-1")
        assert (("sms", "otp-1"),) == raised.value.keys
        assert "1234" not in str(raised.value)
        assert "+1555" not in str(raised.value)
    # A refused request reports its notify span failing, and nothing else.
    refused = [TelemetryEvent.NOTIFY_START, TelemetryEvent.NOTIFY_EXCEPTION] * 2
    assert (written, jobs, events + refused) == (_tables(store), backend.pending(), heard.events)


def test_notify_says_whether_it_created_the_delivery_or_found_it(
    engine: Any, store: SQLStore, backend: MemoryBackend
) -> None:
    """found_existing is True on a repeat's delivery only, and never read from the ledger."""
    first = engine.notify("sms", "+15550100", idempotency_key="welcome-7")
    again = engine.notify("sms", "+15550100", idempotency_key="welcome-7")
    assert (False, True) == (first.found_existing, again.found_existing)
    assert first == again
    assert not engine.get(first.id).delivery.found_existing
    specs = [
        NewDelivery(channel="sms", recipient="+15550100", idempotency_key="welcome-7"),
        NewDelivery(channel="sms", recipient="+15550101", idempotency_key="welcome-8"),
        NewDelivery(channel="sms", recipient="+15550101", idempotency_key="welcome-8"),
    ]
    assert [True, False, True] == [d.found_existing for d in engine.notify_many(specs)]
    assert [False] * 2 == [d.found_existing for d in store.find()]
    assert 2 == len(backend.pending())


def test_notify_many_with_a_conflict_writes_none_and_names_every_conflict(
    engine: Any, store: SQLStore, backend: MemoryBackend, heard: _Heard
) -> None:
    """New, repeated and conflicting specs: refused whole, before any job or delivery event."""
    engine.notify("sms", "+15550100", {"n": 1}, idempotency_key="a")
    engine.notify("sms", "+15550100", {"n": 2}, idempotency_key="b")
    written, jobs, events = _tables(store), backend.pending(), list(heard.events)
    specs = [
        NewDelivery(channel="sms", recipient="+15550101"),  # new
        NewDelivery(channel="sms", recipient="+15550102", idempotency_key="c"),  # new
        NewDelivery(channel="sms", recipient="+15550100", payload={"n": 1}, idempotency_key="a"),
        NewDelivery(channel="sms", recipient="+15550100", payload={"n": 3}, idempotency_key="b"),
        NewDelivery(channel="sms", recipient="+15550103", idempotency_key="c"),  # clashes inside
    ]
    with pytest.raises(IdempotencyKeyConflictError) as raised:
        engine.notify_many(specs)
    assert (("sms", "b"), ("sms", "c")) == raised.value.keys
    refused = [TelemetryEvent.NOTIFY_START, TelemetryEvent.NOTIFY_EXCEPTION]
    assert (written, jobs, events + refused) == (_tables(store), backend.pending(), heard.events)
    # Without the conflicts the batch goes through: the new written, the repeat returned.
    first = store.find(idempotency_key="a")
    delivered = engine.notify_many(specs[:3])
    assert first == [delivered[2]]
    assert written[0] + 2 == _tables(store)[0]


def test_a_key_in_the_resend_namespace_is_refused_at_notify(
    engine: Any, store: SQLStore, backend: MemoryBackend
) -> None:
    """A copy's key cannot be squatted by notify(): the resend of the original would take it."""
    original = engine.notify("sms", "+15550100", {"text": "hi"})
    engine.cancel(original.id)
    written = _tables(store)
    with pytest.raises(InvalidDeliveryError) as raised:
        engine.notify("sms", "+15550100", {"text": "hi"}, idempotency_key=resend_key(original.id))
    assert "idempotency_key" == raised.value.field
    assert written == _tables(store)
    resent = engine.resend(original.id)
    assert resent.created


@pytest.mark.extras  # the webhook channel needs httpx
@pytest.mark.parametrize("key", ["a\r\nX-Injected: 1", "clé", "a\x01", " zq"])
def test_a_webhook_refuses_at_notify_a_key_that_cannot_be_a_header(
    make_engine: MakeEngine, store: SQLStore, backend: MemoryBackend, heard: _Heard, key: str
) -> None:
    """The channel's check runs at notify(), before the policies: nothing written or queued."""
    webhook = WebhookChannel("https://hooks.example.com/in")
    engine = make_engine({"hook": webhook}, policies=(heard,))
    with pytest.raises(InvalidDeliveryError) as raised:
        engine.notify("hook", "tenant-1", {"event": "paid"}, idempotency_key=key)
    assert "idempotency_key" == raised.value.field
    specs = [
        NewDelivery(channel="hook", recipient="tenant-1", idempotency_key="fine"),
        NewDelivery(channel="hook", recipient="tenant-1", idempotency_key=key),
    ]
    with pytest.raises(InvalidDeliveryError) as raised:
        engine.notify_many(specs)
    assert "specs[1].idempotency_key" == raised.value.field
    assert ((0, 0, 0, 0), [], []) == (_tables(store), backend.pending(), heard.shown)
    # A key that can be a header is accepted as before.
    assert engine.notify("hook", "tenant-1", {"event": "paid"}, idempotency_key="order 42")
