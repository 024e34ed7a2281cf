"""One object per database: everything the ledger does differently on PostgreSQL and SQLite.

Theory of operation
-------------------
The ledger runs the same operations on both databases; where they differ,
the difference is a method of a :class:`Dialect`, and the store picks its
dialect once, from its engine (:func:`dialect_for`). No other module of the
ledger asks which database it is on.

PostgreSQL is a server: each round trip costs. Its hot steps are one
statement each (data-modifying CTEs): the claim (lease and attempt row), the
record (fenced row lock, attempt, transition, journal entry) and the create of
deliveries born ready (delivery, journal and outbox rows, the rows sent as one
JSON document). A one-statement write runs in autocommit: one statement is
atomic by itself, and skipping ``BEGIN`` and ``COMMIT`` makes each one round
trip. Concurrent relays and prunes skip each other's rows (``SKIP LOCKED``),
and the gauges read one ``REPEATABLE READ`` snapshot under a
``statement_timeout``. Rate-limit counts at perform time take a
transaction-scoped advisory lock on the delivery's recipient
(:meth:`Dialect.lock_rate_counts`): a row lock holds only the one delivery,
and two deliveries to one recipient must not both count before either's
attempt row is committed.

SQLite runs in process, where a statement costs no round trip: the same
writes run as separate statements in a transaction. File databases get WAL, a
busy timeout and foreign keys on connect, and write transactions start with
``BEGIN IMMEDIATE`` (sent on the driver's connection), so writers queue for
the lock instead of failing with "database is locked" (that lock also
serializes relays and prunes, and rate-limit counts with the claims that
follow them). A read transaction is one snapshot already.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime
from typing import Any, Final, Protocol, TypeVar
from uuid import UUID

from sqlalchemy import (
    Connection,
    CursorResult,
    Engine,
    Insert,
    Row,
    Select,
    event,
)
from sqlalchemy import (
    Dialect as SQLAlchemyDialect,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.sql import FromClause

from chimeway_core.errors import UnsupportedDatabaseError
from chimeway_core.ledger import statements as sql
from chimeway_core.ledger.namespace import namespace_of
from chimeway_core.records import JournalKind
from chimeway_core.states import DeliveryStatus

__all__ = [
    "SUPPORTED_BACKENDS",
    "WRITE_OPTION",
    "Dialect",
    "PostgreSQL",
    "SQLite",
    "check_backend",
    "configure_sqlite",
    "sqlite_on_connect",
    "dialect_for",
    "rate_lock_key",
]

#: The execution option that marks a write transaction (SQLite: ``BEGIN IMMEDIATE``).
WRITE_OPTION: Final = "chimeway_write"
_SQLITE_BUSY_TIMEOUT_MS: Final = 30_000
_SQLITE_MINIMUM: Final = (3, 35, 0)
#: The largest statement_timeout PostgreSQL accepts, in milliseconds (a 32-bit int).
_PG_MAX_TIMEOUT_MS: Final = 2**31 - 1

_Query = TypeVar("_Query", bound=Select[Any])


class Dialect(Protocol):
    """What the ledger does differently on one database."""

    @property
    def name(self) -> str:
        """SQLAlchemy's name of the database."""

    @property
    def claims_in_one_statement(self) -> bool:
        """Whether :meth:`quick_claim` claims here; elsewhere the store does not call it."""

    @property
    def insert_ignoring_conflicts(self) -> Insert:
        """INSERT delivery rows ON CONFLICT (channel, idempotency_key) DO NOTHING RETURNING id."""

    def configure(self, engine: Engine) -> None:
        """Check the database and set up the engine's connections (once per engine)."""

    def one_statement(self, engine: Engine, write: Engine) -> AbstractContextManager[Connection]:
        """A connection for a write that is one statement here (autocommit), else a transaction."""

    def snapshot(self, engine: Engine, timeout: float | None) -> AbstractContextManager[Connection]:
        """A read transaction that sees one snapshot, cancelled past ``timeout`` where it can be."""

    def skip_locked(self, query: _Query, of: FromClause | None = None) -> _Query:
        """``query`` locking what it reads and skipping rows another transaction holds."""

    def claim(self, conn: Connection, parameters: Mapping[str, Any], *, number: int) -> bool:
        """Run the claim (``statements.CLAIM``): lease, attempt ``number``, outbox row cleared."""

    def quick_claim(self, conn: Connection, parameters: Mapping[str, Any]) -> Row[Any] | None:
        """Run the one-statement quick claim; the claimed delivery's row, or ``None``."""

    def record(self, conn: Connection, parameters: Mapping[str, Any], *, reschedule: bool) -> bool:
        """Finish the attempt, move the delivery, journal it; whether the fence held.

        On ``False`` the caller raises inside the transaction, which rolls back.
        """

    def create_ready(
        self, conn: Connection, rows: Sequence[dict[str, Any]], now: datetime
    ) -> set[UUID] | None:
        """Write born-ready rows with their journal and outbox rows; ``None``: not here."""

    def creates_in_one_statement(self, count: int) -> bool:
        """Whether :meth:`create_ready` writes ``count`` rows in one statement."""

    def delete_outbox(self, conn: Connection, ids: Sequence[UUID]) -> None:
        """Delete the outbox rows of ``ids``."""

    def lock_rate_counts(self, conn: Connection, recipient: str) -> None:
        """Wait for, and hold until ``conn``'s transaction ends, ``recipient``'s count lock.

        Taken after the delivery's row lock and before its first rate count,
        so a count sees the attempt rows of every claim that counted before
        it: each claim is written in the transaction that counted.
        """


def sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    """Set up a new SQLite connection: WAL, busy timeout, foreign keys, our BEGIN."""
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
    # then wait (busy_timeout) instead of failing on lock upgrade. Sent on
    # the DBAPI connection, as other drivers send their BEGIN: a statement
    # through SQLAlchemy here would cost a whole execution per transaction
    # (aiosqlite's DBAPI connection is adapted to be called so too).
    cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        cursor.execute(
            "BEGIN IMMEDIATE" if conn.get_execution_options().get(WRITE_OPTION) else "BEGIN"
        )
    finally:
        cursor.close()


def configure_sqlite(engine: Engine) -> None:
    """Add the SQLite connection listeners to ``engine`` (once; see the module docstring)."""
    if not event.contains(engine, "connect", sqlite_on_connect):
        event.listen(engine, "connect", sqlite_on_connect)
    if not event.contains(engine, "begin", _sqlite_on_begin):
        event.listen(engine, "begin", _sqlite_on_begin)


def _check_sqlite_version(dialect: SQLAlchemyDialect) -> None:
    """Raise :class:`UnsupportedDatabaseError` if the driver's SQLite is too old."""
    # RETURNING, which every write that reads back its row uses, came in 3.35.
    found: tuple[int, ...] = getattr(dialect.dbapi, "sqlite_version_info", _SQLITE_MINIMUM)
    if found < _SQLITE_MINIMUM:
        raise UnsupportedDatabaseError(
            "sqlite", "SQLite 3.35 or newer", version=".".join(map(str, found))
        )


@contextmanager
def _transaction(engine: Engine) -> Iterator[Connection]:
    with engine.begin() as conn:
        yield conn


class SQLite:
    """The embedded default: in process, separate statements in a transaction."""

    name: Final = "sqlite"
    claims_in_one_statement: Final = False
    insert_ignoring_conflicts: Final = (
        sqlite.insert(sql.DELIVERIES)
        .on_conflict_do_nothing(index_elements=[sql.D.channel, sql.D.idempotency_key])
        .returning(sql.D.id)
    )

    def configure(self, engine: Engine) -> None:
        _check_sqlite_version(engine.dialect)
        configure_sqlite(engine)

    def one_statement(self, engine: Engine, write: Engine) -> AbstractContextManager[Connection]:
        del engine
        return _transaction(write)

    def snapshot(self, engine: Engine, timeout: float | None) -> AbstractContextManager[Connection]:
        # A read transaction is one snapshot, and readers do not wait for writers.
        del timeout
        return _transaction(engine)

    def skip_locked(self, query: _Query, of: FromClause | None = None) -> _Query:
        # The BEGIN IMMEDIATE write lock serializes the writers already.
        del of
        return query

    def claim(self, conn: Connection, parameters: Mapping[str, Any], *, number: int) -> bool:
        if sql.RUN_CLAIM.execute(conn, parameters).rowcount != 1:
            return False
        sql.RUN_INSERT_IN_FLIGHT_ATTEMPT.execute(
            conn,
            {
                "b_id": parameters["b_id"],
                "b_number": number,
                "b_started_at": parameters["b_now"],
                "b_owner": parameters["b_owner"],
            },
        )
        # See statements.cleared_outbox.
        sql.RUN_DELETE_OUTBOX_ROW.execute(conn, {"b_id": parameters["b_id"]})
        return True

    def quick_claim(self, conn: Connection, parameters: Mapping[str, Any]) -> Row[Any] | None:
        del conn, parameters
        return None  # pragma: no cover - the store never calls it here

    def record(self, conn: Connection, parameters: Mapping[str, Any], *, reschedule: bool) -> bool:
        # The attempt first: if the fenced delivery write below matches
        # nothing, the caller's raising rolls this back too.
        if sql.RUN_FINISH_ATTEMPT.execute(conn, parameters).rowcount != 1:
            return False
        statement = sql.RUN_RECORD_RESCHEDULED if reschedule else sql.RUN_RECORD
        if statement.execute(conn, parameters).rowcount != 1:
            return False
        sql.RUN_INSERT_JOURNAL_ENTRY.execute(conn, parameters)
        return True

    def create_ready(
        self, conn: Connection, rows: Sequence[dict[str, Any]], now: datetime
    ) -> set[UUID] | None:
        # One executemany per table. It tells how many delivery rows were
        # written, not which: a batch that met a key already held (or held
        # twice in it) goes back to the savepoint and the general way, which
        # reads back each written id. A lone row met one or was not written.
        if len(rows) == 1:
            written = _write_ready(conn, rows, now)
        else:
            with conn.begin_nested() as savepoint:
                written = _write_ready(conn, rows, now)
                if not written:
                    savepoint.rollback()
        return {row["id"] for row in rows} if written else None

    def creates_in_one_statement(self, count: int) -> bool:
        del count
        return False

    def delete_outbox(self, conn: Connection, ids: Sequence[UUID]) -> None:
        if ids:
            sql.RUN_DELETE_OUTBOX_ROW.execute_many(conn, [{"b_id": id_} for id_ in ids])

    def lock_rate_counts(self, conn: Connection, recipient: str) -> None:
        # The BEGIN IMMEDIATE write lock serializes the writers already.
        del conn, recipient


