"""The delivery ledger on SQLAlchemy: :class:`SQLStore`.

Theory of operation
-------------------
The database decides. Every operation of :class:`SQLStore` is one short
transaction that either writes everything it promises or nothing:

- **State machine first.** Every status change is computed with
  :func:`chimeway_core.states.apply_event` from the status the row holds; an
  illegal event raises :class:`~chimeway_core.errors.IllegalTransitionError`
  before anything is written.
- **Compare-and-set second.** Every write is ``UPDATE ... WHERE id = :id AND
  version = :expected`` (plus ``lease_owner = :owner`` for a worker) and bumps
  ``version`` and ``updated_at``. A write that matches nothing rolls back the
  whole transaction and raises :class:`~chimeway_core.errors.LeaseLostError`
  (or its subclass :class:`~chimeway_core.errors.StaleDeliveryError`): two
  workers racing on one delivery can never produce an illegal transition or a
  lost update.
- **Claims are one conditional UPDATE.** :meth:`SQLStore.claim` takes the lease
  only if the delivery is live, due, not leased (or its lease expired), below
  ``max_attempts`` and has no in-flight attempt, and writes the attempt row in
  the same transaction. Of N concurrent claimers exactly one wins.
  :meth:`SQLStore.lock` reads the row for update first, so a worker can run
  its checks and policies and then claim (or suppress, or defer) in one
  transaction: the engine's ``perform()`` does.
- **Attempts are write-ahead.** The attempt row exists before the channel is
  called; :meth:`SQLStore.record_attempt` completes it and applies the
  transition in one transaction, fenced on the claim's version and owner.
- **Transactional enqueue.** :meth:`SQLStore.create` writes the delivery, its
  journal entry and an outbox row together, optionally inside the caller's
  :class:`~sqlalchemy.orm.Session`; :meth:`SQLStore.relay_outbox` hands
  committed outbox rows to the queue and deletes them in one transaction.

On PostgreSQL each hot step is one statement: the claim (lease and attempt
row), the record (fenced row lock, attempt, transition, journal entry) and
the create of deliveries born ready (delivery, journal and outbox rows, the
rows sent as one JSON document) use data-modifying CTEs. The record and the
create (up to 10,000 rows, no caller session) run in autocommit: one
statement is atomic by itself, and skipping ``BEGIN`` and ``COMMIT`` makes
each one round trip. SQLite, in process, runs the same writes as separate
statements in a transaction.

SQLite is supported as the embedded default: file databases get WAL, a busy
timeout and foreign keys on connect, and write transactions start with
``BEGIN IMMEDIATE`` so writers queue for the lock instead of failing with
"database is locked". Values are validated before any write: bad input raises
a specific :class:`~chimeway_core.errors.InvalidDeliveryError` and writes
nothing. The store never reads the wall clock: every writing method takes
``now``.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, Final
from uuid import UUID

import attrs
from sqlalchemy import (
    CTE,
    BindParameter,
    ColumnElement,
    Connection,
    DateTime,
    Dialect,
    Engine,
    Insert,
    Row,
    Select,
    String,
    Update,
    and_,
    bindparam,
    case,
    cast,
    create_engine,
    delete,
    event,
    exists,
    func,
    insert,
    make_url,
    or_,
    select,
    tuple_,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session
from sqlalchemy.sql.expression import ColumnCollection

from chimeway_core._checks import seconds, whole
from chimeway_core.errors import (
    DeliveryNotFoundError,
    DeliveryTerminalError,
    InvalidDeliveryError,
    LeaseLostError,
    NotResendableError,
    PayloadNotSerializableError,
    PayloadTooLargeError,
    StaleDeliveryError,
    UnsupportedDatabaseError,
)
from chimeway_core.outcomes import Classification, Outcome
from chimeway_core.precompiled import Precompiled
from chimeway_core.records import (
    RESEND_KEY_PREFIX,
    Attempt,
    Claim,
    Delivery,
    DeliveryHistory,
    JournalEntry,
    JournalKind,
    LedgerGauges,
    NewDelivery,
    Resent,
    resend_key,
)
from chimeway_core.schema import (
    CHANNEL_LENGTH,
    ERROR_CLASS_LENGTH,
    KEY_LENGTH,
    OWNER_LENGTH,
    REASON_LENGTH,
    RECIPIENT_LENGTH,
    AttemptRow,
    DeliveryRow,
    JournalRow,
    OutboxRow,
    metadata,
)
from chimeway_core.states import TERMINAL_STATUSES, DeliveryStatus, Event, apply_event

__all__ = ["SUPPORTED_BACKENDS", "Created", "LockedDelivery", "OutboxItem", "SQLStore"]

#: The databases the ledger runs on, by SQLAlchemy backend name.
SUPPORTED_BACKENDS: Final = ("postgresql", "sqlite")

_DELIVERIES: Final = metadata.tables[DeliveryRow.__tablename__]
_ATTEMPTS: Final = metadata.tables[AttemptRow.__tablename__]
_JOURNAL: Final = metadata.tables[JournalRow.__tablename__]
_OUTBOX: Final = metadata.tables[OutboxRow.__tablename__]
_D: Final = _DELIVERIES.c
_A: Final = _ATTEMPTS.c
_J: Final = _JOURNAL.c
_O: Final = _OUTBOX.c

_LIVE: Final = (DeliveryStatus.READY.value, DeliveryStatus.FAILED.value)
# What ended unsent: what a resend may copy.
_RESENDABLE: Final = frozenset({DeliveryStatus.CANCELLED, DeliveryStatus.SUPPRESSED})
_DELIVERY_COLUMNS: Final = len(_DELIVERIES.c)
_SQLITE_BUSY_TIMEOUT_MS: Final = 30_000
#: The largest statement_timeout PostgreSQL accepts, in milliseconds (a 32-bit int).
_PG_MAX_TIMEOUT_MS: Final = 2**31 - 1
_SQLITE_MINIMUM: Final = (3, 35, 0)
_WRITE_OPTION: Final = "chimeway_write"
# Rows per statement for lookups by key: well under SQLite's variable limit.
_CHUNK: Final = 500
# How often cancel() re-reads and retries when a concurrent write moved version.
_CANCEL_TRIES: Final = 10
# How often a create writes again the rows whose existing key was pruned as it
# was read back: one retry settles it (a key written since is a live delivery).
_CREATE_TRIES: Final = 3
# How deep JSON may nest (payloads, metadata, provider responses): far below
# Python's recursion limit, so validating, storing and reading never overflow.
_MAX_JSON_DEPTH: Final = 128


@attrs.frozen
class Created:
    """What :meth:`SQLStore.create` returns.

    ``created`` is ``False`` when a delivery with the same
    ``(channel, idempotency_key)`` already existed: ``delivery`` is that one.
    """

    delivery: Delivery
    created: bool


@attrs.frozen
class OutboxItem:
    """A committed delivery waiting to be handed to the queue, due at ``run_at``."""

    delivery_id: UUID
    run_at: datetime
    channel: str
    """The delivery's channel, which decides its queue (``Chimeway(routes=...)``)."""


# --------------------------------------------------------------------------- engine


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    # Take transaction control away from the sqlite3 module so that SQLAlchemy's
    # "begin" event (below) decides between BEGIN and BEGIN IMMEDIATE.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={_SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
    finally:
        cursor.close()


def _sqlite_on_begin(conn: Connection) -> None:
    # A write transaction takes the write lock up front: concurrent writers
    # then wait (busy_timeout) instead of failing on lock upgrade.
    if conn.get_execution_options().get(_WRITE_OPTION):
        conn.exec_driver_sql("BEGIN IMMEDIATE")
    else:
        conn.exec_driver_sql("BEGIN")


def _check_backend(name: str) -> None:
    """Raise :class:`UnsupportedDatabaseError` unless ``name`` is PostgreSQL or SQLite."""
    if name not in SUPPORTED_BACKENDS:
        raise UnsupportedDatabaseError(name, "PostgreSQL or SQLite")


def _check_sqlite_version(dialect: Dialect) -> None:
    """Raise :class:`UnsupportedDatabaseError` if the driver's SQLite is too old."""
    # RETURNING, which every write that reads back its row uses, came in 3.35.
    found: tuple[int, ...] = getattr(dialect.dbapi, "sqlite_version_info", _SQLITE_MINIMUM)
    if found < _SQLITE_MINIMUM:
        raise UnsupportedDatabaseError(
            "sqlite", "SQLite 3.35 or newer", version=".".join(map(str, found))
        )


def _configure_sqlite(engine: Engine) -> None:
    if not event.contains(engine, "connect", _sqlite_on_connect):
        event.listen(engine, "connect", _sqlite_on_connect)
    if not event.contains(engine, "begin", _sqlite_on_begin):
        event.listen(engine, "begin", _sqlite_on_begin)


# ----------------------------------------------------------------------- validation


def _aware(value: object, field: str) -> datetime:
    if not isinstance(value, datetime):
        raise InvalidDeliveryError(field, f"must be a datetime, not {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidDeliveryError(field, "must be a timezone-aware datetime, got a naive one")
    return value


def _check_id(value: object) -> UUID:
    # A str would be matched by no row on SQLite and fail to bind on
    # PostgreSQL: name the mistake instead.
    if not isinstance(value, UUID):
        raise TypeError(f"delivery_id must be a uuid.UUID, not {type(value).__name__}")
    return value


def _check_limit(name: str, value: object) -> int:
    # LIMIT 0 would make a relay loop forever and a negative one means "no
    # limit" on SQLite but an error on PostgreSQL: refuse both everywhere.
    return whole(name, value, minimum=1)


def _check_session(session: object) -> None:
    if not isinstance(session, Session):
        raise TypeError(f"session must be a sqlalchemy.orm.Session, not {type(session).__name__}")


def _check_text(value: object, field: str, *, max_length: int, optional: bool = False) -> None:
    if value is None and optional:
        return
    if not isinstance(value, str):
        raise InvalidDeliveryError(field, f"must be a string, not {type(value).__name__}")
    if not value:
        raise InvalidDeliveryError(field, "must not be empty")
    if len(value) > max_length:
        raise InvalidDeliveryError(field, f"is {len(value)} characters, over {max_length}")
    _check_encodable(value, field)


def _check_encodable(value: str, field: str) -> None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidDeliveryError(
            field, "is not valid UTF-8 (it contains a lone surrogate)"
        ) from None
    if "\x00" in value:
        # PostgreSQL text and JSON cannot hold NUL; refuse it on every database
        # so a delivery accepted by SQLite in tests is accepted in production.
        raise InvalidDeliveryError(field, "contains a NUL character, which cannot be stored")


def _json_value(value: object, field: str, depth: int = 0) -> Any:
    """Return a plain-JSON copy of ``value`` (tuples become lists), or raise."""
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, str):
        _check_encodable(value, field)
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise PayloadNotSerializableError(field, f"{value!r} is not a JSON number")
        return value
    if isinstance(value, Mapping | list | tuple) and depth >= _MAX_JSON_DEPTH:
        # Deeper would hit the recursion limit here or in a worker's JSON decoder.
        raise PayloadNotSerializableError(
            field.split("[", 1)[0], f"is nested more than {_MAX_JSON_DEPTH} levels deep"
        )
    if isinstance(value, Mapping):
        copy: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise PayloadNotSerializableError(
                    field, f"has a {type(key).__name__} key; JSON object keys are strings"
                )
            _check_encodable(key, f"{field} key")
            copy[key] = _json_value(item, f"{field}[{key!r}]", depth + 1)
        return copy
    if isinstance(value, list | tuple):
        return [
            _json_value(item, f"{field}[{index}]", depth + 1) for index, item in enumerate(value)
        ]
    raise PayloadNotSerializableError(field, f"holds a {type(value).__name__}, not a JSON value")


