"""Bad input is refused with a specific error and writes nothing."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, event, func, select

from chimeway_core.errors import (
    InvalidDeliveryError,
    PayloadNotSerializableError,
    PayloadTooLargeError,
    UnsupportedDatabaseError,
)
from chimeway_core.records import NewDelivery
from chimeway_core.schema import DeliveryRow, JournalRow
from chimeway_core.store import SQLStore, _sqlite_on_connect

NAIVE = datetime(2030, 1, 1, 12, 0)


def _spec(**changes: Any) -> NewDelivery:
    fields: dict[str, Any] = {"channel": "email", "recipient": "ada@example.com"}
    fields.update(changes)
    return NewDelivery(**fields)


BAD_SPECS = [
    pytest.param(_spec(channel=""), InvalidDeliveryError, "channel", id="empty-channel"),
    pytest.param(_spec(recipient=""), InvalidDeliveryError, "recipient", id="empty-recipient"),
    pytest.param(_spec(recipient="x" * 1001), InvalidDeliveryError, "recipient", id="too-long"),
    pytest.param(
        _spec(payload={"when": datetime.now}),
        PayloadNotSerializableError,
        "payload[key 0]",
        id="payload-not-json",
    ),
    pytest.param(
        _spec(payload={1: "int key"}), PayloadNotSerializableError, "payload", id="int-key"
    ),
    pytest.param(
        _spec(payload=[float("nan")]), PayloadNotSerializableError, "payload[0]", id="nan"
    ),
    pytest.param(
        _spec(payload={"blob": "x" * (256 * 1024)}),
        PayloadTooLargeError,
        "payload",
        id="payload-too-large",
    ),
    pytest.param(
        _spec(payload={"a": ["ok", "\ud800"]}),
        InvalidDeliveryError,
        "payload[key 0][1]",
        id="nested-lone-surrogate",
    ),
    pytest.param(_spec(recipient="a\udfffb"), InvalidDeliveryError, "recipient", id="surrogate"),
    pytest.param(_spec(payload={"\ud800": 1}), InvalidDeliveryError, "payload key", id="key"),
    pytest.param(_spec(recipient="a\x00b"), InvalidDeliveryError, "recipient", id="nul-text"),
    pytest.param(_spec(payload={"s": "a\x00"}), InvalidDeliveryError, "payload[key 0]", id="nul"),
    pytest.param(
        _spec(metadata={"m": "\x00"}), InvalidDeliveryError, "metadata[key 0]", id="nul-metadata"
    ),
    pytest.param(_spec(max_attempts=0), InvalidDeliveryError, "max_attempts", id="attempts-0"),
    pytest.param(
        _spec(max_attempts=2**31), InvalidDeliveryError, "max_attempts", id="attempts-2**31"
    ),
    pytest.param(
        _spec(max_attempts=10**5000), InvalidDeliveryError, "max_attempts", id="attempts-huge"
    ),
    pytest.param(
        _spec(max_attempts=-(10**5000)), InvalidDeliveryError, "max_attempts", id="attempts-neg"
    ),
    pytest.param(
        _spec(payload={"n": 2**63}), PayloadNotSerializableError, "payload[key 0]", id="int-64"
    ),
    pytest.param(
        _spec(payload=[10**5000]), PayloadNotSerializableError, "payload[0]", id="int-huge"
    ),
    pytest.param(_spec(scheduled_at=NAIVE), InvalidDeliveryError, "scheduled_at", id="naive"),
    pytest.param(_spec(expires_at=NAIVE), InvalidDeliveryError, "expires_at", id="naive-exp"),
    pytest.param(_spec(idempotency_key=""), InvalidDeliveryError, "idempotency_key", id="key0"),
]


def _written(store: SQLStore) -> tuple[int, int, int]:
    with store.engine.connect() as conn:
        return (
            int(conn.execute(select(func.count()).select_from(DeliveryRow)).scalar_one()),
            int(conn.execute(select(func.count()).select_from(JournalRow)).scalar_one()),
            store.outbox_size(),
        )


@pytest.mark.parametrize(("spec", "error", "field"), BAD_SPECS)
def test_bad_spec_is_refused_and_writes_nothing(
    store: SQLStore, now: datetime, spec: NewDelivery, error: type[Exception], field: str
) -> None:
    """Each kind of bad input raises its own error naming the field, and nothing is written."""
    with pytest.raises(error) as raised:
        store.create(spec, now=now)
    assert isinstance(raised.value, InvalidDeliveryError)
    assert field == raised.value.field
    assert field in str(raised.value)
    assert (0, 0, 0) == _written(store)


def test_one_bad_spec_in_a_batch_writes_none(store: SQLStore, now: datetime) -> None:
    """create_many validates every spec first: one bad spec means no row at all."""
    specs = [_spec(recipient=f"r{i}") for i in range(10)] + [_spec(channel="")]
    with pytest.raises(InvalidDeliveryError) as raised:
        store.create_many(specs, now=now)
    assert "specs[10].channel" == raised.value.field
    assert (0, 0, 0) == _written(store)


def test_naive_now_is_refused(store: SQLStore) -> None:
    """A naive `now` is refused before anything is written."""
    with pytest.raises(InvalidDeliveryError) as raised:
        store.create(_spec(), now=NAIVE)
    assert "now" == raised.value.field
    assert (0, 0, 0) == _written(store)


def test_payload_too_large_reports_size_and_limit(tmp_path: Any, now: datetime) -> None:
    """The size error carries the measured size and the configured limit."""
    store = SQLStore(f"sqlite:///{tmp_path / 'small.db'}", max_payload_bytes=100)
    store.create_all()
    with pytest.raises(PayloadTooLargeError) as raised:
        store.create(_spec(payload="é" * 60), now=now)
    assert (122, 100) == (raised.value.size, raised.value.limit)
    store.engine.dispose()


@pytest.mark.parametrize(
    ("url", "dialect"),
    [
        ("mysql://u@db/app", "mysql"),
        ("mssql+pyodbc://u@db/app", "mssql"),
        ("oracle://u@db", "oracle"),
    ],
)
def test_a_database_the_ledger_cannot_run_on_is_named(url: str, dialect: str) -> None:
    """Another database is refused by name, before SQLAlchemy looks for its driver."""
    with pytest.raises(UnsupportedDatabaseError) as raised:
        SQLStore(url)
    assert (dialect, None) == (raised.value.dialect, raised.value.version)
    assert "PostgreSQL or SQLite" in str(raised.value)


def test_an_sqlite_without_returning_is_refused_with_its_version(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A driver linked to SQLite older than 3.35 (no RETURNING) is refused, naming both."""
    engine = create_engine(f"sqlite:///{tmp_path / 'old.db'}")
    monkeypatch.setattr(engine.dialect.dbapi, "sqlite_version_info", (3, 31, 1))
    with pytest.raises(UnsupportedDatabaseError) as raised:
        SQLStore(engine)
    assert ("sqlite", "3.31.1") == (raised.value.dialect, raised.value.version)
    assert "SQLite 3.35 or newer" in str(raised.value)
    assert not event.contains(engine, "connect", _sqlite_on_connect)


