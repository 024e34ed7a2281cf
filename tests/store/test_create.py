"""Creating deliveries: roundtrip, idempotency, transactional enqueue, literal values."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from chimeway_core.errors import ChimewayError, DeliveriesVanishedError, InvalidDeliveryError
from chimeway_core.ledger import create as creating
from chimeway_core.records import Delivery, JournalKind, NewDelivery
from chimeway_core.schema import DeliveryRow
from chimeway_core.states import DeliveryStatus, Event
from chimeway_core.store import OutboxItem, SQLStore
from tests.services import truncate_tables


def _delivery_rows(store: SQLStore) -> int:
    with store.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(DeliveryRow)).scalar_one())


def test_create_get_history_roundtrip(store: SQLStore, now: datetime) -> None:
    """A created delivery reads back equal, with one created journal entry and one outbox row."""
    spec = NewDelivery(
        channel="email",
        recipient="ada@example.com",
        payload={"subject": "Hi", "n": [1, 2.5, None, True]},
        notification_key="welcome",
        idempotency_key="welcome-ada",
        max_attempts=3,
        expires_at=now + timedelta(days=1),
        metadata={"tenant": "acme"},
    )
    created = store.create(spec, now=now)
    assert created.created
    delivery = created.delivery
    assert delivery == store.get(delivery.id)
    assert (DeliveryStatus.READY, 0, 1, now) == (
        delivery.status,
        delivery.attempt_count,
        delivery.version,
        delivery.scheduled_at,
    )
    assert {"tenant": "acme"} == delivery.metadata
    history = store.history(delivery.id)
    assert history is not None
    assert delivery == history.delivery
    assert () == history.attempts
    assert [JournalKind.CREATED] == [entry.kind for entry in history.journal]
    assert 1 == store.outbox_size()


def test_returned_datetimes_are_aware_utc(store: SQLStore) -> None:
    """A non-UTC aware datetime goes in and comes back as the same instant in UTC."""
    tokyo = datetime(2030, 1, 1, 9, 0, tzinfo=UTC).astimezone(ZoneInfo("Asia/Tokyo"))
    created = store.create(NewDelivery(channel="c", recipient="r", scheduled_at=tokyo), now=tokyo)
    fetched = store.get(created.delivery.id)
    assert fetched is not None
    assert (tokyo, UTC) == (fetched.scheduled_at, fetched.scheduled_at.tzinfo)
    assert UTC == fetched.created_at.tzinfo


def test_unknown_id_reads_none(store: SQLStore) -> None:
    """get and history of an id nobody created return None."""
    unknown = uuid.uuid4()
    assert (None, None) == (store.get(unknown), store.history(unknown))


def test_idempotency_key_defaults_to_the_id(store: SQLStore, now: datetime) -> None:
    """Without an idempotency key the delivery's own id (as text) is used."""
    delivery = store.create(NewDelivery(channel="c", recipient="r"), now=now).delivery
    assert str(delivery.id) == delivery.idempotency_key


def test_create_is_idempotent_per_channel_and_key(store: SQLStore, now: datetime) -> None:
    """A repeat returns the first delivery with created=False; another channel is separate."""
    first = store.create(NewDelivery(channel="email", recipient="a", idempotency_key="k"), now=now)
    again = store.create(NewDelivery(channel="email", recipient="a", idempotency_key="k"), now=now)
    other = store.create(NewDelivery(channel="sms", recipient="a", idempotency_key="k"), now=now)
    assert (True, False, True) == (first.created, again.created, other.created)
    assert first.delivery == again.delivery
    assert 2 == _delivery_rows(store)
    assert 2 == store.outbox_size()


def test_create_suppressed_has_no_outbox_row(store: SQLStore, now: datetime) -> None:
    """With suppress_reason the delivery is born suppressed, journals it, and is never relayed."""
    spec = NewDelivery(channel="c", recipient="r")
    delivery = store.create(spec, now=now, suppress_reason="opted_out").delivery
    assert (DeliveryStatus.SUPPRESSED, "opted_out") == (delivery.status, delivery.reason)
    history = store.history(delivery.id)
    assert history is not None
    assert [
        (JournalKind.CREATED, None, DeliveryStatus.READY),
        (JournalKind.TRANSITION, Event.SUPPRESS.value, DeliveryStatus.SUPPRESSED),
    ] == [(entry.kind, entry.event, entry.to_status) for entry in history.journal]
    assert 0 == store.outbox_size()