def _json_size(value: Any) -> int:
    if not value and isinstance(value, dict | list):
        return 2  # "{}" or "[]": most metadata, dumped here for every delivery
    return len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))


def _clean_text(text: str) -> str:
    """Make text storable: replace lone surrogates and NUL (never reject)."""
    cleaned = text.encode("utf-8", "replace").decode("utf-8")
    return cleaned.replace("\x00", "\ufffd")


def _sanitize(value: object, depth: int = 0) -> Any:
    """Best-effort plain-JSON copy for provider responses: never raises."""
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, str):
        return _clean_text(value)
    if isinstance(value, Mapping | list | tuple) and depth >= _MAX_JSON_DEPTH:
        return f"<nested more than {_MAX_JSON_DEPTH} levels deep>"
    if isinstance(value, Mapping):
        return {_clean_text(str(key)): _sanitize(item, depth + 1) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_sanitize(item, depth + 1) for item in value]
    return f"<{type(value).__qualname__}>"


def _truncate(text: str | None, limit: int) -> str | None:
    if text is None:
        return None
    text = _clean_text(text)
    if len(text) <= limit:
        return text
    marker = f"... [truncated {len(text) - limit} chars]"
    return text[: max(limit - len(marker), 0)] + marker


# -------------------------------------------------------------------- conversion


def _delivery(row: Row[Any]) -> Delivery:
    # Positional: a row of ``select(_DELIVERIES)`` (or a join starting with it)
    # holds the table's columns in order, which is the field order of Delivery.
    (
        id_,
        channel,
        recipient,
        payload,
        notification_key,
        idempotency_key,
        status,
        reason,
        attempt_count,
        max_attempts,
        scheduled_at,
        expires_at,
        lease_owner,
        lease_expires_at,
        version,
        deferral_count,
        metadata_,
        created_at,
        updated_at,
    ) = row[:_DELIVERY_COLUMNS]
    return Delivery(
        id=id_,
        channel=channel,
        recipient=recipient,
        payload=payload,
        notification_key=notification_key,
        idempotency_key=idempotency_key,
        status=DeliveryStatus(status),
        reason=reason,
        attempt_count=attempt_count,
        max_attempts=max_attempts,
        scheduled_at=scheduled_at,
        expires_at=expires_at,
        lease_owner=lease_owner,
        lease_expires_at=lease_expires_at,
        version=version,
        deferral_count=deferral_count,
        metadata=metadata_,
        created_at=created_at,
        updated_at=updated_at,
    )


def _delivery_from_values(values: Mapping[str, Any]) -> Delivery:
    return Delivery(
        id=values["id"],
        channel=values["channel"],
        recipient=values["recipient"],
        payload=values["payload"],
        notification_key=values["notification_key"],
        idempotency_key=values["idempotency_key"],
        status=DeliveryStatus(values["status"]),
        reason=values["reason"],
        attempt_count=values["attempt_count"],
        max_attempts=values["max_attempts"],
        scheduled_at=values["scheduled_at"],
        expires_at=values["expires_at"],
        lease_owner=None,
        lease_expires_at=None,
        version=values["version"],
        deferral_count=values["deferral_count"],
        metadata=values["metadata"],
        created_at=values["created_at"],
        updated_at=values["updated_at"],
    )


def _attempt(row: Row[Any]) -> Attempt:
    m = row._mapping
    outcome = m[_A.outcome]
    return Attempt(
        delivery_id=m[_A.delivery_id],
        number=m[_A.number],
        started_at=m[_A.started_at],
        finished_at=m[_A.finished_at],
        outcome=Outcome(outcome) if outcome is not None else None,
        error_class=m[_A.error_class],
        provider_response=m[_A.provider_response],
        error=m[_A.error],
        worker=m[_A.worker],
    )


def _journal_entry(row: Row[Any]) -> JournalEntry:
    m = row._mapping
    from_status, to_status = m[_J.from_status], m[_J.to_status]
    return JournalEntry(
        delivery_id=m[_J.delivery_id],
        at=m[_J.at],
        kind=JournalKind(m[_J.kind]),
        event=m[_J.event],
        from_status=DeliveryStatus(from_status) if from_status is not None else None,
        to_status=DeliveryStatus(to_status) if to_status is not None else None,
        reason=m[_J.reason],
        detail=m[_J.detail],
    )


def _journal_values(
    delivery_id: UUID,
    at: datetime,
    kind: JournalKind,
    *,
    event: Event | None = None,
    from_status: DeliveryStatus | None = None,
    to_status: DeliveryStatus | None = None,
    reason: str | None = None,
    detail: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "delivery_id": delivery_id,
        "at": at,
        "kind": kind.value,
        "event": event.value if event is not None else None,
        "from_status": from_status.value if from_status is not None else None,
        "to_status": to_status.value if to_status is not None else None,
        "reason": reason,
        "detail": dict(detail or {}),
    }


def _is_live() -> ColumnElement[bool]:
    # One bound parameter per status, not in_(_LIVE): a list renders as an
    # expanding parameter, which SQLAlchemy rewrites into the SQL text again
    # at every execution.
    return _D.status.in_([bindparam(f"b_live_{status}", status) for status in _LIVE])


def _suppress(
    rows: Sequence[dict[str, Any]],
    reasons: Sequence[str | None] | None,
    suppress_if: Callable[[Delivery], str | None] | None,
) -> dict[UUID, Delivery]:
    """Make the rows given a reason born suppressed; the deliveries shown, by id, of the rest.

    The deliveries shown to ``suppress_if`` are returned for the rows written
    as they were shown (building them again costs ~3 µs each).
    """
    drafts: dict[UUID, Delivery] = {}
    if suppress_if is not None:
        drafts = {row["id"]: _delivery_from_values(row) for row in rows}
        reasons = [suppress_if(draft) for draft in drafts.values()]
    if reasons is not None:
        for row, reason in zip(rows, reasons, strict=True):
            _check_text(reason, "suppress_reason", max_length=REASON_LENGTH, optional=True)
            if reason is not None:
                row["status"] = apply_event(DeliveryStatus.READY, Event.SUPPRESS).dest.value
                row["reason"] = reason
                drafts.pop(row["id"], None)
    return drafts


def _key_of(row: Mapping[str, Any]) -> tuple[str, str]:
    return row["channel"], row["idempotency_key"]


def _insert_new(conn: Connection, rows: Sequence[dict[str, Any]], now: datetime) -> set[UUID]:
    """Write the rows whose key is free, with their journal and outbox rows; their ids."""
    if conn.dialect.name == "postgresql" and all(row["reason"] is None for row in rows):
        # Born ready: delivery, journal and outbox rows in one statement per
        # chunk, the rows sent as one JSON document.
        inserted: set[UUID] = set()
        for chunk in _in_chunks(rows, _PG_BULK_CHUNK):
            inserted.update(_pg_create_ready(conn, chunk, now))
        return inserted
    statement = _insert_ignoring_conflicts(conn)
    inserted = set()
    for chunk in _in_chunks(rows, 1000):
        inserted.update(conn.execute(statement, list(chunk)).scalars())
    journal: list[dict[str, Any]] = []
    outbox: list[dict[str, Any]] = []
    for row in rows:
        if row["id"] not in inserted:
            continue
        journal.append(
            _journal_values(row["id"], now, JournalKind.CREATED, to_status=DeliveryStatus.READY)
        )
        if row["reason"] is None:
            outbox.append({"delivery_id": row["id"], "run_at": row["scheduled_at"]})
            outbox[-1]["created_at"] = now
        else:
            journal.append(
                _journal_values(
                    row["id"],
                    now,
                    JournalKind.TRANSITION,
                    event=Event.SUPPRESS,
                    from_status=DeliveryStatus.READY,
                    to_status=DeliveryStatus.SUPPRESSED,
                    reason=row["reason"],
                )
            )
    if journal:
        conn.execute(_JOURNAL.insert(), journal)
    if outbox:
        conn.execute(_OUTBOX.insert(), outbox)
    return inserted


def _existing(
    conn: Connection, rows: Sequence[Mapping[str, Any]], inserted: set[UUID]
) -> dict[tuple[str, str], Delivery]:
    """The deliveries already holding the keys of the rows not inserted, by key."""
    existing: dict[tuple[str, str], Delivery] = {}
    missing = sorted({_key_of(row) for row in rows if row["id"] not in inserted})
    for chunk in _in_chunks(missing):
        query = select(_DELIVERIES).where(tuple_(_D.channel, _D.idempotency_key).in_(list(chunk)))
        for found in conn.execute(query):
            delivery = _delivery(found)
            existing[delivery.channel, delivery.idempotency_key] = delivery
    return existing


def _results(
    rows: Sequence[Mapping[str, Any]],
    inserted: set[UUID],
    existing: Mapping[tuple[str, str], Delivery],
    drafts: Mapping[UUID, Delivery],
) -> list[Created]:
    """One result per row, in ``rows`` order; a written row's delivery is its draft if any."""
    results: list[Created] = []
    for row in rows:
        if row["id"] in inserted:
            draft = drafts.get(row["id"])
            delivery = _delivery_from_values(row) if draft is None else draft
            results.append(Created(delivery, created=True))
        else:
            results.append(Created(existing[_key_of(row)], created=False))
    return results


def _prunable(before: datetime) -> Select[tuple[UUID]]:
    # created_at < before follows from updated_at < before on one clock; it is
    # there for the created_at index, which finds the oldest rows first.
    return select(_D.id).where(
        _D.status.in_(sorted(status.value for status in TERMINAL_STATUSES)),
        _D.created_at < before,
        _D.updated_at < before,
    )