def _calls_by_id(store: SQLStore, now: datetime) -> list[Any]:
    return [
        store.get,
        store.history,
        lambda bad: store.lock(bad).__enter__(),
        lambda bad: store.quick_claim(bad, owner="w", lease_seconds={"email": 30.0}, now=now),
        lambda bad: store.cancel(bad, now=now),
        lambda bad: store.suppress(bad, "opted_out", expected_version=None, now=now),
        lambda bad: store.defer(bad, now, "quiet_hours", expected_version=None, now=now),
        lambda bad: store.exhaust(bad, expected_version=1, now=now),
    ]


@pytest.mark.parametrize("bad", [None, "0b7c6a57-6f0e-4a3e-9d1d-3f3b1c2a9e01", 7])
def test_a_delivery_id_that_is_no_uuid_is_named(store: SQLStore, now: datetime, bad: Any) -> None:
    """Every operation by id refuses a str (even a valid one), None or int with a TypeError."""
    created = store.create(_spec(), now=now).delivery
    for call in _calls_by_id(store, now):
        with pytest.raises(TypeError, match=r"delivery_id must be a uuid\.UUID"):
            call(bad)
    assert created == store.get(created.id)  # nothing was changed


def test_a_session_that_is_no_session_is_named(store: SQLStore, now: datetime) -> None:
    """create(session=<not a Session>) raises TypeError and writes nothing."""
    with (
        store.engine.connect() as connection,
        pytest.raises(TypeError, match=r"must be a sqlalchemy\.orm\.Session or scoped_session"),
    ):
        store.create(_spec(), now=now, session=connection)  # type: ignore[arg-type]
    assert (0, 0, 0) == _written(store)