def test_create_many_batches_and_dedupes(store: SQLStore, now: datetime) -> None:
    """create_many keeps spec order, creates each key once and reports repeats as not created."""
    store.create(NewDelivery(channel="c", recipient="old", idempotency_key="dup"), now=now)
    specs = [NewDelivery(channel="c", recipient=f"r{i}") for i in range(1200)]
    specs += [
        NewDelivery(channel="c", recipient="old", idempotency_key="dup"),
        NewDelivery(channel="c", recipient="x", idempotency_key="twice"),
        NewDelivery(channel="c", recipient="x", idempotency_key="twice"),
    ]
    results = store.create_many(specs, now=now, suppress_reasons=[None] * len(specs))
    assert [True] * 1200 + [False, True, False] == [result.created for result in results]
    assert [f"r{i}" for i in range(1200)] == [r.delivery.recipient for r in results[:1200]]
    assert "old" == results[1200].delivery.recipient
    assert results[1201].delivery == results[1202].delivery
    assert 1202 == _delivery_rows(store)
    assert 1202 == store.outbox_size()


def test_create_many_suppress_if_sees_each_validated_delivery(
    store: SQLStore, now: datetime
) -> None:
    """suppress_if gets each delivery as written (id, defaults); its reasons suppress."""
    seen: list[uuid.UUID] = []

    def suppress_if(delivery: Delivery) -> str | None:
        seen.append(delivery.id)
        assert (DeliveryStatus.READY, str(delivery.id)) == (
            delivery.status,
            delivery.idempotency_key,
        )
        return "opted_out" if delivery.recipient.endswith("1") else None

    specs = [NewDelivery(channel="c", recipient=f"r{i}") for i in range(3)]
    results = store.create_many(specs, now=now, suppress_if=suppress_if)
    assert [r.delivery.id for r in results] == seen
    assert [
        (DeliveryStatus.READY, None),
        (DeliveryStatus.SUPPRESSED, "opted_out"),
        (DeliveryStatus.READY, None),
    ] == [(r.delivery.status, r.delivery.reason) for r in results]
    assert [store.get(r.delivery.id) for r in results] == [r.delivery for r in results]
    assert 2 == store.outbox_size()


def test_create_many_suppress_if_repeats_return_the_written_delivery(
    store: SQLStore, now: datetime
) -> None:
    """A repeated key is asked about, but what comes back is the delivery written first."""
    first = store.create(NewDelivery(channel="c", recipient="old", idempotency_key="k"), now=now)
    specs = [
        NewDelivery(channel="c", recipient="old", idempotency_key="k"),
        NewDelivery(channel="c", recipient="x", idempotency_key="twice"),
        NewDelivery(channel="c", recipient="x", idempotency_key="twice"),
    ]
    results = store.create_many(specs, now=now, suppress_if=lambda _d: None)
    assert [False, True, False] == [r.created for r in results]
    assert first.delivery == results[0].delivery
    assert "x" == results[2].delivery.recipient
    assert results[1].delivery == results[2].delivery == store.get(results[1].delivery.id)


def test_create_many_suppress_if_runs_after_validation_and_can_veto(
    store: SQLStore, now: datetime
) -> None:
    """An invalid spec fails before suppress_if is asked; suppress_if raising writes nothing."""
    asked: list[Delivery] = []
    bad = [NewDelivery(channel="c", recipient="ok"), NewDelivery(channel="c", recipient="")]
    with pytest.raises(InvalidDeliveryError):
        store.create_many(bad, now=now, suppress_if=lambda d: asked.append(d) or None)
    assert [] == asked

    def veto(_delivery: Delivery) -> str | None:
        raise LookupError("no preferences")

    with pytest.raises(LookupError):
        store.create_many([NewDelivery(channel="c", recipient="ok")], now=now, suppress_if=veto)
    with pytest.raises(TypeError, match="not both"):
        store.create_many(
            [NewDelivery(channel="c", recipient="ok")],
            now=now,
            suppress_reasons=[None],
            suppress_if=lambda _d: None,
        )
    assert 0 == _delivery_rows(store)