def _no_attempt_in_flight() -> ColumnElement[bool]:
    return ~exists().where(_A.delivery_id == _D.id, _A.outcome.is_(None))


def _counts(conn: Connection) -> dict[tuple[DeliveryStatus, str | None], int]:
    query = select(_D.status, _D.reason, func.count()).group_by(_D.status, _D.reason)
    rows = conn.execute(query)
    return {(DeliveryStatus(status), reason): count for status, reason, count in rows}


def _due_unheld(now: datetime) -> ColumnElement[bool]:
    """Live, due at ``now``, and nobody holds it: no lease, or an expired one with no attempt."""
    return and_(
        _D.status.in_(_LIVE),
        _D.scheduled_at <= now,
        or_(
            _D.lease_owner.is_(None),
            and_(_D.lease_expires_at <= now, _no_attempt_in_flight()),
        ),
    )


def _expired_in_flight(now: datetime) -> Select[Any]:
    """Live deliveries joined to their in-flight attempt, whose lease expired by ``now``."""
    return (
        select(_DELIVERIES, _ATTEMPTS)
        .join(_ATTEMPTS, and_(_A.delivery_id == _D.id, _A.outcome.is_(None)))
        .where(_D.status.in_(_LIVE), _D.lease_expires_at <= now)
    )


def _read_for_write(conn: Connection, delivery_id: UUID, expected_version: int | None) -> Delivery:
    """The delivery as it is now, checked against ``expected_version`` when given."""
    row = conn.execute(select(_DELIVERIES).where(_D.id == delivery_id)).first()
    if row is None:
        raise DeliveryNotFoundError(delivery_id)
    current = _delivery(row)
    if expected_version is not None and current.version != expected_version:
        raise StaleDeliveryError(delivery_id, expected_version, current.version)
    return current


def _write_fenced(conn: Connection, current: Delivery, values: Mapping[str, Any]) -> Row[Any]:
    """Update ``current`` only if its version and status still hold; return the new row."""
    # The row found by its primary key alone, as in the record: see
    # _pg_record_statement for what a status condition in the scan costs.
    row = (
        select(_D.id, _D.version, _D.status)
        .where(_D.id == current.id)
        .with_for_update()
        .cte("current_row")
    )
    updated = conn.execute(
        update(_DELIVERIES)
        .where(
            _D.id == row.c.id,
            row.c.version == current.version,
            row.c.status == current.status.value,
        )
        .values(values)
        .returning(*_DELIVERIES.c)
    ).first()
    if updated is None:
        raise StaleDeliveryError(current.id, current.version, None)
    return updated


def _in_chunks(items: Sequence[Any], size: int = _CHUNK) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


# ------------------------------------------------------------ hot-path statements

# The statements of perform() are built once, with bind parameters, instead of
# per call: SQLAlchemy memoizes a statement object's cache key, so executing a
# prebuilt one skips constructing, coercing and cache-key walking (most of the
# Python cost of a write, per the profile in docs/performance.md).

_SELECT_FOR_UPDATE: Final = select(_DELIVERIES).where(_D.id == bindparam("b_id")).with_for_update()

_CLAIM: Final = (
    update(_DELIVERIES)
    .where(
        _D.id == bindparam("b_id"),
        _D.version == bindparam("b_version"),
        _is_live(),
        _D.scheduled_at <= bindparam("b_due"),
        or_(_D.lease_owner.is_(None), _D.lease_expires_at <= bindparam("b_expired")),
        _D.attempt_count < _D.max_attempts,
        _no_attempt_in_flight(),
    )
    .values(
        lease_owner=bindparam("b_owner"),
        lease_expires_at=bindparam("b_lease_expires_at"),
        attempt_count=_D.attempt_count + 1,
        version=_D.version + 1,
        updated_at=bindparam("b_updated_at"),
    )
)

_INSERT_JOURNAL: Final = _JOURNAL.insert()
# The two inserts perform() makes on SQLite, with explicit parameters so that
# they can run precompiled (a bare insert() compiles from the keys it gets).
_INSERT_IN_FLIGHT_ATTEMPT: Final = insert(_ATTEMPTS).values(
    delivery_id=bindparam("b_id"),
    number=bindparam("b_number"),
    started_at=bindparam("b_started_at"),
    worker=bindparam("b_owner"),
)

_FINISH_ATTEMPT: Final = (
    update(_ATTEMPTS)
    .where(
        _A.delivery_id == bindparam("b_id"),
        _A.number == bindparam("b_number"),
        _A.outcome.is_(None),
    )
    .values(
        finished_at=bindparam("b_finished_at"),
        outcome=bindparam("b_outcome"),
        error_class=bindparam("b_error_class"),
        provider_response=bindparam("b_provider_response", type_=_A.provider_response.type),
        error=bindparam("b_error"),
    )
)


def _record_values(*, reschedule: bool) -> dict[str, Any]:
    """What the record writes on the delivery row: the transition, no lease, a new version."""
    values: dict[str, Any] = {
        "status": bindparam("b_status"),
        "reason": bindparam("b_reason"),
        "lease_owner": None,
        "lease_expires_at": None,
        "version": _D.version + 1,
        "updated_at": bindparam("b_updated_at"),
    }
    if reschedule:
        values["scheduled_at"] = bindparam("b_scheduled_at")
    return values


def _record_fence(row: ColumnCollection[str, Any]) -> tuple[ColumnElement[bool], ...]:
    """The record's fence on ``row``: it still has the claim's version, status and owner."""
    return (
        row.version == bindparam("b_version"),
        row.status == bindparam("b_from_status"),
        row.lease_owner == bindparam("b_owner"),
    )


def _record_statement(*, reschedule: bool) -> Update:
    return (
        update(_DELIVERIES)
        .where(_D.id == bindparam("b_id"), *_record_fence(_D))
        .values(_record_values(reschedule=reschedule))
    )


_RECORD: Final = _record_statement(reschedule=False)
_RECORD_RESCHEDULED: Final = _record_statement(reschedule=True)

# On PostgreSQL each write step is one statement (data-modifying CTEs), so the
# claim and the record cost one round trip each instead of two and three.
# SQLite runs in process: its separate statements cost no round trip.

_JOURNAL_FIELDS: Final = ("at", "kind", "event", "from_status", "to_status", "reason", "detail")


def _journal_binds() -> dict[str, BindParameter[Any]]:
    """A journal entry's fields (but its delivery) as ``j_``-named, typed bind parameters."""
    return {name: bindparam(f"j_{name}", type_=_J[name].type) for name in _JOURNAL_FIELDS}


def _in_flight_attempt_of(claimed: CTE, started_at: str) -> Insert:
    """The write-ahead attempt row of what the claiming CTE ``claimed`` returned."""
    return insert(_ATTEMPTS).from_select(
        ["delivery_id", "number", "started_at", "worker"],
        select(
            claimed.c.id,
            claimed.c.attempt_count,
            bindparam(started_at, type_=_A.started_at.type),
            bindparam("b_owner", type_=_A.worker.type),
        ),
    )


def _matching(
    query: Select[Any], filters: Sequence[tuple[str, str | None, ColumnElement[Any]]]
) -> Select[Any]:
    """``query`` narrowed to rows whose column equals each filter given (``None``: not given)."""
    for name, value, column in filters:
        if value is None:
            continue
        if not isinstance(value, str):
            raise TypeError(f"{name} must be a str, not {type(value).__name__}")
        query = query.where(column == value)
    return query


def _cleared_outbox(claimed: CTE) -> CTE:
    """Delete the outbox row of what the claiming CTE ``claimed`` returned.

    A delivery a worker claimed is in the queue's hands: a relay that hands
    its row over again only makes a job that acknowledges and does nothing.
    The process that notified deletes its rows in batches (``flush_outbox``),
    so a process that notifies less than a batch per ``relay_grace`` would
    otherwise leave every row to the relay.
    """
    return (
        delete(_OUTBOX)
        .where(_O.delivery_id.in_(select(claimed.c.id)))
        .returning(_O.delivery_id)
        .cte("cleared")
    )


def _pg_claim_statement() -> Insert:
    claimed = _CLAIM.returning(_D.id, _D.attempt_count).cte("claimed")
    return (
        _in_flight_attempt_of(claimed, "b_updated_at")
        .add_cte(_cleared_outbox(claimed))
        .returning(_A.number)
    )


def _pg_record_statement(*, reschedule: bool) -> Insert:
    # All three rows or none, without a transaction around it: the fence locks
    # the delivery row (FOR UPDATE returns its newest version, and every write
    # bumps the version), the attempt is finished only if that version passes
    # the fence and the delivery moved only if the attempt was finished.
    # The row is found by its primary key alone: with the fence's status among
    # the scan's conditions, a planner without statistics yet (a new table)
    # takes the status index and walks past every delivery in that status.
    fence = (
        select(_D.id, _D.version, _D.status, _D.lease_owner)
        .where(_D.id == bindparam("b_id"))
        .with_for_update()
        .cte("fence")
    )
    fenced = select(fence.c.id).where(*_record_fence(fence.c))
    finished = (
        _FINISH_ATTEMPT.where(_A.delivery_id.in_(fenced)).returning(_A.delivery_id).cte("finished")
    )
    moved = (
        update(_DELIVERIES)
        .where(_D.id.in_(select(finished.c.delivery_id)))
        .values(_record_values(reschedule=reschedule))
        .returning(_D.id)
        .cte("moved")
    )
    journal = select(moved.c.id, *_journal_binds().values())
    return (
        insert(_JOURNAL)
        .from_select(["delivery_id", *_JOURNAL_FIELDS], journal)
        .add_cte(fence, finished)
        .returning(_J.id)
    )


_PG_CLAIM: Final = _pg_claim_statement()
_PG_RECORD: Final = _pg_record_statement(reschedule=False)
_PG_RECORD_RESCHEDULED: Final = _pg_record_statement(reschedule=True)


def _pg_quick_claim_statement() -> Select[Any]:
    # The lease ends at the claimed channel's own time: the caller sends one
    # per channel it knows, as a JSON object, and a delivery on any other
    # channel is not claimed here.
    leases = cast(bindparam("b_leases", type_=String), postgresql.JSONB)
    lease_expires_at = cast(
        func.jsonb_extract_path_text(leases, _D.channel), DateTime(timezone=True)
    )
    claimed = (
        update(_DELIVERIES)
        .where(
            _D.id == bindparam("b_id"),
            _is_live(),
            _D.scheduled_at <= bindparam("b_now"),
            _D.lease_owner.is_(None),
            _D.attempt_count < _D.max_attempts,
            or_(_D.expires_at.is_(None), _D.expires_at > bindparam("b_now")),
            lease_expires_at.is_not(None),
            _no_attempt_in_flight(),
        )
        .values(
            lease_owner=bindparam("b_owner"),
            lease_expires_at=lease_expires_at,
            attempt_count=_D.attempt_count + 1,
            version=_D.version + 1,
            updated_at=bindparam("b_now"),
        )
        .returning(*_DELIVERIES.c)
        .cte("claimed")
    )
    attempt = _in_flight_attempt_of(claimed, "b_now").cte("attempt")
    return select(*claimed.c).add_cte(attempt, _cleared_outbox(claimed))