def _write_ready(conn: Connection, rows: Sequence[dict[str, Any]], now: datetime) -> bool:
    """Write born-ready rows, then their journal and outbox rows if every one was written."""
    # What every row born ready at now holds alike is converted once.
    born = {
        "status": DeliveryStatus.READY.value,
        "reason": None,
        "attempt_count": 0,
        "lease_owner": None,
        "lease_expires_at": None,
        "version": 1,
        "deferral_count": 0,
        "created_at": now,
        "updated_at": now,
    }
    if sql.RUN_SQLITE_INSERT_DELIVERIES.execute_many(conn, rows, born).rowcount != len(rows):
        return False
    rest = [{"b_id": row["id"], "b_run_at": row["scheduled_at"]} for row in rows]
    sql.RUN_INSERT_CREATED_ENTRIES.execute_many(conn, rest, {"b_now": now})
    sql.RUN_INSERT_OUTBOX_ROWS.execute_many(conn, rest, {"b_now": now})
    return True


def _document_scalar(value: object) -> str:
    # The two non-JSON types of a delivery row, as PostgreSQL parses them
    # (in UTC: any offset Python allows, sub-minute ones too, comes out +00:00).
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    raise TypeError(f"a delivery row holds a {type(value).__name__}")  # pragma: no cover


