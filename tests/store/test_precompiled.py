"""Precompiled: a Core statement run as driver SQL converts exactly as Core does."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import Connection, bindparam, event, select, update

from chimeway_core.precompiled import Precompiled
from chimeway_core.records import NewDelivery
from chimeway_core.schema import AttemptRow, DeliveryRow
from chimeway_core.store import SQLStore

_D = DeliveryRow.__table__.c
_A = AttemptRow.__table__.c

#: An UPDATE with a parameter used twice, a constant of its own (version + 1),
#: a literal NULL, a JSON-free RETURNING of a converted type (UTC timestamp).
_TOUCH = (
    update(DeliveryRow.__table__)
    .where(_D.id == bindparam("b_id"), _D.updated_at <= bindparam("b_at"))
    .values(
        updated_at=bindparam("b_at"),
        scheduled_at=bindparam("b_at"),
        version=_D.version + 1,
        lease_owner=None,
    )
    .returning(_D.id, _D.updated_at, _D.version)
)
#: A statement whose parameters include JSON (converted by the column's type).
_RESPOND = (
    update(AttemptRow.__table__)
    .where(_A.delivery_id == bindparam("b_id"))
    .values(provider_response=bindparam("b_response", type_=_A.provider_response.type))
)


@pytest.fixture
def now() -> datetime:
    """A fixed aware instant with microseconds."""
    return datetime(2030, 1, 1, 12, 0, 0, 123456, tzinfo=UTC)


def _created(store: SQLStore, now: datetime) -> uuid.UUID:
    return store.create(NewDelivery(channel="c", recipient="r"), now=now).delivery.id


def _row(store: SQLStore, delivery_id: uuid.UUID) -> Any:
    with store.engine.connect() as conn:
        return conn.execute(select(DeliveryRow.__table__).where(_D.id == delivery_id)).one()


def test_parameters_convert_as_core_converts(store: SQLStore, now: datetime) -> None:
    """A timestamp in any zone is written as the same instant Core would write (UTC,
    naive on SQLite), once even when used twice; the statement's own constants stay."""
    delivery_id = _created(store, now)
    later = (now + timedelta(minutes=5)).astimezone(timezone(timedelta(hours=-7)))
    with store.engine.begin() as conn:
        row = Precompiled(_TOUCH).first(conn, {"b_id": delivery_id, "b_at": later})
    assert row is not None
    returned_id, updated_at, version = row
    assert (delivery_id, later, 2) == (returned_id, updated_at, version)
    assert UTC == updated_at.tzinfo
    stored = _row(store, delivery_id)
    assert (later, later, None, 2) == (
        stored.updated_at,
        stored.scheduled_at,
        stored.lease_owner,
        stored.version,
    )


def test_no_row_is_none_and_rowcount_is_the_drivers(store: SQLStore, now: datetime) -> None:
    """A statement that matches nothing returns None from first() and rowcount 0."""
    _created(store, now)
    statement = Precompiled(_TOUCH)
    with store.engine.begin() as conn:
        missing = {"b_id": uuid.uuid4(), "b_at": now}
        assert statement.first(conn, missing) is None
        assert 0 == statement.execute(conn, missing).rowcount


def test_json_parameters_use_the_column_type(store: SQLStore, now: datetime) -> None:
    """A JSON value goes through the column's type and reads back equal."""
    delivery_id = _created(store, now)
    with store.lock(delivery_id) as locked:
        claim = locked.claim(owner="w", lease_seconds=30, now=now)
    assert claim is not None
    response = {"ok": True, "ids": [1, 2], "text": "é 🎉", "nested": {"n": None}}
    with store.engine.begin() as conn:
        assert (
            1
            == Precompiled(_RESPOND)
            .execute(conn, {"b_id": delivery_id, "b_response": response})
            .rowcount
        )
    history = store.history(delivery_id)
    assert history is not None
    assert response == history.attempts[0].provider_response


def test_engine_events_see_the_statement(store: SQLStore, now: datetime) -> None:
    """before_cursor_execute fires with the SQL text Core would have sent."""
    delivery_id = _created(store, now)
    seen: list[str] = []

    def record(_conn: Connection, _cursor: object, statement: str, *_args: object) -> None:
        seen.append(statement)

    event.listen(store.engine, "before_cursor_execute", record)
    try:
        with store.engine.begin() as conn:
            Precompiled(_TOUCH).first(conn, {"b_id": delivery_id, "b_at": now})
            expected = str(_TOUCH.compile(dialect=conn.dialect))
    finally:
        event.remove(store.engine, "before_cursor_execute", record)
    assert [expected] == [s for s in seen if s.startswith("UPDATE")]


def test_one_instance_serves_both_dialects(
    sqlite_store: SQLStore, pg_store: SQLStore, now: datetime
) -> None:
    """Compiled once per dialect: the same object runs on SQLite and on PostgreSQL."""
    statement = Precompiled(_TOUCH)
    for store in (sqlite_store, pg_store):
        delivery_id = _created(store, now)
        with store.engine.begin() as conn:
            assert statement.first(conn, {"b_id": delivery_id, "b_at": now}) is not None


def test_a_missing_parameter_raises_and_writes_nothing(store: SQLStore, now: datetime) -> None:
    """Leaving out a parameter the statement has no value for is an error, not a NULL."""
    delivery_id = _created(store, now)
    before = _row(store, delivery_id)
    with store.engine.begin() as conn, pytest.raises(ValueError, match=r"\['b_at'\]"):
        Precompiled(_TOUCH).execute(conn, {"b_id": delivery_id})
    assert before == _row(store, delivery_id)