_PG_QUICK_CLAIM: Final = _pg_quick_claim_statement()

# The writes perform() executes, compiled once per dialect and run as driver
# SQL with the same type conversions (chimeway_core.precompiled). The lock's
# read stays a Core execution: driver SQL rebuilds the result metadata of its
# 19 columns on every call, which costs more than it saves.
_RUN_CLAIM: Final = Precompiled(_CLAIM)
_RUN_INSERT_IN_FLIGHT_ATTEMPT: Final = Precompiled(_INSERT_IN_FLIGHT_ATTEMPT)
_RUN_DELETE_OUTBOX_ROW: Final = Precompiled(
    delete(_OUTBOX).where(_O.delivery_id == bindparam("b_id"))
)
_RUN_INSERT_JOURNAL_ENTRY: Final = Precompiled(
    insert(_JOURNAL).values({"delivery_id": bindparam("j_delivery_id"), **_journal_binds()})
)
_RUN_FINISH_ATTEMPT: Final = Precompiled(_FINISH_ATTEMPT)
_RUN_RECORD: Final = Precompiled(_RECORD)
_RUN_RECORD_RESCHEDULED: Final = Precompiled(_RECORD_RESCHEDULED)
_RUN_PG_CLAIM: Final = Precompiled(_PG_CLAIM)
_RUN_PG_RECORD: Final = Precompiled(_PG_RECORD)
_RUN_PG_RECORD_RESCHEDULED: Final = Precompiled(_PG_RECORD_RESCHEDULED)

_COUNT_RECENT_ATTEMPTS: Final = (
    select(func.count())
    .select_from(_ATTEMPTS.join(_DELIVERIES, _A.delivery_id == _D.id))
    .where(
        _D.channel == bindparam("b_channel"),
        _D.recipient == bindparam("b_recipient"),
        _A.started_at >= bindparam("b_since"),
    )
)


def _count_recent_attempts(conn: Connection, channel: str, recipient: str, since: datetime) -> int:
    since = _aware(since, "since")
    parameters = {"b_channel": channel, "b_recipient": recipient, "b_since": since}
    return int(conn.execute(_COUNT_RECENT_ATTEMPTS, parameters).scalar_one())


def _lease_end(now: datetime, lease_seconds: float) -> datetime:
    """When a lease of ``lease_seconds`` taken at ``now`` ends; refuses a bad length."""
    if not (math.isfinite(lease_seconds) and lease_seconds > 0):
        raise InvalidDeliveryError("lease_seconds", f"must be > 0, got {lease_seconds!r}")
    return now + timedelta(seconds=lease_seconds)


def _claim_on(
    conn: Connection, current: Delivery, *, owner: str, lease_seconds: float, now: datetime
) -> Claim | None:
    """Claim ``current`` (as read in this transaction) and write its attempt, or ``None``."""
    now = _aware(now, "now")
    _check_text(owner, "owner", max_length=OWNER_LENGTH)
    lease_expires_at = _lease_end(now, lease_seconds)
    parameters = {
        "b_id": current.id,
        "b_version": current.version,
        "b_due": now,
        "b_expired": now,
        "b_owner": owner,
        "b_lease_expires_at": lease_expires_at,
        "b_updated_at": now,
    }
    postgres = conn.dialect.name == "postgresql"
    if postgres:
        if _RUN_PG_CLAIM.first(conn, parameters) is None:
            return None
    elif _RUN_CLAIM.execute(conn, parameters).rowcount != 1:
        return None
    at = now.astimezone(UTC)
    delivery = attrs.evolve(
        current,
        lease_owner=owner,
        lease_expires_at=lease_expires_at.astimezone(UTC),
        attempt_count=current.attempt_count + 1,
        version=current.version + 1,
        updated_at=at,
    )
    if not postgres:
        _RUN_INSERT_IN_FLIGHT_ATTEMPT.execute(
            conn,
            {
                "b_id": delivery.id,
                "b_number": delivery.attempt_count,
                "b_started_at": now,
                "b_owner": owner,
            },
        )
        _RUN_DELETE_OUTBOX_ROW.execute(conn, {"b_id": delivery.id})  # see _cleared_outbox
    return Claim(delivery=delivery, attempt=_in_flight_attempt(delivery, at, owner))


def _in_flight_attempt(claimed: Delivery, started_at: datetime, owner: str) -> Attempt:
    """The write-ahead attempt a claim of ``claimed`` (its snapshot after the claim) writes."""
    return Attempt(
        delivery_id=claimed.id,
        number=claimed.attempt_count,
        started_at=started_at,
        finished_at=None,
        outcome=None,
        error_class=None,
        provider_response=None,
        error=None,
        worker=owner,
    )


def _transition_on(
    conn: Connection, current: Delivery, event: Event, *, reason: str | None, now: datetime
) -> Delivery:
    """Apply ``event`` to ``current`` (as read in this transaction), fenced; journal it."""
    transition = apply_event(current.status, event)
    new_reason = transition.reason.value if transition.reason is not None else reason
    values: dict[str, Any] = {
        "status": transition.dest.value,
        "reason": new_reason,
        "version": _D.version + 1,
        "updated_at": now,
    }
    if transition.dest in TERMINAL_STATUSES:
        values.update(lease_owner=None, lease_expires_at=None)
    updated = _write_fenced(conn, current, values)
    conn.execute(
        _INSERT_JOURNAL,
        _journal_values(
            current.id,
            now,
            JournalKind.TRANSITION,
            event=event,
            from_status=current.status,
            to_status=transition.dest,
            reason=new_reason,
        ),
    )
    if transition.dest in TERMINAL_STATUSES:
        conn.execute(delete(_OUTBOX).where(_O.delivery_id == current.id))
        if current.lease_owner is not None:
            # Cancelled (or suppressed) mid-call: the leased worker's late
            # record is fenced off, so close its attempt here as unknown
            # rather than leave it in flight forever.
            conn.execute(
                update(_ATTEMPTS)
                .where(_A.delivery_id == current.id, _A.outcome.is_(None))
                .values(
                    finished_at=now,
                    outcome=Outcome.UNKNOWN.value,
                    error=f"{event.value} while the call was in flight",
                )
            )
    return _delivery(updated)


def _defer_on(
    conn: Connection, current: Delivery, until: datetime, reason: str, *, now: datetime
) -> Delivery:
    """Push ``current`` (as read in this transaction) to ``until``, fenced; journal it."""
    if current.is_terminal:
        raise DeliveryTerminalError(current.id, current.status, "defer")
    updated = _write_fenced(
        conn,
        current,
        {
            "scheduled_at": until,
            "reason": reason,
            "deferral_count": _D.deferral_count + 1,
            "version": _D.version + 1,
            "updated_at": now,
        },
    )
    conn.execute(
        _INSERT_JOURNAL,
        _journal_values(
            current.id,
            now,
            JournalKind.DEFERRED,
            from_status=current.status,
            to_status=current.status,
            reason=reason,
            detail={"until": until.isoformat(), "deferral_count": current.deferral_count + 1},
        ),
    )
    return _delivery(updated)


class LockedDelivery:
    """A delivery read for update, and the one transaction every write on it joins.

    Yielded by :meth:`SQLStore.lock`. ``delivery`` is ``None`` for an unknown
    id. While the block runs nobody else can write the row (PostgreSQL ``SELECT
    ... FOR UPDATE``; SQLite's ``BEGIN IMMEDIATE`` write lock), so what the
    caller decides from ``delivery`` still holds when it writes. At most one of
    :meth:`claim`, :meth:`suppress`, :meth:`defer` and :meth:`exhaust` may be
    called; the transaction commits when the block ends and rolls everything
    back if it raises.
    """

    def __init__(self, conn: Connection, delivery_id: UUID, delivery: Delivery | None) -> None:
        self._conn = conn
        self.delivery_id = delivery_id
        self.delivery = delivery
        self._written = False

    def __repr__(self) -> str:
        found = "found" if self.delivery is not None else "missing"
        return f"<LockedDelivery {self.delivery_id} {found} written={self._written}>"

    def _current(self, operation: str) -> Delivery:
        if self.delivery is None:
            raise DeliveryNotFoundError(self.delivery_id)
        if self._written:
            raise RuntimeError(f"LockedDelivery.{operation}: this lock already wrote once")
        self._written = True
        return self.delivery

    def recent_attempts(self, channel: str, recipient: str, since: datetime) -> int:
        """:meth:`SQLStore.count_recent_attempts`, inside this transaction."""
        return _count_recent_attempts(self._conn, channel, recipient, since)

    def claim(self, *, owner: str, lease_seconds: float, now: datetime) -> Claim | None:
        """Take the lease and write the in-flight attempt; ``None`` if not claimable.

        The same conditions as :meth:`SQLStore.claim`, checked by the database,
        plus the version read: live, due, no live lease, below
        ``max_attempts``, no attempt in flight.
        """
        return _claim_on(
            self._conn,
            self._current("claim"),
            owner=owner,
            lease_seconds=lease_seconds,
            now=now,
        )

    def suppress(self, reason: str, *, now: datetime) -> Delivery:
        """Move the delivery to ``suppressed`` with a policy's ``reason``."""
        _check_text(reason, "reason", max_length=REASON_LENGTH)
        now = _aware(now, "now")
        return _transition_on(
            self._conn, self._current("suppress"), Event.SUPPRESS, reason=reason, now=now
        )

    def defer(self, until: datetime, reason: str, *, now: datetime) -> Delivery:
        """Push the delivery to ``until`` for a policy's ``reason`` (no attempt used)."""
        now = _aware(now, "now")
        until = _aware(until, "until")
        _check_text(reason, "reason", max_length=REASON_LENGTH)
        return _defer_on(self._conn, self._current("defer"), until, reason, now=now)

    def exhaust(self, *, now: datetime) -> Delivery:
        """Move a ``failed`` delivery with no attempt left to ``cancelled``."""
        now = _aware(now, "now")
        return _transition_on(
            self._conn, self._current("exhaust"), Event.EXHAUST, reason=None, now=now
        )


