"""The ledger's statements and predicates, built once and named.

Theory of operation
-------------------
Every SQL statement and ``WHERE`` fragment the ledger runs more than once is
here, by name, so a reader finds the SQL of an operation in one place and
adding a column touches one module. The statements of ``perform()`` are
built once at import, with bind parameters, instead of per call: SQLAlchemy
memoizes a statement object's cache key, so executing a prebuilt one skips
constructing, coercing and cache-key walking (most of the Python cost of a
write, per the profile in docs/performance.md). The hottest ones are also
:class:`~chimeway_core.ledger.precompiled.Precompiled` (``RUN_*``): compiled
once per dialect and run as driver SQL.

The rules of claimability come from :mod:`chimeway_core.ledger.claimable`;
``no_attempt_in_flight`` is the one guard only the database can check.
Statements named ``PG_*`` are PostgreSQL's one-statement forms
(data-modifying CTEs); :mod:`chimeway_core.ledger.dialects` decides which
database runs which.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any, Final
from uuid import UUID

import attrs
from sqlalchemy import (
    CTE,
    BigInteger,
    BindParameter,
    ColumnElement,
    DateTime,
    Insert,
    Select,
    String,
    Update,
    and_,
    bindparam,
    cast,
    delete,
    exists,
    func,
    insert,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.sql.elements import TextClause
from sqlalchemy.sql.expression import ColumnCollection
from sqlalchemy.types import TypeEngine, Uuid

from chimeway_core.ledger.claimable import (
    DUE,
    LEASE_LAPSED,
    LIVE,
    QUICKLY_CLAIMABLE,
    UNLEASED,
    claimable_where,
)
from chimeway_core.ledger.namespace import qualified
from chimeway_core.ledger.precompiled import Precompiled
from chimeway_core.ledger.schema import AttemptRow, DeliveryRow, JournalRow, OutboxRow, metadata
from chimeway_core.records import JournalKind
from chimeway_core.states import TERMINAL_STATUSES, DeliveryStatus

DELIVERIES: Final = metadata.tables[DeliveryRow.__tablename__]
ATTEMPTS: Final = metadata.tables[AttemptRow.__tablename__]
JOURNAL: Final = metadata.tables[JournalRow.__tablename__]
OUTBOX: Final = metadata.tables[OutboxRow.__tablename__]
D: Final = DELIVERIES.c
A: Final = ATTEMPTS.c
J: Final = JOURNAL.c
OUT: Final = OUTBOX.c

# Rows per statement for lookups by key: well under SQLite's variable limit.
CHUNK: Final = 500
# Rows per statement of PostgreSQL's one-statement create.
PG_BULK_CHUNK: Final = 10_000


def in_chunks(items: Sequence[Any], size: int = CHUNK) -> Iterator[Sequence[Any]]:
    """``items`` in consecutive slices of at most ``size``."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


# ------------------------------------------------------------------ predicates


def no_attempt_in_flight() -> ColumnElement[bool]:
    """The delivery has no attempt row without an outcome (nobody is calling)."""
    return ~exists().where(A.delivery_id == D.id, A.outcome.is_(None))


def prunable(before: datetime) -> Select[tuple[UUID]]:
    """Ids of terminal deliveries created and last written before ``before``."""
    # created_at < before follows from updated_at < before on one clock; it is
    # there for the created_at index, which finds the oldest rows first.
    return select(D.id).where(
        D.status.in_(sorted(status.value for status in TERMINAL_STATUSES)),
        D.created_at < before,
        D.updated_at < before,
    )


def due_unheld(now: datetime) -> ColumnElement[bool]:
    """Live, due at ``now``, and nobody holds it: no lease, or an expired one with no attempt."""
    return and_(
        LIVE.where(now),
        DUE.where(now),
        or_(UNLEASED.where(now), and_(LEASE_LAPSED.where(now), no_attempt_in_flight())),
    )


def expired_in_flight(now: datetime) -> Select[Any]:
    """Live deliveries joined to their in-flight attempt, whose lease expired by ``now``."""
    return (
        select(DELIVERIES, ATTEMPTS)
        .join(ATTEMPTS, and_(A.delivery_id == D.id, A.outcome.is_(None)))
        .where(LIVE.where(now), LEASE_LAPSED.where(now))
    )


