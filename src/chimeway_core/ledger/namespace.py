"""Where the ledger's tables live: the namespace that keeps two applications apart.

Theory of operation
-------------------
chimeway's tables are declared without a schema (:mod:`~chimeway_core.ledger.schema`).
A store given a *namespace* runs every statement with SQLAlchemy's
``schema_translate_map`` ``{None: namespace}``, so each table name is written
qualified (``billing.chimeway_deliveries``) and two stores on two namespaces
of one database never read or write each other's rows:

- on PostgreSQL the namespace is a schema, created by
  :meth:`~chimeway_core.store.SQLStore.create_all` and by the migrations
  when missing;
- on SQLite, whose schemas are attached databases, it is a database file
  beside the main one (``app.db`` and namespace ``billing``:
  ``app.billing.db``; an in-memory database gets an in-memory one), attached
  under the namespace's name to every connection the store uses.

The store's own connections carry the option for their whole life. A
caller's connection (``notify(session=...)``) carries it only while chimeway
runs its statements (:func:`translated`), so the application's own queries on
that connection are never redirected. Statements chimeway writes as text
(PostgreSQL's one-statement create) name their tables with :func:`qualified`,
and :class:`~chimeway_core.ledger.precompiled.Precompiled` compiles once per
namespace.
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final

from sqlalchemy import Connection, Engine, event
from sqlalchemy.pool import ConnectionPoolEntry

__all__ = [
    "TRANSLATE_OPTION",
    "attach_sqlite",
    "detach_sqlite",
    "check_namespace",
    "namespace_of",
    "qualified",
    "sqlite_file",
    "translate_map",
    "translated",
]

#: SQLAlchemy's execution option that qualifies every table name.
TRANSLATE_OPTION: Final = "schema_translate_map"

# A plain lowercase identifier: never quoted, the same on both databases, and
# at most PostgreSQL's 63 bytes.
_NAME: Final = re.compile(r"[a-z_][a-z0-9_]{0,62}")
# Names the databases keep for themselves.
_RESERVED: Final = frozenset({"main", "temp", "information_schema", "public"})
_RESERVED_PREFIXES: Final = ("pg_", "sqlite_")


def check_namespace(namespace: object) -> str | None:
    """``namespace`` if it is a usable one (or ``None``: the default schema), else ValueError.

    A namespace is a lowercase identifier of at most 63 characters: letters,
    digits and ``_``, not starting with a digit. The databases' own names
    (``public``, ``main``, ``temp``, ``information_schema``, anything starting
    with ``pg_`` or ``sqlite_``) are refused.
    """
    if namespace is None:
        return None
    if not isinstance(namespace, str):
        raise TypeError(f"namespace must be a str or None, not {type(namespace).__name__}")
    if not _NAME.fullmatch(namespace):
        raise ValueError(
            f"namespace {namespace!r} is not a lowercase identifier of at most 63 "
            "characters (a-z, 0-9 and _, not starting with a digit)"
        )
    if namespace in _RESERVED or namespace.startswith(_RESERVED_PREFIXES):
        raise ValueError(f"namespace {namespace!r} is a name the database keeps for itself")
    return namespace


def translate_map(namespace: str | None) -> dict[str | None, str | None]:
    """The ``schema_translate_map`` of ``namespace`` (``None``: the default schema)."""
    return {None: namespace}


def namespace_of(conn: Connection) -> str | None:
    """The namespace ``conn``'s statements run in (``None``: the default schema)."""
    translate: Mapping[str | None, str | None] | None = conn.get_execution_options().get(
        TRANSLATE_OPTION
    )
    return None if translate is None else translate.get(None)


def qualified(table: str, namespace: str | None) -> str:
    """``table``'s name as a statement written as text must give it."""
    return table if namespace is None else f"{namespace}.{table}"


@contextmanager
def translated(conn: Connection, namespace: str | None) -> Iterator[Connection]:
    """``conn`` running chimeway's statements in ``namespace`` for the block, then as it was.

    For a caller's connection: the option is the connection's own, so it is
    set for chimeway's statements and put back before the caller's next one.
    """
    previous = conn.get_execution_options().get(TRANSLATE_OPTION)
    conn.execution_options(**{TRANSLATE_OPTION: translate_map(namespace)})
    try:
        yield conn
    finally:
        conn.execution_options(**{TRANSLATE_OPTION: previous})


def sqlite_file(database: str | None, namespace: str) -> str:
    """The file SQLite attaches as ``namespace`` beside ``database`` (``:memory:`` stays so)."""
    if not database or database == ":memory:":
        return ":memory:"
    path = Path(database)
    return str(path.with_name(f"{path.stem}.{namespace}{path.suffix or '.db'}"))


_ATTACHED_INFO: Final = "chimeway_attached"


def attach_sqlite(engine: Engine, namespace: str) -> None:
    """Attach ``namespace``'s database to each connection ``engine`` hands out (once each).

    On checkout rather than connect, so connections already in the pool when
    the store is made get it too. The attached database gets WAL, as the
    main one does.
    """
    path = sqlite_file(engine.url.database, namespace)

    def attach(dbapi_connection: Any, record: ConnectionPoolEntry, _proxy: Any) -> None:
        attached: set[str] = record.info.setdefault(_ATTACHED_INFO, set())
        if namespace in attached:
            return
        cursor = dbapi_connection.cursor()
        try:
            names = {row[1] for row in cursor.execute("PRAGMA database_list")}
            if namespace not in names:
                cursor.execute(f"ATTACH DATABASE ? AS {namespace}", (path,))
            if path != ":memory:":
                cursor.execute(f"PRAGMA {namespace}.journal_mode=WAL")
        finally:
            cursor.close()
        attached.add(namespace)

    listening = _LISTENING.setdefault(engine, {})
    if namespace not in listening:
        event.listen(engine, "checkout", attach)
        listening[namespace] = attach


def detach_sqlite(engine: Engine, namespace: str) -> None:
    """Stop attaching ``namespace`` to ``engine``'s connections, and close those that have it.

    For a namespace that is going away (a scratch one): its pooled
    connections are closed, so none keeps the file open or attached.
    """
    attach = _LISTENING.get(engine, {}).pop(namespace, None)
    if attach is not None:
        event.remove(engine, "checkout", attach)
    engine.dispose()


# The listener attaching each namespace, by engine: a second store adds none.
_LISTENING: Final[weakref.WeakKeyDictionary[Engine, dict[str, Any]]] = weakref.WeakKeyDictionary()