# -------------------------------------------------------------------------- store


class SQLStore:
    """The delivery ledger on a SQLAlchemy engine (PostgreSQL or SQLite).

    ``url_or_engine`` is a database URL or an :class:`~sqlalchemy.Engine`. For
    SQLite, connections get WAL, a 30 s busy timeout and foreign keys, and
    write transactions use ``BEGIN IMMEDIATE`` (listeners are added to a
    given engine too). ``max_payload_bytes`` bounds the serialized JSON of a
    payload (and of metadata); ``max_response_bytes`` and ``max_error_chars``
    cap what an attempt records (capped, never rejected); each must be an
    int >= 1 (:class:`ValueError` otherwise).
    """

    engine: Engine

    def __init__(
        self,
        url_or_engine: str | Engine,
        *,
        max_payload_bytes: int = 256 * 1024,
        max_response_bytes: int = 16 * 1024,
        max_error_chars: int = 2000,
    ) -> None:
        for name, limit in (
            ("max_payload_bytes", max_payload_bytes),
            ("max_response_bytes", max_response_bytes),
            ("max_error_chars", max_error_chars),
        ):
            if type(limit) is not int or limit < 1:
                raise ValueError(f"{name} must be an int >= 1, got {limit!r}")
        if isinstance(url_or_engine, str):
            # Before create_engine: it would first fail on the missing driver.
            _check_backend(make_url(url_or_engine).get_backend_name())
            url_or_engine = create_engine(url_or_engine)
        elif isinstance(url_or_engine, Engine):
            _check_backend(url_or_engine.dialect.name)
        else:
            raise TypeError(
                "url_or_engine must be a database URL (str) or a sqlalchemy.Engine, "
                f"not {type(url_or_engine).__name__}"
            )
        self.engine = url_or_engine
        if self.engine.dialect.name == "sqlite":
            _check_sqlite_version(self.engine.dialect)
            _configure_sqlite(self.engine)
        self._write_engine = self.engine.execution_options(**{_WRITE_OPTION: True})
        self.max_payload_bytes = max_payload_bytes
        self.max_response_bytes = max_response_bytes
        self.max_error_chars = max_error_chars

    def __repr__(self) -> str:
        return f"SQLStore({self.engine.url.render_as_string(hide_password=True)!r})"

    # ----------------------------------------------------------------- plumbing

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        with self._write_engine.begin() as conn:
            yield conn

    @contextmanager
    def _autocommit(self) -> Iterator[Connection]:
        """A connection whose every statement commits on its own, for one-statement writes.

        A single statement is atomic by itself: outside ``BEGIN`` ... ``COMMIT``
        it saves those two round trips (PostgreSQL only; the caller checks).
        The driver's autocommit flag is set for the block and restored before
        the connection goes back to the pool; SQLAlchemy still sees one
        transaction, so its events (and anything counting commits) do too.
        """
        with self.engine.connect() as conn:
            dbapi = conn.connection.dbapi_connection
            assert dbapi is not None
            previous = dbapi.autocommit
            dbapi.autocommit = True
            try:
                yield conn
                conn.commit()
            finally:
                if not dbapi.closed:
                    dbapi.autocommit = previous

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with self.engine.begin() as conn:
            yield conn

    @contextmanager
    def _snapshot(self, timeout: float | None) -> Iterator[Connection]:
        if self.engine.dialect.name != "postgresql":
            with self._read() as conn:
                yield conn
            return
        with (
            self.engine.connect().execution_options(isolation_level="REPEATABLE READ") as conn,
            conn.begin(),
        ):
            if timeout is not None:
                # SET LOCAL takes no bind parameter; the value is a checked number,
                # held to what the setting can hold (about 24.8 days: no limit, in effect).
                ms = min(_PG_MAX_TIMEOUT_MS, max(1, math.ceil(timeout * 1000)))
                conn.exec_driver_sql(f"SET LOCAL statement_timeout = {ms}")
            yield conn

    def create_all(self) -> None:
        """Create chimeway's tables if missing (tests, demo); production uses migrations."""
        metadata.create_all(self.engine)

    def drop_all(self) -> None:
        """Drop chimeway's tables and everything in them."""
        metadata.drop_all(self.engine)

    # ----------------------------------------------------------------- creating

    def _row_for(self, spec: NewDelivery, now: datetime, index: int) -> dict[str, Any]:
        where = f"specs[{index}]." if index >= 0 else ""
        if not isinstance(spec, NewDelivery):
            raise InvalidDeliveryError(
                where.rstrip(".") or "spec", f"must be a NewDelivery, not {type(spec).__name__}"
            )
        _check_text(spec.channel, f"{where}channel", max_length=CHANNEL_LENGTH)
        _check_text(spec.recipient, f"{where}recipient", max_length=RECIPIENT_LENGTH)
        _check_text(
            spec.notification_key, f"{where}notification_key", max_length=KEY_LENGTH, optional=True
        )
        _check_text(
            spec.idempotency_key, f"{where}idempotency_key", max_length=KEY_LENGTH, optional=True
        )
        if not isinstance(spec.max_attempts, int) or isinstance(spec.max_attempts, bool):
            raise InvalidDeliveryError(f"{where}max_attempts", "must be an int")
        if spec.max_attempts < 1:
            raise InvalidDeliveryError(
                f"{where}max_attempts", f"must be at least 1, got {spec.max_attempts}"
            )
        scheduled_at = (
            now if spec.scheduled_at is None else _aware(spec.scheduled_at, f"{where}scheduled_at")
        )
        expires_at = (
            None if spec.expires_at is None else _aware(spec.expires_at, f"{where}expires_at")
        )
        payload = _json_value(spec.payload, f"{where}payload")
        size = _json_size(payload)
        if size > self.max_payload_bytes:
            raise PayloadTooLargeError(f"{where}payload", size, self.max_payload_bytes)
        meta = _json_value(spec.metadata, f"{where}metadata")
        if not isinstance(meta, dict):
            raise PayloadNotSerializableError(f"{where}metadata", "must be a mapping")
        size = _json_size(meta)
        if size > self.max_payload_bytes:
            raise PayloadTooLargeError(f"{where}metadata", size, self.max_payload_bytes)
        delivery_id = uuid.uuid4()
        return {
            "id": delivery_id,
            "channel": spec.channel,
            "recipient": spec.recipient,
            "payload": payload,
            "notification_key": spec.notification_key,
            "idempotency_key": spec.idempotency_key or str(delivery_id),
            "status": DeliveryStatus.READY.value,
            "reason": None,
            "attempt_count": 0,
            "max_attempts": spec.max_attempts,
            "scheduled_at": scheduled_at,
            "expires_at": expires_at,
            "lease_owner": None,
            "lease_expires_at": None,
            "version": 1,
            "deferral_count": 0,
            "metadata": meta,
            "created_at": now,
            "updated_at": now,
        }

    def create(
        self,
        spec: NewDelivery,
        *,
        now: datetime,
        session: Session | None = None,
        suppress_reason: str | None = None,
    ) -> Created:
        """Create one delivery with its ``created`` journal entry and its outbox row.

        Idempotent on ``(channel, idempotency_key)``: a repeat (even a
        concurrent one) returns the existing delivery with ``created=False``
        and writes nothing. ``idempotency_key=None`` becomes ``str(id)``.
        With ``suppress_reason`` the delivery is born ``suppressed`` (the
        journal records the ``suppress`` transition) and gets no outbox row.
        With ``session`` everything goes through the caller's transaction
        (flushed, never committed): rolling it back leaves nothing.
        Invalid input raises :class:`InvalidDeliveryError` and writes nothing.
        """
        return self.create_many(
            [spec],
            now=now,
            session=session,
            suppress_reasons=None if suppress_reason is None else [suppress_reason],
        )[0]

    def create_many(
        self,
        specs: Sequence[NewDelivery],
        *,
        now: datetime,
        session: Session | None = None,
        suppress_reasons: Sequence[str | None] | None = None,
        suppress_if: Callable[[Delivery], str | None] | None = None,
    ) -> list[Created]:
        """Create many deliveries in a handful of statements; results in ``specs`` order.

        Same guarantees as :meth:`create`, per spec. All specs are validated
        before anything is written: one invalid spec writes none. A key
        repeated inside ``specs`` creates one delivery; later repeats get it
        back with ``created=False``. ``suppress_reasons`` holds one reason (or
        ``None``) per spec. Instead, ``suppress_if`` is called, once every spec
        is valid and before anything is written, with each delivery as it is
        about to be written (its id, its defaults filled in): the reason it
        returns makes that delivery born suppressed, and an exception it
        raises propagates and writes nothing.
        """
        now = _aware(now, "now")
        if session is not None:
            _check_session(session)
        if suppress_reasons is not None and suppress_if is not None:
            raise TypeError("give suppress_reasons or suppress_if, not both")
        if suppress_reasons is not None and len(suppress_reasons) != len(specs):
            raise InvalidDeliveryError(
                "suppress_reasons",
                f"has {len(suppress_reasons)} entries for {len(specs)} specs",
            )
        single = len(specs) == 1
        rows = [
            self._row_for(spec, now, -1 if single else index) for index, spec in enumerate(specs)
        ]
        drafts = _suppress(rows, suppress_reasons, suppress_if)
        if not rows:
            return []
        if session is not None:
            return self._insert_deliveries(session.connection(), rows, now, drafts)
        if (
            self.engine.dialect.name == "postgresql"
            and len(rows) <= _PG_BULK_CHUNK
            and all(row["reason"] is None for row in rows)
        ):
            # One statement writes everything (the read-back of existing keys
            # after it only reads): it commits on its own.
            with self._autocommit() as conn:
                return self._insert_deliveries(conn, rows, now, drafts)
        with self._write() as conn:
            return self._insert_deliveries(conn, rows, now, drafts)

    def _insert_deliveries(
        self,
        conn: Connection,
        rows: list[dict[str, Any]],
        now: datetime,
        drafts: Mapping[UUID, Delivery],
    ) -> list[Created]:
        # Insert in key order so concurrent batches lock keys in one order
        # (no deadlock on PostgreSQL); conflicts are skipped, not raised, so a
        # caller's transaction is never aborted by a duplicate.
        ordered = sorted(rows, key=_key_of)
        inserted: set[UUID] = set()
        pending = ordered
        for _ in range(_CREATE_TRIES):
            inserted |= _insert_new(conn, pending, now)
            existing = _existing(conn, rows, inserted)
            # A key taken when its row was inserted but gone when read back was
            # pruned in between (PostgreSQL, another transaction): it is free
            # now, so the row is written again.
            pending = [
                row for row in ordered if row["id"] not in inserted and _key_of(row) not in existing
            ]
            if not pending:
                return _results(rows, inserted, existing, drafts)
        keys = sorted({_key_of(row) for row in pending})
        raise RuntimeError(
            f"deliveries vanished {_CREATE_TRIES} times as they were read back: {keys}"
        )

    # ------------------------------------------------------------------ resending

    def resend(
        self,
        delivery_id: UUID,
        *,
        now: datetime,
        session: Session | None = None,
        suppress_if: Callable[[Delivery], str | None] | None = None,
    ) -> Resent:
        """Create the copy of a delivery that ended unsent; journal it on the original.

        One transaction (the caller's, with ``session``): the original is read
        for update; the copy has its channel, recipient, payload, notification
        key, ``max_attempts``, ``expires_at`` and metadata, is due at ``now``,
        and has the idempotency key :func:`~chimeway_core.records.resend_key`
        of the original's id, so a delivery has at most one copy: a repeat
        returns that copy with ``created=False`` and writes nothing. A new copy
        is written like :meth:`create_many` writes (its journal's ``created``
        entry, its outbox row unless ``suppress_if`` suppresses it) and the
        original gets a ``resent`` journal entry naming it; the original's row
        is not changed. An unknown id raises :class:`DeliveryNotFoundError`; a
        live or succeeded delivery :class:`NotResendableError`.
        """
        _check_id(delivery_id)
        now = _aware(now, "now")
        if session is not None:
            _check_session(session)
            return self._resend_on(session.connection(), delivery_id, now, suppress_if)
        with self._write() as conn:
            return self._resend_on(conn, delivery_id, now, suppress_if)

    def _resend_on(
        self,
        conn: Connection,
        delivery_id: UUID,
        now: datetime,
        suppress_if: Callable[[Delivery], str | None] | None,
    ) -> Resent:
        row = conn.execute(_SELECT_FOR_UPDATE, {"b_id": delivery_id}).first()
        if row is None:
            raise DeliveryNotFoundError(delivery_id)
        original = _delivery(row)
        if original.status not in _RESENDABLE:
            raise NotResendableError(delivery_id, original.status, original.reason)
        spec = NewDelivery(
            channel=original.channel,
            recipient=original.recipient,
            payload=original.payload,
            notification_key=original.notification_key,
            idempotency_key=resend_key(original.id),
            max_attempts=original.max_attempts,
            expires_at=original.expires_at,
            metadata=original.metadata,
        )
        rows = [self._row_for(spec, now, -1)]
        drafts = _suppress(rows, None, suppress_if)
        [result] = self._insert_deliveries(conn, rows, now, drafts)
        if result.created:
            conn.execute(
                _JOURNAL.insert(),
                _journal_values(
                    original.id, now, JournalKind.RESENT, detail={"as": str(result.delivery.id)}
                ),
            )
        return Resent(original=original, copy=result.delivery, created=result.created)

    def resendable(
        self,
        *,
        since: datetime,
        channel: str | None = None,
        reason: str | None = None,
        limit: int | None = None,
    ) -> list[UUID]:
        """Ids of the cancelled and suppressed deliveries last written at or after ``since``.

        Oldest first; only ``channel`` and only ``reason`` when given. Copies
        made by :meth:`resend` are left out, so running a bulk resend again
        resends nothing new: a copy is resent by its id.
        """
        since = _aware(since, "since")
        if limit is not None:
            whole("limit", limit, minimum=1)
        query = (
            select(_D.id)
            .where(
                _D.status.in_([status.value for status in sorted(_RESENDABLE)]),
                _D.updated_at >= since,
                ~_D.idempotency_key.startswith(RESEND_KEY_PREFIX, autoescape=True),
            )
            .order_by(_D.updated_at, _D.id)
            .limit(limit)
        )
        query = _matching(query, (("channel", channel, _D.channel), ("reason", reason, _D.reason)))
        with self._read() as conn:
            return list(conn.scalars(query))

    # ------------------------------------------------------------------ reading

    def get(self, delivery_id: UUID) -> Delivery | None:
        """The delivery with this id, or ``None``."""
        _check_id(delivery_id)
        with self._read() as conn:
            row = conn.execute(select(_DELIVERIES).where(_D.id == delivery_id)).first()
        return _delivery(row) if row is not None else None

    def history(self, delivery_id: UUID) -> DeliveryHistory | None:
        """The delivery with all its attempts and journal entries, oldest first; or ``None``.

        Read in one transaction, so the three parts are consistent on
        PostgreSQL and SQLite alike.
        """
        _check_id(delivery_id)
        with self._read() as conn:
            row = conn.execute(select(_DELIVERIES).where(_D.id == delivery_id)).first()
            if row is None:
                return None
            attempts = conn.execute(
                select(_ATTEMPTS).where(_A.delivery_id == delivery_id).order_by(_A.number)
            ).all()
            journal = conn.execute(
                select(_JOURNAL).where(_J.delivery_id == delivery_id).order_by(_J.id)
            ).all()
        return DeliveryHistory(
            delivery=_delivery(row),
            attempts=tuple(_attempt(a) for a in attempts),
            journal=tuple(_journal_entry(j) for j in journal),
        )

    @contextmanager
    def lock(self, delivery_id: UUID) -> Iterator[LockedDelivery]:
        """Read a delivery for update and keep its transaction open for the block.

        One transaction: the row is read with ``SELECT ... FOR UPDATE`` (on
        SQLite under the ``BEGIN IMMEDIATE`` write lock), the block decides
        and writes at most once through the :class:`LockedDelivery`, and the
        transaction commits when the block ends (rolls back if it raises).
        ``perform()`` uses it so that reading, the policies and the claim cost
        one commit, not two.
        """
        _check_id(delivery_id)
        with self._write() as conn:
            row = conn.execute(_SELECT_FOR_UPDATE, {"b_id": delivery_id}).first()
            found = _delivery(row) if row is not None else None
            yield LockedDelivery(conn, delivery_id, found)

    # --------------------------------------------------------------- claiming

    @property
    def claims_in_one_statement(self) -> bool:
        """Whether :meth:`quick_claim` claims here (PostgreSQL); elsewhere it returns ``None``."""
        return self.engine.dialect.name == "postgresql"

    def quick_claim(
        self,
        delivery_id: UUID,
        *,
        owner: str,
        lease_seconds: Mapping[str, float],
        now: datetime,
    ) -> Claim | None:
        """Claim, in one statement, a delivery nothing stands in the way of; else ``None``.

        The delivery must be live, due, not leased at all (an expired lease is
        an attempt for the rescuer), below ``max_attempts``, without an attempt
        in flight, not expired (``expires_at`` unset or after ``now``) and on a
        channel named in ``lease_seconds``, whose value is that channel's lease.
        It gets the lease and its in-flight attempt row in one autocommitted
        statement: one round trip, one commit. ``None`` says only that this
        statement did not claim: :meth:`lock` reads the row and tells why.
        Where :attr:`claims_in_one_statement` is false (SQLite, in process,
        where a transaction costs no round trip) it returns ``None`` without
        touching the database.
        """
        _check_id(delivery_id)
        if not self.claims_in_one_statement:
            return None
        now = _aware(now, "now")
        _check_text(owner, "owner", max_length=OWNER_LENGTH)
        leases = {
            channel: _lease_end(now, seconds).isoformat()
            for channel, seconds in lease_seconds.items()
        }
        parameters = {
            "b_id": delivery_id,
            "b_now": now,
            "b_owner": owner,
            "b_leases": json.dumps(leases),
        }
        with self._autocommit() as conn:
            row = conn.execute(_PG_QUICK_CLAIM, parameters).first()
        if row is None:
            return None
        delivery = _delivery(row)
        return Claim(
            delivery=delivery, attempt=_in_flight_attempt(delivery, now.astimezone(UTC), owner)
        )

    def claim(
        self, delivery_id: UUID, *, owner: str, lease_seconds: float, now: datetime
    ) -> Claim | None:
        """Take the lease and write the in-flight attempt, or return ``None``.

        :meth:`lock` then :meth:`LockedDelivery.claim`, in one transaction:
        the row is read for update, and a conditional UPDATE (fenced on the
        version read) succeeds only if the delivery is ``ready``/``failed``,
        due (``scheduled_at <= now``), not
        leased or its lease expired, below ``max_attempts`` and with no
        attempt in flight; it sets the lease, bumps ``attempt_count`` and
        ``version``; then the attempt row (number = new ``attempt_count``) is
        inserted. Of N concurrent claimers exactly one gets a :class:`Claim`.
        """
        with self.lock(delivery_id) as locked:
            if locked.delivery is None:
                return None
            return locked.claim(owner=owner, lease_seconds=lease_seconds, now=now)

    def record_attempt(
        self,
        claim: Claim,
        classification: Classification,
        *,
        event: Event,
        now: datetime,
        reason: str | None = None,
        next_run_at: datetime | None = None,
    ) -> Delivery:
        """Complete the claim's attempt and apply ``event``, all or nothing, fenced.

        The attempt row gets ``finished_at``, outcome, error class, the
        provider response (replaced by ``{"truncated": True, "original_bytes":
        n}`` over ``max_response_bytes``) and the error (truncated to
        ``max_error_chars``). The delivery takes the transition ``event``
        makes from the claimed status (its reason is the transition's fixed
        one, else ``reason``), the lease is cleared and ``scheduled_at`` set to
        ``next_run_at`` if given; the journal records the transition.

        Fenced on ``version == claim.delivery.version`` and ``lease_owner ==
        claim.owner``: if the lease was taken over, the delivery cancelled or
        the attempt resolved by a rescuer, nothing is written and
        :class:`LeaseLostError` is raised. An illegal ``event`` raises
        :class:`IllegalTransitionError` before anything is written.
        """
        now = _aware(now, "now")
        if next_run_at is not None:
            _aware(next_run_at, "next_run_at")
        _check_text(reason, "reason", max_length=REASON_LENGTH, optional=True)
        before = claim.delivery
        transition = apply_event(before.status, event)
        new_reason = transition.reason.value if transition.reason is not None else reason
        response = _sanitize(classification.provider_response)
        size = _json_size(response)
        if size > self.max_response_bytes:
            response = {"truncated": True, "original_bytes": size}
        error_class = classification.error_class
        attempt_values = {
            "finished_at": now,
            "outcome": Outcome(classification.outcome).value,
            "error_class": _truncate(str(error_class), ERROR_CLASS_LENGTH)
            if error_class is not None
            else None,
            "provider_response": response,
            "error": _truncate(classification.error, self.max_error_chars),
        }
        lost = LeaseLostError(before.id, claim.owner, before.version)
        delivery_parameters: dict[str, Any] = {
            "b_id": before.id,
            "b_version": before.version,
            "b_from_status": before.status.value,
            "b_owner": claim.owner,
            "b_status": transition.dest.value,
            "b_reason": new_reason,
            "b_updated_at": now,
        }
        if next_run_at is not None:
            delivery_parameters["b_scheduled_at"] = next_run_at
        attempt_parameters = {
            "b_id": before.id,
            "b_number": claim.attempt.number,
            "b_finished_at": now,
            "b_outcome": attempt_values["outcome"],
            "b_error_class": attempt_values["error_class"],
            "b_provider_response": attempt_values["provider_response"],
            "b_error": attempt_values["error"],
        }
        journal = _journal_values(
            before.id,
            now,
            JournalKind.TRANSITION,
            event=event,
            from_status=before.status,
            to_status=transition.dest,
            reason=new_reason,
            detail={
                "attempt": claim.attempt.number,
                "outcome": attempt_values["outcome"],
                "error_class": attempt_values["error_class"],
            },
        )
        journal_parameters = {f"j_{name}": value for name, value in journal.items()}
        if self.engine.dialect.name == "postgresql":
            # One statement, committed on its own: fence, attempt, delivery,
            # journal (whose delivery id comes from the fenced write, not
            # j_delivery_id). If the fence fails it writes nothing at all.
            statement = _RUN_PG_RECORD if next_run_at is None else _RUN_PG_RECORD_RESCHEDULED
            with self._autocommit() as conn:
                written = statement.first(
                    conn, attempt_parameters | delivery_parameters | journal_parameters
                )
            if written is None:
                raise lost
        else:
            with self._write() as conn:
                # The attempt first: if the fenced delivery write below
                # matches nothing, raising rolls this back too.
                if _RUN_FINISH_ATTEMPT.execute(conn, attempt_parameters).rowcount != 1:
                    raise lost
                statement = _RUN_RECORD if next_run_at is None else _RUN_RECORD_RESCHEDULED
                if statement.execute(conn, delivery_parameters).rowcount != 1:
                    raise lost
                _RUN_INSERT_JOURNAL_ENTRY.execute(conn, journal_parameters)
        # The row as the fenced write left it: every changed column is known here.
        return attrs.evolve(
            before,
            status=transition.dest,
            reason=new_reason,
            lease_owner=None,
            lease_expires_at=None,
            version=before.version + 1,
            updated_at=now.astimezone(UTC),
            scheduled_at=before.scheduled_at
            if next_run_at is None
            else next_run_at.astimezone(UTC),
        )

    # ------------------------------------------------------ transitions by id

    def _transition(
        self,
        delivery_id: UUID,
        event: Event,
        *,
        reason: str | None,
        expected_version: int | None,
        now: datetime,
    ) -> Delivery:
        _check_id(delivery_id)
        now = _aware(now, "now")
        with self._write() as conn:
            current = _read_for_write(conn, delivery_id, expected_version)
            return _transition_on(conn, current, event, reason=reason, now=now)

    def exhaust(self, delivery_id: UUID, *, expected_version: int, now: datetime) -> Delivery:
        """Move a ``failed`` delivery to ``cancelled`` / ``retries_exhausted``.

        Compare-and-set on ``expected_version`` (:class:`StaleDeliveryError`
        if it moved); :class:`IllegalTransitionError` from any other status;
        :class:`DeliveryNotFoundError` for an unknown id.
        """
        return self._transition(
            delivery_id, Event.EXHAUST, reason=None, expected_version=expected_version, now=now
        )

    def suppress(
        self, delivery_id: UUID, reason: str, *, expected_version: int | None, now: datetime
    ) -> Delivery:
        """Move a live delivery to ``suppressed`` with the policy's ``reason``.

        With ``expected_version`` it is a compare-and-set
        (:class:`StaleDeliveryError` if the version moved); without, it
        applies to whatever version it reads (still fenced against a write
        racing it). Terminal deliveries raise :class:`IllegalTransitionError`.
        """
        _check_text(reason, "reason", max_length=REASON_LENGTH)
        return self._transition(
            delivery_id, Event.SUPPRESS, reason=reason, expected_version=expected_version, now=now
        )

    def cancel(self, delivery_id: UUID, *, now: datetime) -> Delivery:
        """Cancel a live delivery (reason ``cancelled``), even while it is leased.

        Bumping ``version`` fences the leased worker off: its
        ``record_attempt`` raises :class:`LeaseLostError`. A racing write
        makes cancel re-read and try again. Terminal deliveries raise
        :class:`IllegalTransitionError`; unknown ids
        :class:`DeliveryNotFoundError`.
        """
        for _ in range(_CANCEL_TRIES - 1):
            try:
                return self._transition(
                    delivery_id, Event.CANCEL, reason=None, expected_version=None, now=now
                )
            except StaleDeliveryError:
                continue
        return self._transition(
            delivery_id, Event.CANCEL, reason=None, expected_version=None, now=now
        )

    def defer(
        self,
        delivery_id: UUID,
        until: datetime,
        reason: str,
        *,
        expected_version: int | None,
        now: datetime,
    ) -> Delivery:
        """Push a live delivery to ``until`` for ``reason`` (a policy decision).

        Sets ``scheduled_at`` and ``reason``, bumps ``deferral_count`` and
        ``version`` and journals a ``deferred`` entry; never touches the status
        or ``attempt_count``. Compare-and-set like :meth:`suppress`; a terminal
        delivery raises :class:`DeliveryTerminalError`.
        """
        _check_id(delivery_id)
        now = _aware(now, "now")
        until = _aware(until, "until")
        _check_text(reason, "reason", max_length=REASON_LENGTH)
        with self._write() as conn:
            current = _read_for_write(conn, delivery_id, expected_version)
            return _defer_on(conn, current, until, reason, now=now)

    # ------------------------------------------------------- operators, rescuer

    def expired_claims(self, *, now: datetime, limit: int = 100) -> list[Claim]:
        """Live deliveries whose lease expired with an attempt still in flight.

        The worker died mid-call. Each is returned as the :class:`Claim` it
        held (delivery snapshot + in-flight attempt), so the rescuer can call
        :meth:`record_attempt` with an ``unknown`` outcome, fenced on the same
        version. Oldest expiry first.
        """
        _check_limit("limit", limit)
        now = _aware(now, "now")
        query = _expired_in_flight(now).order_by(_D.lease_expires_at).limit(limit)
        with self._read() as conn:
            rows = conn.execute(query).all()
        return [Claim(delivery=_delivery(row), attempt=_attempt(row)) for row in rows]

    def due(
        self, *, now: datetime, limit: int = 500, not_touched_since: datetime | None = None
    ) -> list[Delivery]:
        """Live deliveries due at ``now`` that nobody holds, earliest first.

        "Nobody holds": no lease, or an expired lease with no attempt in
        flight (in-flight ones are :meth:`expired_claims`). With
        ``not_touched_since``, only those not written since then: the rescuer
        re-enqueues deliveries that may have lost their job.
        """
        _check_limit("limit", limit)
        now = _aware(now, "now")
        query = select(_DELIVERIES).where(_due_unheld(now))
        if not_touched_since is not None:
            query = query.where(_D.updated_at <= _aware(not_touched_since, "not_touched_since"))
        with self._read() as conn:
            rows = conn.execute(query.order_by(_D.scheduled_at).limit(limit)).all()
        return [_delivery(row) for row in rows]

    def counts(self) -> dict[tuple[DeliveryStatus, str | None], int]:
        """How many deliveries there are per ``(status, reason)``."""
        with self._read() as conn:
            return _counts(conn)

    def gauges(self, *, now: datetime, timeout: float | None = None) -> LedgerGauges:
        """The ledger's health at ``now``, read as one snapshot (for monitoring).

        Counts per status and reason, live deliveries per channel, the due
        backlog and its oldest, stuck attempts and the outbox: five
        aggregate queries, the counts one over every delivery (by the
        ``(status, reason)`` index), the others over live deliveries and the
        outbox only. On PostgreSQL they run in one ``REPEATABLE READ``
        transaction (one snapshot for all five) and, with ``timeout``
        (seconds), are cancelled past it (``statement_timeout``): a database
        that hangs raises instead of holding the caller (a timeout past
        PostgreSQL's largest, about 24.8 days, waits that long). On SQLite a read
        transaction is one snapshot already, and readers do not wait for
        writers; ``timeout`` is not needed there.
        """
        now = _aware(now, "now")
        if timeout is not None:
            timeout = seconds("timeout", timeout, positive=True)
        live = (
            select(_D.channel, _D.status, func.count())
            .where(_D.status.in_(_LIVE))
            .group_by(_D.channel, _D.status)
        )
        due = select(func.count(), func.min(_D.scheduled_at)).where(_due_unheld(now))
        stuck = select(func.count()).select_from(_expired_in_flight(now).subquery())
        # A row waits for the relay from the later of its writing and its run time.
        waiting_since = case((_O.run_at > _O.created_at, _O.run_at), else_=_O.created_at)
        outbox = select(func.count(), func.min(waiting_since)).where(_O.run_at <= now)
        with self._snapshot(timeout) as conn:
            counts = _counts(conn)
            by_channel = {
                (channel, DeliveryStatus(status)): count
                for channel, status, count in conn.execute(live)
            }
            due_count, oldest_due = conn.execute(due).one()
            stuck_count = conn.execute(stuck).scalar_one()
            outbox_count, oldest_outbox = conn.execute(outbox).one()
        return LedgerGauges(
            at=now,
            counts=counts,
            live_by_channel=by_channel,
            due=int(due_count),
            oldest_due_at=oldest_due,
            stuck=int(stuck_count),
            outbox=int(outbox_count),
            oldest_outbox_at=oldest_outbox,
        )

    def find(
        self,
        *,
        status: DeliveryStatus | None = None,
        reason: str | None = None,
        channel: str | None = None,
        recipient: str | None = None,
        idempotency_key: str | None = None,
        created_since: datetime | None = None,
        limit: int = 100,
    ) -> list[Delivery]:
        """The deliveries matching every filter given, newest first, at most ``limit``.

        Newest by ``created_at`` (its index orders them), then by id. A filter
        of the wrong kind raises :class:`TypeError` (``status`` must be a
        :class:`~chimeway_core.states.DeliveryStatus`), ``limit`` below 1
        :class:`ValueError`.
        """
        if status is not None and not isinstance(status, DeliveryStatus):
            raise TypeError(f"status must be a DeliveryStatus, not {type(status).__name__}")
        whole("limit", limit, minimum=1)
        query = select(_DELIVERIES).order_by(_D.created_at.desc(), _D.id.desc()).limit(limit)
        query = _matching(
            query,
            (
                ("reason", reason, _D.reason),
                ("channel", channel, _D.channel),
                ("recipient", recipient, _D.recipient),
                ("idempotency_key", idempotency_key, _D.idempotency_key),
            ),
        )
        if status is not None:
            query = query.where(_D.status == status.value)
        if created_since is not None:
            query = query.where(_D.created_at >= _aware(created_since, "created_since"))
        with self._read() as conn:
            return [_delivery(row) for row in conn.execute(query)]

    def oldest_non_terminal(self) -> Delivery | None:
        """The live delivery created first, or ``None`` (a health signal)."""
        query = select(_DELIVERIES).where(_D.status.in_(_LIVE)).order_by(_D.created_at).limit(1)
        with self._read() as conn:
            row = conn.execute(query).first()
        return _delivery(row) if row is not None else None

    def count_recent_attempts(self, *, channel: str, recipient: str, since: datetime) -> int:
        """Attempts started at or after ``since`` to this channel and recipient.

        Counted in the database, so a rate limit holds across workers.
        """
        with self._read() as conn:
            return _count_recent_attempts(conn, channel, recipient, since)

    # ---------------------------------------------------------------- retention

    def prune(self, *, before: datetime, batch_size: int = 1000, limit: int | None = None) -> int:
        """Delete terminal deliveries created and last written before ``before``; return how many.

        Each goes with its attempts, its journal and any outbox row left (the
        foreign keys cascade). Live deliveries (``ready``, ``failed``) are
        never deleted, however old. The oldest go first, ``batch_size`` per
        transaction, until a batch comes back short or ``limit`` deliveries
        are deleted: a long prune never holds its locks for long, and one
        interrupted keeps what it deleted. On PostgreSQL rows another
        transaction holds are skipped (``SKIP LOCKED``), so prunes can run
        side by side.

        What is deleted is forgotten: :meth:`get` finds nothing, a job still
        queued for it acknowledges "delivery not found", and its
        ``(channel, idempotency_key)`` can be used again.
        """
        _check_limit("batch_size", batch_size)
        remaining = math.inf if limit is None else _check_limit("limit", limit)
        chosen = _prunable(_aware(before, "before")).order_by(_D.created_at)
        if self.engine.dialect.name == "postgresql":
            chosen = chosen.with_for_update(skip_locked=True)
        total = 0
        while remaining:
            batch = int(min(batch_size, remaining))
            with self._write() as conn:
                ids = list(conn.execute(chosen.limit(batch)).scalars())
                for chunk in _in_chunks(ids):
                    conn.execute(delete(_DELIVERIES).where(_D.id.in_(list(chunk))))
            total += len(ids)
            remaining -= len(ids)
            if len(ids) < batch:
                break
        return total

    def count_prunable(self, *, before: datetime) -> int:
        """How many deliveries :meth:`prune` with this ``before`` would delete now."""
        query = select(func.count()).select_from(_prunable(_aware(before, "before")).subquery())
        with self._read() as conn:
            return int(conn.execute(query).scalar_one())

    # ------------------------------------------------------------------- outbox

    def relay_outbox(
        self,
        send: Callable[[Sequence[OutboxItem]], None],
        *,
        batch_size: int = 500,
        created_before: datetime | None = None,
        due_before: datetime | None = None,
    ) -> int:
        """Hand up to ``batch_size`` committed outbox rows to ``send``, then delete them.

        Only rows written before ``created_before`` and due (``run_at``)
        before ``due_before``, when given. One transaction: rows are selected
        (``FOR UPDATE SKIP LOCKED`` on PostgreSQL; on SQLite the ``BEGIN
        IMMEDIATE`` write lock serializes relays), ``send(items)`` is called,
        the rows are deleted, and the transaction commits. If ``send`` raises,
        everything rolls back and the rows stay for the next relay. Concurrent
        relays never hand out the same row twice. ``send`` is not called when
        there is nothing to relay. Returns how many rows were sent.
        """
        _check_limit("batch_size", batch_size)
        query = (
            select(_O.delivery_id, _O.run_at, _D.channel)
            .join(_DELIVERIES, _D.id == _O.delivery_id)
            .order_by(_O.created_at)
            .limit(batch_size)
        )
        if created_before is not None:
            query = query.where(_O.created_at < _aware(created_before, "created_before"))
        if due_before is not None:
            query = query.where(_O.run_at < _aware(due_before, "due_before"))
        with self._write() as conn:
            if conn.dialect.name == "postgresql":
                # Only the outbox rows: relays skip each other's, never a delivery row.
                query = query.with_for_update(skip_locked=True, of=_OUTBOX)
            items = [OutboxItem(*row) for row in conn.execute(query)]
            if not items:
                return 0
            send(items)
            for chunk in _in_chunks(items):
                conn.execute(
                    delete(_OUTBOX).where(_O.delivery_id.in_([item.delivery_id for item in chunk]))
                )
        return len(items)

    def delete_outbox(self, delivery_ids: Sequence[UUID]) -> None:
        """Remove outbox rows, after the caller enqueued those deliveries itself."""
        ids = [_check_id(delivery_id) for delivery_id in delivery_ids]
        with self._write() as conn:
            if conn.dialect.name == "postgresql":
                conn.exec_driver_sql(_PG_DELETE_OUTBOX, {"ids": ids})
                return
            for chunk in _in_chunks(ids):
                conn.execute(delete(_OUTBOX).where(_O.delivery_id.in_(list(chunk))))

    def outbox_size(self) -> int:
        """How many committed deliveries wait for the relay."""
        with self._read() as conn:
            return int(conn.execute(select(func.count()).select_from(_OUTBOX)).scalar_one())