def matching(
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


# ------------------------------------------------------------ hot-path statements

SELECT_BY_ID: Final = select(DELIVERIES).where(D.id == bindparam("b_id"))
SELECT_FOR_UPDATE: Final = SELECT_BY_ID.with_for_update()

CLAIM: Final = (
    update(DELIVERIES)
    .where(
        D.id == bindparam("b_id"),
        D.version == bindparam("b_version"),
        claimable_where(bindparam("b_now")),
        no_attempt_in_flight(),
    )
    .values(
        lease_owner=bindparam("b_owner"),
        lease_expires_at=bindparam("b_lease_expires_at"),
        attempt_count=D.attempt_count + 1,
        version=D.version + 1,
        updated_at=bindparam("b_updated_at"),
    )
)

INSERT_JOURNAL: Final = JOURNAL.insert()
# The two inserts perform() makes on SQLite, with explicit parameters so that
# they can run precompiled (a bare insert() compiles from the keys it gets).
INSERT_IN_FLIGHT_ATTEMPT: Final = insert(ATTEMPTS).values(
    delivery_id=bindparam("b_id"),
    number=bindparam("b_number"),
    started_at=bindparam("b_started_at"),
    worker=bindparam("b_owner"),
)

FINISH_ATTEMPT: Final = (
    update(ATTEMPTS)
    .where(
        A.delivery_id == bindparam("b_id"),
        A.number == bindparam("b_number"),
        A.outcome.is_(None),
    )
    .values(
        finished_at=bindparam("b_finished_at"),
        outcome=bindparam("b_outcome"),
        error_class=bindparam("b_error_class"),
        provider_response=bindparam("b_provider_response", type_=A.provider_response.type),
        error=bindparam("b_error"),
    )
)


def record_values(*, reschedule: bool) -> dict[str, Any]:
    """What the record writes on the delivery row: the transition, no lease, a new version."""
    values: dict[str, Any] = {
        "status": bindparam("b_status"),
        "reason": bindparam("b_reason"),
        "lease_owner": None,
        "lease_expires_at": None,
        "version": D.version + 1,
        "updated_at": bindparam("b_updated_at"),
    }
    if reschedule:
        values["scheduled_at"] = bindparam("b_scheduled_at")
    return values


def record_fence(row: ColumnCollection[str, Any]) -> tuple[ColumnElement[bool], ...]:
    """The record's fence on ``row``: it still has the claim's version, status and owner."""
    return (
        row.version == bindparam("b_version"),
        row.status == bindparam("b_from_status"),
        row.lease_owner == bindparam("b_owner"),
    )


def record_statement(*, reschedule: bool) -> Update:
    return (
        update(DELIVERIES)
        .where(D.id == bindparam("b_id"), *record_fence(D))
        .values(record_values(reschedule=reschedule))
    )


RECORD: Final = record_statement(reschedule=False)
RECORD_RESCHEDULED: Final = record_statement(reschedule=True)

# On PostgreSQL each write step is one statement (data-modifying CTEs), so the
# claim and the record cost one round trip each instead of two and three.
# SQLite runs in process: its separate statements cost no round trip.

JOURNAL_FIELDS: Final = ("at", "kind", "event", "from_status", "to_status", "reason", "detail")


def journal_binds() -> dict[str, BindParameter[Any]]:
    """A journal entry's fields (but its delivery) as ``j_``-named, typed bind parameters."""
    return {name: bindparam(f"j_{name}", type_=J[name].type) for name in JOURNAL_FIELDS}


def in_flight_attempt_of(claimed: CTE, started_at: str) -> Insert:
    """The write-ahead attempt row of what the claiming CTE ``claimed`` returned."""
    return insert(ATTEMPTS).from_select(
        ["delivery_id", "number", "started_at", "worker"],
        select(
            claimed.c.id,
            claimed.c.attempt_count,
            bindparam(started_at, type_=A.started_at.type),
            bindparam("b_owner", type_=A.worker.type),
        ),
    )


def cleared_outbox(claimed: CTE) -> CTE:
    """Delete the outbox row of what the claiming CTE ``claimed`` returned.

    A delivery a worker claimed is in the queue's hands: a relay that hands
    its row over again only makes a job that acknowledges and does nothing.
    The process that notified deletes its rows in batches (``flush_outbox``),
    so a process that notifies less than a batch per ``relay_grace`` would
    otherwise leave every row to the relay.
    """
    return (
        delete(OUTBOX)
        .where(OUT.delivery_id.in_(select(claimed.c.id)))
        .returning(OUT.delivery_id)
        .cte("cleared")
    )


def pg_claim_statement() -> Insert:
    claimed = CLAIM.returning(D.id, D.attempt_count).cte("claimed")
    return (
        in_flight_attempt_of(claimed, "b_updated_at")
        .add_cte(cleared_outbox(claimed))
        .returning(A.number)
    )


def pg_record_statement(*, reschedule: bool) -> Insert:
    # All three rows or none, without a transaction around it: the fence locks
    # the delivery row (FOR UPDATE returns its newest version, and every write
    # bumps the version), the attempt is finished only if that version passes
    # the fence and the delivery moved only if the attempt was finished.
    # The row is found by its primary key alone: with the fence's status among
    # the scan's conditions, a planner without statistics yet (a new table)
    # takes the status index and walks past every delivery in that status.
    fence = (
        select(D.id, D.version, D.status, D.lease_owner)
        .where(D.id == bindparam("b_id"))
        .with_for_update()
        .cte("fence")
    )
    fenced = select(fence.c.id).where(*record_fence(fence.c))
    finished = (
        FINISH_ATTEMPT.where(A.delivery_id.in_(fenced)).returning(A.delivery_id).cte("finished")
    )
    moved = (
        update(DELIVERIES)
        .where(D.id.in_(select(finished.c.delivery_id)))
        .values(record_values(reschedule=reschedule))
        .returning(D.id)
        .cte("moved")
    )
    journal = select(moved.c.id, *journal_binds().values())
    return (
        insert(JOURNAL)
        .from_select(["delivery_id", *JOURNAL_FIELDS], journal)
        .add_cte(fence, finished)
        .returning(J.id)
    )


PG_CLAIM: Final = pg_claim_statement()
PG_RECORD: Final = pg_record_statement(reschedule=False)
PG_RECORD_RESCHEDULED: Final = pg_record_statement(reschedule=True)


def pg_quick_claim_statement() -> Select[Any]:
    # The lease ends at the claimed channel's own time: the caller sends one
    # per channel it knows, as a JSON object, and a delivery on any other
    # channel is not claimed here.
    leases = cast(bindparam("b_leases", type_=String), postgresql.JSONB)
    lease_expires_at = cast(
        func.jsonb_extract_path_text(leases, D.channel), DateTime(timezone=True)
    )
    claimed = (
        update(DELIVERIES)
        .where(
            D.id == bindparam("b_id"),
            QUICKLY_CLAIMABLE.where(bindparam("b_now")),
            lease_expires_at.is_not(None),
            no_attempt_in_flight(),
        )
        .values(
            lease_owner=bindparam("b_owner"),
            lease_expires_at=lease_expires_at,
            attempt_count=D.attempt_count + 1,
            version=D.version + 1,
            updated_at=bindparam("b_now"),
        )
        .returning(*DELIVERIES.c)
        .cte("claimed")
    )
    attempt = in_flight_attempt_of(claimed, "b_now").cte("attempt")
    return select(*claimed.c).add_cte(attempt, cleared_outbox(claimed))


PG_QUICK_CLAIM: Final = pg_quick_claim_statement()

# The writes perform() executes, compiled once per dialect and run as driver
# SQL with the same type conversions (chimeway_core.precompiled). The lock's
# read stays a Core execution: driver SQL rebuilds the result metadata of its
# 19 columns on every call, which costs more than it saves.
RUN_CLAIM: Final = Precompiled(CLAIM)
RUN_INSERT_IN_FLIGHT_ATTEMPT: Final = Precompiled(INSERT_IN_FLIGHT_ATTEMPT)
RUN_DELETE_OUTBOX_ROW: Final = Precompiled(
    delete(OUTBOX).where(OUT.delivery_id == bindparam("b_id"))
)
RUN_INSERT_JOURNAL_ENTRY: Final = Precompiled(
    insert(JOURNAL).values({"delivery_id": bindparam("j_delivery_id"), **journal_binds()})
)
RUN_FINISH_ATTEMPT: Final = Precompiled(FINISH_ATTEMPT)
RUN_RECORD: Final = Precompiled(RECORD)
RUN_RECORD_RESCHEDULED: Final = Precompiled(RECORD_RESCHEDULED)
RUN_PG_CLAIM: Final = Precompiled(PG_CLAIM)
RUN_PG_RECORD: Final = Precompiled(PG_RECORD)
RUN_PG_RECORD_RESCHEDULED: Final = Precompiled(PG_RECORD_RESCHEDULED)

# The bulk create on SQLite, where a statement costs no round trip: one
# executemany per table (the driver prepares each statement once). A bare
# insert binds every column of a delivery row by name; conflicts on the key
# are skipped, and the rowcount says whether any was.
RUN_SQLITE_INSERT_DELIVERIES: Final = Precompiled(
    sqlite.insert(DELIVERIES).on_conflict_do_nothing(index_elements=[D.channel, D.idempotency_key])
)
RUN_INSERT_CREATED_ENTRIES: Final = Precompiled(
    insert(JOURNAL).values(
        delivery_id=bindparam("b_id"),
        at=bindparam("b_now", type_=J.at.type),
        kind=JournalKind.CREATED.value,
        to_status=DeliveryStatus.READY.value,
        detail=bindparam("b_detail", {}, type_=J.detail.type),
    )
)
RUN_INSERT_OUTBOX_ROWS: Final = Precompiled(
    insert(OUTBOX).values(
        delivery_id=bindparam("b_id"),
        run_at=bindparam("b_run_at", type_=OUT.run_at.type),
        created_at=bindparam("b_now", type_=OUT.created_at.type),
    )
)

COUNT_RECENT_ATTEMPTS: Final = (
    select(func.count())
    .select_from(ATTEMPTS.join(DELIVERIES, A.delivery_id == D.id))
    .where(
        D.channel == bindparam("b_channel"),
        D.recipient == bindparam("b_recipient"),
        A.started_at >= bindparam("b_since"),
    )
)
# Across channels: the recipient's index, ``(recipient, created_at, id,
# channel)``, holds the id to join on and the channel to filter by.
COUNT_RECIPIENT_ATTEMPTS: Final = (
    select(func.count())
    .select_from(ATTEMPTS.join(DELIVERIES, A.delivery_id == D.id))
    .where(D.recipient == bindparam("b_recipient"), A.started_at >= bindparam("b_since"))
)
COUNT_RECIPIENT_ATTEMPTS_ON: Final = COUNT_RECIPIENT_ATTEMPTS.where(
    D.channel.in_(bindparam("b_channels", expanding=True))
)
# Held until the transaction ends: rate counts of one recipient's deliveries,
# and the claims that follow them, take turns (see Dialect.lock_rate_counts).
PG_RATE_LOCK: Final = select(func.pg_advisory_xact_lock(cast(bindparam("b_key"), BigInteger)))


# The ready-born bulk create on PostgreSQL: the rows go as one JSON document,
# one C-encoded parameter, that the server takes apart with json_to_recordset
# (binding 10 arrays instead costs a Python dump of every element; a VALUES
# list of 19 parameters per row costs more to build and parse than to run).
# The constant columns are single parameters; the journal and outbox rows are
# written from what was inserted. The ordinality keeps the rows in key order;
# json_to_recordset reads a JSON null as SQL NULL, and COALESCE stores a None
# payload as JSON null, as SQLAlchemy's JSON type does on every other path.
_PG_CREATE_READY: Final = """
WITH created AS (
    INSERT INTO {deliveries} (
        id, channel, recipient, payload, notification_key, idempotency_key, status,
        reason, attempt_count, max_attempts, scheduled_at, expires_at, lease_owner,
        lease_expires_at, version, deferral_count, metadata, created_at, updated_at,
        trace_context
    )
    SELECT u.id, u.channel, u.recipient, COALESCE(u.payload, 'null'::json), u.notification_key,
        u.idempotency_key, %(ready)s, NULL, 0, u.max_attempts, u.scheduled_at, u.expires_at,
        NULL, NULL, 1, 0, u.metadata, %(now)s, %(now)s, u.trace_context
    FROM ROWS FROM (
        json_to_recordset(%(rows)s::json) AS (
            id uuid, channel text, recipient text, payload json, notification_key text,
            idempotency_key text, max_attempts int, scheduled_at timestamptz,
            expires_at timestamptz, metadata json, trace_context text
        )
    ) WITH ORDINALITY AS u(
        id, channel, recipient, payload, notification_key, idempotency_key, max_attempts,
        scheduled_at, expires_at, metadata, trace_context, position
    )
    ORDER BY u.position
    ON CONFLICT (channel, idempotency_key) DO NOTHING
    RETURNING id, scheduled_at
), journal AS (
    INSERT INTO {journal} (delivery_id, at, kind, to_status, detail)
    SELECT id, %(now)s, %(created)s, %(ready)s, '{{}}'::json FROM created
)
INSERT INTO {outbox} (delivery_id, run_at, created_at)
SELECT id, scheduled_at, %(now)s FROM created
RETURNING delivery_id
"""


def _bound(pyformat: str, **types: TypeEngine[Any]) -> TextClause:
    """``pyformat`` for drivers of another paramstyle (asyncpg): typed binds, no ``::`` casts.

    psycopg takes the pyformat text as it is (``exec_driver_sql``, the fast
    path); a typed ``text()`` lets SQLAlchemy write each driver's own
    placeholders, with the casts asyncpg needs to know a parameter's type.
    """
    portable = re.sub(r"%\((\w+)\)s::(\w+(?:\[\])?)", r"CAST(:\1 AS \2)", pyformat)
    portable = re.sub(r"%\((\w+)\)s", r":\1", portable)
    return text(portable).bindparams(*(bindparam(name, type_=kind) for name, kind in types.items()))


# The columns of a row that PG_CREATE_READY's json_to_recordset reads.
PG_DOCUMENT_COLUMNS: Final = (
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
    "trace_context",
)

_PG_DELETE_OUTBOX: Final = "DELETE FROM {outbox} WHERE delivery_id = ANY(%(ids)s::uuid[])"


@attrs.frozen
class RawStatement:
    """A PostgreSQL statement written as text: psycopg's pyformat, and typed for other drivers.

    Text is not translated by ``schema_translate_map``: :meth:`sql` writes the
    table names qualified by the namespace, once per namespace.
    """

    template: str
    types: tuple[tuple[str, TypeEngine[Any]], ...]

    def sql(self, namespace: str | None) -> tuple[str, TextClause]:
        """The pyformat text and its typed ``text()`` (see :func:`_bound`) in ``namespace``."""
        return _raw_sql(self, namespace)


@functools.cache
def _raw_sql(statement: RawStatement, namespace: str | None) -> tuple[str, TextClause]:
    pyformat = statement.template.format(
        deliveries=qualified(DELIVERIES.name, namespace),
        journal=qualified(JOURNAL.name, namespace),
        outbox=qualified(OUTBOX.name, namespace),
    )
    return pyformat, _bound(pyformat, **dict(statement.types))


PG_CREATE_READY_RAW: Final = RawStatement(
    _PG_CREATE_READY,
    types=(
        ("rows", String()),
        ("now", DateTime(timezone=True)),
        ("ready", String()),
        ("created", String()),
    ),
)
PG_DELETE_OUTBOX_RAW: Final = RawStatement(
    _PG_DELETE_OUTBOX, types=(("ids", postgresql.ARRAY(Uuid())),)
)
#: The statements in the default schema (pyformat, and typed for other drivers).
PG_CREATE_READY, PG_CREATE_READY_BOUND = PG_CREATE_READY_RAW.sql(None)
PG_DELETE_OUTBOX, PG_DELETE_OUTBOX_BOUND = PG_DELETE_OUTBOX_RAW.sql(None)