def test_create_in_callers_session_commits_with_it(store: SQLStore, now: datetime) -> None:
    """Inside a caller's Session the delivery and its outbox row appear only on commit."""
    spec = NewDelivery(channel="c", recipient="r", idempotency_key="tx")
    with Session(store.engine) as session:
        created = store.create(spec, now=now, session=session)
        assert 0 == store.outbox_size()
        session.commit()
    assert created.delivery == store.get(created.delivery.id)
    assert 1 == store.outbox_size()


def test_duplicate_in_callers_session_does_not_abort_it(store: SQLStore, now: datetime) -> None:
    """A duplicate key inside a caller's transaction returns the existing row and the
    transaction stays usable."""
    first = store.create(NewDelivery(channel="c", recipient="r", idempotency_key="k"), now=now)
    with Session(store.engine) as session:
        again = store.create(
            NewDelivery(channel="c", recipient="r", idempotency_key="k"), now=now, session=session
        )
        fresh = store.create(NewDelivery(channel="c", recipient="r2"), now=now, session=session)
        session.commit()
    assert (False, first.delivery) == (again.created, again.delivery)
    assert fresh.delivery == store.get(fresh.delivery.id)


def test_rolled_back_sessions_leave_nothing(store: SQLStore, now: datetime) -> None:
    """1,000 rolled-back transactions leave no delivery, no outbox row, and nothing to relay."""
    with Session(store.engine) as session:
        for index in range(1000):
            store.create(NewDelivery(channel="c", recipient=f"r{index}"), now=now, session=session)
            session.rollback()
    sent: list[OutboxItem] = []
    assert (0, 0) == (_delivery_rows(store), store.outbox_size())
    assert 0 == store.relay_outbox(sent.extend)
    assert [] == sent


METACHARACTERS = [
    "'; DROP TABLE chimeway_deliveries; --",
    'quote " double',
    "100% _wild_ %s %(name)s",
    "back\\slash \\' \\\\",
    "semi;colon -- comment /* block */",
    "unicode é ü 漢字 🎉",
]


def test_sql_metacharacters_roundtrip_literally(store: SQLStore, now: datetime) -> None:
    """Quotes, semicolons, comments, percent signs and backslashes are stored verbatim."""
    for index, value in enumerate(METACHARACTERS):
        spec = NewDelivery(
            channel=f"ch{index}{value}",
            recipient=value,
            payload={value: value},
            notification_key=value,
            idempotency_key=value,
            metadata={"v": value},
        )
        created = store.create(spec, now=now)
        fetched = store.get(created.delivery.id)
        assert fetched is not None
        assert (value, value, value, {value: value}, {"v": value}) == (
            fetched.recipient,
            fetched.idempotency_key,
            fetched.notification_key,
            fetched.payload,
            fetched.metadata,
        )
        assert False is store.create(spec, now=now).created


_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00")),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00")),
            children,
            max_size=4,
        )
    ),
    max_leaves=12,
)
_text = st.text(
    st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"), min_size=1
).filter(str.strip)


@pytest.fixture(scope="module")
def module_sqlite_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SQLStore]:
    """One SQLite store shared by the examples of a property test."""
    store = SQLStore(f"sqlite:///{tmp_path_factory.mktemp('hypothesis') / 'ledger.db'}")
    store.create_all()
    yield store
    store.engine.dispose()


@settings(max_examples=60)
@given(payload=_json, recipient=_text)
def test_arbitrary_json_and_unicode_roundtrip_on_sqlite(
    module_sqlite_store: SQLStore, payload: object, recipient: str
) -> None:
    """Any JSON payload and any valid-unicode recipient read back exactly (SQLite)."""
    now = datetime(2030, 1, 1, tzinfo=UTC)
    spec = NewDelivery(channel="c", recipient=recipient, payload=payload)
    created = module_sqlite_store.create(spec, now=now)
    fetched = module_sqlite_store.get(created.delivery.id)
    assert fetched is not None
    assert (payload, recipient) == (fetched.payload, fetched.recipient)