_PG_BULK_CHUNK: Final = 10_000

# The ready-born bulk create on PostgreSQL: the rows go as one JSON document,
# one C-encoded parameter, that the server takes apart with json_to_recordset
# (binding 10 arrays instead costs a Python dump of every element; a VALUES
# list of 19 parameters per row costs more to build and parse than to run).
# The constant columns are single parameters; the journal and outbox rows are
# written from what was inserted. The ordinality keeps the rows in key order;
# json_to_recordset reads a JSON null as SQL NULL, and COALESCE stores a None
# payload as JSON null, as SQLAlchemy's JSON type does on every other path.
_PG_CREATE_READY: Final = f"""
WITH created AS (
    INSERT INTO {_DELIVERIES.name} (
        id, channel, recipient, payload, notification_key, idempotency_key, status,
        reason, attempt_count, max_attempts, scheduled_at, expires_at, lease_owner,
        lease_expires_at, version, deferral_count, metadata, created_at, updated_at
    )
    SELECT u.id, u.channel, u.recipient, COALESCE(u.payload, 'null'::json), u.notification_key,
        u.idempotency_key, %(ready)s, NULL, 0, u.max_attempts, u.scheduled_at, u.expires_at,
        NULL, NULL, 1, 0, u.metadata, %(now)s, %(now)s
    FROM ROWS FROM (
        json_to_recordset(%(rows)s::json) AS (
            id uuid, channel text, recipient text, payload json, notification_key text,
            idempotency_key text, max_attempts int, scheduled_at timestamptz,
            expires_at timestamptz, metadata json
        )
    ) WITH ORDINALITY AS u(
        id, channel, recipient, payload, notification_key, idempotency_key, max_attempts,
        scheduled_at, expires_at, metadata, position
    )
    ORDER BY u.position
    ON CONFLICT (channel, idempotency_key) DO NOTHING
    RETURNING id, scheduled_at
), journal AS (
    INSERT INTO {_JOURNAL.name} (delivery_id, at, kind, to_status, detail)
    SELECT id, %(now)s, %(created)s, %(ready)s, '{{}}'::json FROM created
)
INSERT INTO {_OUTBOX.name} (delivery_id, run_at, created_at)
SELECT id, scheduled_at, %(now)s FROM created
RETURNING delivery_id
"""  # noqa: S608 -- the names are the schema's constants; every value is bound