@pytest.mark.parametrize(
    ("bad", "error", "message"),
    [
        (0, ValueError, "must be an int >= 1"),
        (-1, ValueError, "must be an int >= 1"),
        (True, TypeError, "must be an int, not bool"),
        ("5", TypeError, "must be an int, not str"),
        (2.0, TypeError, "must be an int, not float"),
    ],
)
def test_a_limit_that_is_no_positive_int_is_refused(
    store: SQLStore, now: datetime, bad: object, error: type[Exception], message: str
) -> None:
    """due, expired_claims, relay_outbox: LIMIT 0 or -1 means different things per database."""
    with pytest.raises(error, match=f"limit {message}"):
        store.due(now=now, limit=bad)  # type: ignore[arg-type]
    with pytest.raises(error, match=f"limit {message}"):
        store.expired_claims(now=now, limit=bad)  # type: ignore[arg-type]
    store.create(_spec(), now=now)
    sent: list[object] = []
    with pytest.raises(error, match=f"batch_size {message}"):
        store.relay_outbox(sent.extend, batch_size=bad)  # type: ignore[arg-type]
    assert ([], 1) == (sent, store.outbox_size())


def test_delete_outbox_refuses_an_id_that_is_no_uuid(store: SQLStore, now: datetime) -> None:
    """delete_outbox names a str id and deletes nothing, not even the valid ones before it."""
    created = store.create(_spec(), now=now).delivery
    with pytest.raises(TypeError, match=r"delivery_id must be a uuid\.UUID"):
        store.delete_outbox([created.id, str(created.id)])  # type: ignore[list-item]
    assert 1 == store.outbox_size()


def test_refusals_never_echo_a_payload_key(store: SQLStore, now: datetime) -> None:
    """A key is named by its position: keys are often personal data themselves."""
    secret = "ada.lovelace@example.com"
    with pytest.raises(PayloadNotSerializableError) as raised:
        store.create(_spec(payload={"ok": 1, secret: float("nan")}), now=now)
    assert ("payload[key 1]", False) == (raised.value.field, secret in str(raised.value))


def test_a_huge_int_in_a_provider_response_is_stored_as_its_size() -> None:
    """Provider text is sanitised, never refused: an int past 64 bits becomes its bit length."""
    from chimeway_core.ledger.validation import sanitize

    assert {"id": "<16610-bit int>", "n": 2**62} == sanitize({"id": 10**5000, "n": 2**62})


def test_engines_chimeway_creates_hide_statement_parameters(tmp_path: Path) -> None:
    """A database error from a ledger chimeway connected must not quote payloads."""
    store = SQLStore(f"sqlite:///{tmp_path / 'ledger.db'}")
    try:
        assert True is store.engine.hide_parameters
    finally:
        store.engine.dispose()
