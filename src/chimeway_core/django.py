"""chimeway in a Django project: notify inside Django's own transactions.

Theory of operation
-------------------
:class:`DjangoChimeway` wraps an engine whose ledger is on the database a
Django alias uses (PostgreSQL through psycopg 3, or SQLite). Its ``notify``,
``notify_many`` and ``resend`` each run as an ``atomic`` block on Django's
connection of that alias:

- The delivery and its outbox row are written through Django's own DB-API
  connection, in its transaction. chimeway lends the connection to
  SQLAlchemy for the call (a :class:`~sqlalchemy.orm.Session` on an engine
  whose pool hands out Django's current connection of the alias) and
  SQLAlchemy runs statements on it, savepoints included, but never ends
  Django's transaction: its ``commit``, ``rollback`` and ``close`` of the
  lent connection do nothing, and its pool resets nothing on return. That
  engine shares the dialect of the ledger's own engine, set up already, so
  lending runs nothing on Django's connection: SQLAlchemy's connect hooks,
  which would replace Django's SQLite ``REGEXP`` function or pile notice
  handlers on its psycopg connection, never run there.
- Django's settings stay Django's: on PostgreSQL the lent cursors read
  ``timestamptz`` with psycopg's own loader (Django's drops the zone when
  ``USE_TZ`` is off), and on SQLite a timestamp Django's converters parsed
  already is taken as it is.
- The hand-over goes to ``transaction.on_commit``: Django runs it after the
  outermost commit and drops it when the block, or any savepoint around the
  call, rolls back. A rolled-back ``atomic`` block leaves no delivery and no
  job; a nested block rolled back inside a committed one drops exactly what
  it wrote, and the rest is handed over.
- Each call is a savepoint inside the caller's block (its own transaction
  outside any): a call that raises leaves nothing behind and the caller's
  transaction usable. Outside an ``atomic`` block it commits on its own and
  hands over at once.

A hand-over that fails after the commit (a broker down) is logged by Django
(``robust=True``: the application's other ``on_commit`` callbacks still run)
and the relay queues the delivery later, as after a crash between commit and
enqueue.

Needs Django (``pip install 'chimeway[django]'``); importing
:mod:`chimeway_core` alone never imports it.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import Any, TypeVar
from uuid import UUID

import attrs
from django.db import DEFAULT_DB_ALIAS, connections, transaction
from sqlalchemy import Engine
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

from chimeway_core.engine import Chimeway
from chimeway_core.engine.handover import ON_COMMIT
from chimeway_core.errors import UnsupportedDatabaseError
from chimeway_core.records import Delivery, NewDelivery, Resent

__all__ = ["DjangoChimeway"]

_T = TypeVar("_T")

#: Django's database vendor -> the SQLAlchemy driver of the same DB-API module.
_DRIVERS = {"postgresql": "psycopg", "sqlite": "pysqlite"}


class DjangoChimeway:
    """An engine's notify, notify_many and resend in Django's transactions.

    See the module docstring. Every method takes and returns what the
    engine's method of the same name does and raises what it raises; instead
    of ``session=`` it takes ``using=``, the Django database alias to write
    through (default: the one given here, else ``"default"``). The engine's
    ledger must be an :class:`~chimeway_core.SQLStore` on that alias's
    database, with the driver Django uses: the first call on an alias checks
    the kind of database, the driver and the database itself (PostgreSQL's
    ``current_database()`` on both connections, SQLite's file), and a
    mismatch is an :class:`~chimeway_core.errors.UnsupportedDatabaseError`
    raised before anything is written.
    """

    def __init__(self, engine: Chimeway, *, using: str = DEFAULT_DB_ALIAS) -> None:
        if not isinstance(engine, Chimeway):
            raise TypeError(f"engine must be a Chimeway, not {type(engine).__name__}")
        if not isinstance(using, str):
            raise TypeError(f"using must be a str, not {type(using).__name__}")
        self.engine = engine
        self.using = using
        self._lock = threading.Lock()
        self._lent: dict[str, tuple[Engine, Engine]] = {}

    def __repr__(self) -> str:
        return f"DjangoChimeway({self.engine!r}, using={self.using!r})"

    def notify(
        self,
        channel: str,
        recipient: str,
        payload: Any = None,
        *,
        notification_key: str | None = None,
        idempotency_key: str | None = None,
        max_attempts: int | None = None,
        scheduled_at: datetime | None = None,
        expires_at: datetime | None = None,
        metadata: Mapping[str, Any] | None = None,
        using: str | None = None,
    ) -> Delivery:
        """Record a delivery in Django's transaction and queue it once that commits.

        See :meth:`Chimeway.notify <chimeway_core.engine.Chimeway.notify>`.
        """
        return self._atomic(
            using,
            lambda session: self.engine.notify(
                channel,
                recipient,
                payload,
                notification_key=notification_key,
                idempotency_key=idempotency_key,
                max_attempts=max_attempts,
                scheduled_at=scheduled_at,
                expires_at=expires_at,
                metadata=metadata,
                session=session,
            ),
        )

    def notify_many(
        self, specs: Iterable[NewDelivery], *, using: str | None = None
    ) -> list[Delivery]:
        """Record many deliveries in Django's transaction (see ``Chimeway.notify_many``)."""
        batch = list(specs)
        return self._atomic(using, lambda session: self.engine.notify_many(batch, session=session))

    def resend(self, delivery_id: UUID, *, using: str | None = None) -> Resent:
        """Resend an unsent delivery in Django's transaction (see ``Chimeway.resend``)."""
        return self._atomic(using, lambda session: self.engine.resend(delivery_id, session=session))

    def _atomic(self, using: str | None, call: Callable[[Session], _T]) -> _T:
        """``call`` with a session on Django's connection of ``using``, in an atomic block."""
        alias = self.using if using is None else using
        if not isinstance(alias, str):
            raise TypeError(f"using must be a str, not {type(alias).__name__}")
        lent = self._engine_for(alias)  # refuses a mismatch before any transaction
        with transaction.atomic(using=alias):

            def on_commit(hand_over: Callable[[], None]) -> None:
                transaction.on_commit(hand_over, using=alias, robust=True)

            session = Session(bind=lent, info={ON_COMMIT: on_commit})
            try:
                return call(session)
            finally:
                session.close()  # its rollback of the lent connection does nothing

    def _engine_for(self, alias: str) -> Engine:
        """The SQLAlchemy engine lending Django's connection of ``alias`` (one per alias)."""
        own = getattr(self.engine.store, "engine", None)
        if not isinstance(own, Engine):
            raise TypeError(
                "DjangoChimeway needs an engine on an SQLStore, "
                f"not on a {type(self.engine.store).__name__}"
            )
        with self._lock:
            cached = self._lent.get(alias)
            if cached is not None and cached[0] is own:
                return cached[1]
            lent = _lending_engine(alias, own, getattr(self.engine.store, "namespace", None))
            self._lent[alias] = (own, lent)
            return lent


def _lending_engine(alias: str, own: Engine, namespace: str | None) -> Engine:
    """An engine on ``own``'s dialect whose every connection is Django's current one."""
    vendor: str = connections[alias].vendor
    if namespace is not None and vendor == "sqlite":
        # A SQLite namespace is a file attached to the store's connections;
        # Django's connection has no such file, and SQLite cannot attach one
        # inside the transaction Django's atomic() holds.
        raise UnsupportedDatabaseError(
            vendor, "a store without a namespace (a SQLite namespace is an attached file)"
        )
    dialect = own.dialect
    if _DRIVERS.get(vendor) != dialect.driver or vendor != dialect.name:
        raise UnsupportedDatabaseError(
            vendor,
            f"the engine's SQLStore on Django's database {alias!r} "
            f"({dialect.name}+{dialect.driver} here)",
        )
    if vendor == "postgresql" and connections[alias].Database.__name__ != "psycopg":
        raise UnsupportedDatabaseError(vendor, "Django on psycopg 3, not psycopg2")
    with own.connect() as conn:
        # The dialect learns the server's version on its engine's first
        # connection: made here, never on Django's connection.
        ledger = _database(vendor, own.url.database, conn.exec_driver_sql)
    django = _database(vendor, connections[alias].settings_dict["NAME"], _django_sql(alias))
    if ledger is None or ledger != django:
        raise UnsupportedDatabaseError(
            vendor,
            f"the engine's SQLStore on Django's database {alias!r} ({django}), "
            f"not on {ledger or 'an in-memory database'}",
        )
    timestamptz = _psycopg_timestamptz() if vendor == "postgresql" else None

    def creator() -> _Lent:
        django = connections[alias]
        django.ensure_connection()
        return _Lent(django.connection, timestamptz)

    pool = NullPool(creator, reset_on_return=None, dialect=dialect)
    return Engine(pool, dialect, own.url)


def _database(vendor: str, name: object, sql: Callable[[str], Any]) -> str | None:
    """The database a connection is on: PostgreSQL's name for it, SQLite's file (None: memory)."""
    if vendor == "postgresql":
        return str(sql("SELECT current_database()").scalar())
    if not name or str(name) == ":memory:":
        return None  # a database of its own connection: never Django's
    return os.path.realpath(str(name))


def _django_sql(alias: str) -> Callable[[str], Any]:
    """Run one query on Django's connection of ``alias``; its result answers ``scalar()``."""

    def run(query: str) -> Any:
        with connections[alias].cursor() as cursor:
            cursor.execute(query)
            return _Scalar(cursor.fetchone()[0])

    return run


@attrs.frozen
class _Scalar:
    """One value, read as a SQLAlchemy result's ``scalar()`` is."""

    value: object

    def scalar(self) -> object:
        """The value."""
        return self.value


def _psycopg_timestamptz() -> type:
    """psycopg's own ``timestamptz`` loader (aware datetimes, whatever Django's USE_TZ)."""
    from psycopg.types.datetime import TimestamptzLoader  # noqa: PLC0415 -- PostgreSQL only

    loader: type = TimestamptzLoader
    return loader


class _Lent:
    """Django's DB-API connection lent to SQLAlchemy: statements yes, ending it never.

    Django begins, commits, rolls back and closes its connection;
    SQLAlchemy's calls to do so do nothing here. Everything else is the
    connection's own.
    """

    def __init__(self, connection: Any, timestamptz: type | None) -> None:
        self._connection = connection
        self._timestamptz = timestamptz

    def cursor(self, *args: Any, **kwargs: Any) -> Any:
        """A cursor of Django's connection, reading ``timestamptz`` as psycopg does."""
        cursor = self._connection.cursor(*args, **kwargs)
        if self._timestamptz is not None:
            # Local to this cursor: Django's own cursors keep Django's loader.
            cursor.adapters.register_loader("timestamptz", self._timestamptz)
        return cursor

    def commit(self) -> None:
        """Nothing: Django commits."""

    def rollback(self) -> None:
        """Nothing: Django rolls back."""

    def close(self) -> None:
        """Nothing: Django closes its connection."""

    def __getattr__(self, name: str) -> Any:
        return getattr(self._connection, name)