def _documents(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The columns of ``rows`` the create reads, its ids and timestamps as text."""
    # A batch holds a few distinct timestamps (its now) many times: each is
    # written once.
    stamps: dict[datetime, str] = {}
    documents = []
    for row in rows:
        document = {name: row[name] for name in sql.PG_DOCUMENT_COLUMNS}
        document["id"] = str(row["id"])
        for name in ("scheduled_at", "expires_at"):
            if (value := row[name]) is not None:
                text = stamps.get(value)
                document[name] = stamps[value] = text or _document_scalar(value)
        documents.append(document)
    return documents


class PostgreSQL:
    """The server database: each hot step one statement, one round trip."""

    name: Final = "postgresql"
    claims_in_one_statement: Final = True
    insert_ignoring_conflicts: Final = (
        postgresql.insert(sql.DELIVERIES)
        .on_conflict_do_nothing(index_elements=[sql.D.channel, sql.D.idempotency_key])
        .returning(sql.D.id)
    )

    def configure(self, engine: Engine) -> None:
        del engine

    @contextmanager
    def one_statement(self, engine: Engine, write: Engine) -> Iterator[Connection]:
        """A connection whose every statement commits on its own.

        A single statement is atomic by itself: outside ``BEGIN`` ... ``COMMIT``
        it saves those two round trips. The driver's autocommit flag is set
        for the block and restored before the connection goes back to the
        pool; SQLAlchemy still sees one transaction, so its events (and
        anything counting commits) do too.
        """
        del write
        with engine.connect() as conn:
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
    def snapshot(self, engine: Engine, timeout: float | None) -> Iterator[Connection]:
        with (
            engine.connect().execution_options(isolation_level="REPEATABLE READ") as conn,
            conn.begin(),
        ):
            if timeout is not None:
                # SET LOCAL takes no bind parameter; the value is a checked number,
                # held to what the setting can hold (about 24.8 days: no limit, in effect).
                ms = min(_PG_MAX_TIMEOUT_MS, max(1, math.ceil(timeout * 1000)))
                conn.exec_driver_sql(f"SET LOCAL statement_timeout = {ms}")
            yield conn

    def skip_locked(self, query: _Query, of: FromClause | None = None) -> _Query:
        return query.with_for_update(skip_locked=True, of=of)

    def claim(self, conn: Connection, parameters: Mapping[str, Any], *, number: int) -> bool:
        del number  # the statement numbers the attempt from the row it claims
        return sql.RUN_PG_CLAIM.first(conn, parameters) is not None

    def quick_claim(self, conn: Connection, parameters: Mapping[str, Any]) -> Row[Any] | None:
        return conn.execute(sql.PG_QUICK_CLAIM, parameters).first()

    def record(self, conn: Connection, parameters: Mapping[str, Any], *, reschedule: bool) -> bool:
        # Fence, attempt, delivery and journal (whose delivery id comes from
        # the fenced write, not j_delivery_id); a failed fence writes nothing.
        statement = sql.RUN_PG_RECORD_RESCHEDULED if reschedule else sql.RUN_PG_RECORD
        return statement.first(conn, parameters) is not None

    def create_ready(
        self, conn: Connection, rows: Sequence[dict[str, Any]], now: datetime
    ) -> set[UUID] | None:
        inserted: set[UUID] = set()
        for chunk in sql.in_chunks(rows, sql.PG_BULK_CHUNK):
            # Only the columns the statement reads: the rest are its constants, and
            # dumping them (timestamps above all) costs more than picking these out.
            # Payload and metadata are already validated JSON values; the json columns
            # keep their text exactly as written here (compact).
            document = json.dumps(
                _documents(chunk),
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
            created = _run(conn, sql.PG_CREATE_READY_RAW, parameters)
            inserted.update(created.scalars())
        return inserted

    def creates_in_one_statement(self, count: int) -> bool:
        return count <= sql.PG_BULK_CHUNK

    def delete_outbox(self, conn: Connection, ids: Sequence[UUID]) -> None:
        _run(conn, sql.PG_DELETE_OUTBOX_RAW, {"ids": list(ids)})

    def lock_rate_counts(self, conn: Connection, recipient: str) -> None:
        conn.execute(sql.PG_RATE_LOCK, {"b_key": rate_lock_key(namespace_of(conn), recipient)})


def rate_lock_key(namespace: str | None, recipient: str) -> int:
    """The advisory lock key of ``recipient``'s rate counts in ``namespace``: a signed bigint.

    The first 8 bytes of a BLAKE2b digest, so every process and every
    PostgreSQL version computes the same key; stores in two namespaces keep
    apart, as their ledgers do.
    """
    named = json.dumps(["chimeway-rate", namespace, recipient]).encode()
    return int.from_bytes(hashlib.blake2b(named, digest_size=8).digest(), "big", signed=True)


def _run(
    conn: Connection, statement: sql.RawStatement, parameters: dict[str, Any]
) -> CursorResult[Any]:
    """Run a raw PostgreSQL statement in ``conn``'s namespace: psycopg's text, or typed."""
    pyformat, bound = statement.sql(namespace_of(conn))
    if conn.dialect.paramstyle == "pyformat":
        return conn.exec_driver_sql(pyformat, parameters)
    return conn.execute(bound, parameters)


_DIALECTS: Final[Mapping[str, Dialect]] = {"postgresql": PostgreSQL(), "sqlite": SQLite()}
#: The databases the ledger runs on, by SQLAlchemy backend name.
SUPPORTED_BACKENDS: Final = tuple(_DIALECTS)


def check_backend(name: str) -> None:
    """Raise :class:`UnsupportedDatabaseError` unless ``name`` is PostgreSQL or SQLite."""
    if name not in _DIALECTS:
        raise UnsupportedDatabaseError(name, "PostgreSQL or SQLite")


def dialect_for(engine: Engine) -> Dialect:
    """The dialect object of ``engine``'s database (checked: PostgreSQL or SQLite)."""
    check_backend(engine.dialect.name)
    return _DIALECTS[engine.dialect.name]