# The columns of a row that _PG_CREATE_READY's json_to_recordset reads.
_PG_DOCUMENT_COLUMNS: Final = (
    "id",
    "channel",
    "recipient",
    "payload",
    "notification_key",
    "idempotency_key",
    "max_attempts",
    "scheduled_at",
    "expires_at",
    "metadata",
)

_PG_DELETE_OUTBOX: Final = f"DELETE FROM {_OUTBOX.name} WHERE delivery_id = ANY(%(ids)s::uuid[])"  # noqa: S608 -- a constant name


def _document_scalar(value: object) -> str:
    # The two non-JSON types of a delivery row, as PostgreSQL parses them
    # (in UTC: any offset Python allows, sub-minute ones too, comes out +00:00).
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    raise TypeError(f"a delivery row holds a {type(value).__name__}")  # pragma: no cover


def _pg_create_ready(conn: Connection, rows: Sequence[dict[str, Any]], now: datetime) -> list[UUID]:
    """Insert ready-born rows (delivery, journal, outbox); the ids actually inserted."""
    # Only the columns the statement reads: the rest are its constants, and
    # dumping them (timestamps above all) costs more than picking these out.
    # Payload and metadata are already validated JSON values; the json columns
    # keep their text exactly as written here (compact).
    document = json.dumps(
        [{name: row[name] for name in _PG_DOCUMENT_COLUMNS} for row in rows],
        ensure_ascii=False,
        separators=(",", ":"),
        default=_document_scalar,
    )
    parameters = {
        "rows": document,
        "now": now,
        "ready": DeliveryStatus.READY.value,
        "created": JournalKind.CREATED.value,
    }
    return list(conn.exec_driver_sql(_PG_CREATE_READY, parameters).scalars())


# Built once per dialect, like the hot-path statements: a statement built per
# call has its cache key walked again on every execution.
_INSERT_IGNORING_CONFLICTS: Final[Mapping[str, Insert]] = {
    "postgresql": postgresql.insert(_DELIVERIES)
    .on_conflict_do_nothing(index_elements=[_D.channel, _D.idempotency_key])
    .returning(_D.id),
    "sqlite": sqlite.insert(_DELIVERIES)
    .on_conflict_do_nothing(index_elements=[_D.channel, _D.idempotency_key])
    .returning(_D.id),
}


def _insert_ignoring_conflicts(conn: Connection) -> Insert:
    """The dialect's INSERT ... ON CONFLICT DO NOTHING RETURNING id of delivery rows."""
    name = conn.dialect.name
    statement = _INSERT_IGNORING_CONFLICTS.get(name)
    if statement is None:
        raise NotImplementedError(f"chimeway's store supports PostgreSQL and SQLite, not {name}")
    return statement