@settings(max_examples=40)
@given(
    payloads=st.lists(_json, min_size=1, max_size=5),
    recipient=_text,
    key=_text | st.none(),
    offset_minutes=st.integers(min_value=-14 * 60, max_value=14 * 60),
    microsecond=st.integers(min_value=0, max_value=999_999),
)
def test_a_batch_reads_back_exactly_on_postgres(
    postgres_engine: Engine,
    payloads: list[object],
    recipient: str,
    key: str | None,
    offset_minutes: int,
    microsecond: int,
) -> None:
    """Any JSON payloads, keys and times in any zone survive a PostgreSQL batch exactly.

    A batch born ready goes to the server as one JSON document; this checks
    nothing is lost or changed on the way (floats, big ints, unicode, NULs
    refused earlier, microseconds, offsets).
    """
    store = SQLStore(postgres_engine)
    now = datetime(2030, 1, 1, microsecond=microsecond, tzinfo=UTC)
    zone = timezone(timedelta(minutes=offset_minutes))
    specs = [
        NewDelivery(
            channel="c",
            recipient=recipient,
            payload=payload,
            notification_key=key,
            idempotency_key=None if key is None else f"{key}-{index}",
            max_attempts=index + 1,
            scheduled_at=(now + timedelta(seconds=index)).astimezone(zone),
            expires_at=None if index % 2 else (now + timedelta(days=1)).astimezone(zone),
            metadata={"i": index, "k": key},
        )
        for index, payload in enumerate(payloads)
    ]
    try:
        created = store.create_many(specs, now=now)
        for spec, result in zip(specs, created, strict=True):
            fetched = store.get(result.delivery.id)
            assert fetched == result.delivery
            assert (
                spec.payload,
                spec.recipient,
                spec.notification_key,
                spec.max_attempts,
                spec.scheduled_at,
                spec.expires_at,
                spec.metadata,
            ) == (
                fetched.payload,
                fetched.recipient,
                fetched.notification_key,
                fetched.max_attempts,
                fetched.scheduled_at,
                fetched.expires_at,
                fetched.metadata,
            )
            assert fetched.idempotency_key == (spec.idempotency_key or str(fetched.id))
        assert len(specs) == store.outbox_size()
    finally:
        truncate_tables(postgres_engine)


def test_a_none_payload_is_stored_as_json_null(store: SQLStore, now: datetime) -> None:
    """A None payload is JSON null in the column, not SQL NULL, alone or in a batch."""
    alone = store.create(NewDelivery(channel="c", recipient="r", payload=None), now=now)
    batch = store.create_many(
        [NewDelivery(channel="c", recipient=f"r{i}", payload=None) for i in range(3)], now=now
    )
    ids = [alone.delivery.id, *(created.delivery.id for created in batch)]
    with store.engine.connect() as conn:
        nulls = conn.execute(
            select(func.count())
            .select_from(DeliveryRow)
            .where(DeliveryRow.id.in_(ids), DeliveryRow.payload.is_(None))
        ).scalar_one()
    assert 0 == nulls
    assert [None] * 4 == [store.get(i).payload for i in ids]  # type: ignore[union-attr]


def test_keys_that_keep_vanishing_raise_deliveries_vanished(
    store: SQLStore, now: datetime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A key taken on insert but never found on read-back, round after round, is reported."""
    store.create(NewDelivery(channel="email", recipient="r", idempotency_key="k"), now=now)
    # As if a prune deleted the delivery holding "k" between each insert and its read-back.
    monkeypatch.setattr(creating, "_existing", lambda *_: {})
    spec = NewDelivery(channel="email", recipient="r", idempotency_key="k")
    with pytest.raises(DeliveriesVanishedError) as raised:
        store.create_many([spec], now=now)
    assert isinstance(raised.value, ChimewayError)
    assert isinstance(raised.value, RuntimeError)
    assert ((("email", "k"),), 3) == (raised.value.keys, raised.value.tries)
    assert "deliveries vanished 3 times as they were read back: [('email', 'k')]" == str(
        raised.value
    )
    assert 1 == _delivery_rows(store)
