"""The ledger's schema as Alembic migrations shipped inside the package.

Two ways to own the schema in production:

- Let chimeway migrate its own tables: call :func:`upgrade` at deploy time
  (it records its revision in its own ``chimeway_alembic_version`` table, so
  it never collides with your application's Alembic history).
  Your own ``env.py`` then uses the hooks of
  :mod:`chimeway_core.migrations.autogenerate`, so your autogenerate leaves
  chimeway's tables alone.
- Or fold the tables into your own Alembic environment: add
  :data:`chimeway_core.schema.metadata` to ``target_metadata``, with
  :func:`~chimeway_core.migrations.autogenerate.render_item`, and let
  autogenerate write them into your migrations.

:func:`status` says where a database stands (a deploy's gate: ``chimeway db
check``). Alembic is the optional extra ``migrations``; it is imported only
when :func:`upgrade`, :func:`status` or :func:`check_revision` runs.
"""

from __future__ import annotations

import enum
import re
from pathlib import Path
from typing import TYPE_CHECKING, Final

import attrs
from sqlalchemy import Connection, Engine, MetaData, create_engine, inspect
from sqlalchemy.schema import CreateSchema

from chimeway_core.errors import ChimewayError, MissingExtraError
from chimeway_core.ledger.dialects import configure_sqlite
from chimeway_core.ledger.namespace import (
    TRANSLATE_OPTION,
    attach_sqlite,
    check_namespace,
    translate_map,
)
from chimeway_core.ledger.schema import metadata

if TYPE_CHECKING:
    from alembic.config import Config
    from alembic.migration import MigrationContext

__all__ = [
    "SCRIPT_LOCATION",
    "VERSION_TABLE",
    "SchemaState",
    "SchemaStatus",
    "UnrecordedSchemaError",
    "check_revision",
    "status",
    "upgrade",
]

#: Where the migration scripts live (this package's directory).
SCRIPT_LOCATION: Final = str(Path(__file__).parent)
#: The table in which chimeway records the revision its tables are at.
VERSION_TABLE: Final = "chimeway_alembic_version"


class UnrecordedSchemaError(ChimewayError):
    """chimeway's tables exist with no revision recorded, and differ from this version's schema.

    Tables made by :meth:`~chimeway_core.store.SQLStore.create_all` of this
    version match its schema and are adopted instead. ``differences`` are
    Alembic's, as its autogenerate compares them. Nothing was written.
    """

    def __init__(self, differences: list[object]) -> None:
        self.differences = differences
        shown = "; ".join(repr(difference) for difference in differences[:3])
        more = f" and {len(differences) - 3} more" if len(differences) > 3 else ""
        super().__init__(
            f"chimeway's tables exist with no revision recorded in {VERSION_TABLE}, and differ "
            f"from this version's schema in {len(differences)} place(s): {shown}{more}; "
            "they were not made by this version's create_all() or migrations"
        )


class SchemaState(enum.Enum):
    """Where a database's chimeway tables stand against this version's migrations."""

    CURRENT = "current"
    """At head: nothing to apply."""
    ADOPTABLE = "adoptable"
    """``create_all()``'s tables, head's schema, no revision recorded: upgrade() records it."""
    BEHIND = "behind"
    """Migrations to apply (an empty database: all of them)."""
    UNRECORDED = "unrecorded"
    """Tables with no revision recorded that differ from head's schema: :func:`upgrade` refuses."""
    UNKNOWN = "unknown"
    """At a revision this version does not ship: a newer chimeway migrated the database."""


@attrs.frozen(kw_only=True)
class SchemaStatus:
    """What :func:`status` found: the state, the revisions, and what :func:`upgrade` would do."""

    state: SchemaState
    revision: str | None
    """The revision recorded in :data:`VERSION_TABLE` (``None``: none)."""
    head: str
    """This version's newest migration."""
    pending: tuple[str, ...] = ()
    """The migrations :func:`upgrade` would apply, oldest first."""
    differences: tuple[str, ...] = ()
    """For :attr:`SchemaState.UNRECORDED`: how the tables differ from head's, as Alembic says."""

    @property
    def usable(self) -> bool:
        """Whether this version of chimeway runs on the tables as they are."""
        return self.state in {SchemaState.CURRENT, SchemaState.ADOPTABLE}


_STEPS: Final = re.compile(r"\+[1-9][0-9]*")
_RELATIVE: Final = re.compile(r".*[+-][0-9]+")


def _config() -> Config:
    try:
        # Lazy on purpose: alembic is the optional extra "migrations".
        from alembic.config import Config  # noqa: PLC0415
    except ImportError as error:
        raise MissingExtraError("migrations", feature="chimeway_core.migrations.upgrade") from error
    config = Config()
    config.set_main_option("script_location", SCRIPT_LOCATION)
    return config


def check_revision(revision: str) -> None:
    """Raise :class:`ValueError` unless :func:`upgrade` can aim at ``revision``.

    Accepted: a revision id of chimeway's migrations or a unique prefix of
    one, ``head``, ``heads``, ``base``, and ``+N`` (N migrations past the
    database's current revision, at most as many as there are). Anything
    else is refused before a database is touched: a downgrade target such
    as ``-1``, and branch syntax (``x@head``; chimeway's history has no
    branches). Raises
    :class:`~chimeway_core.errors.MissingExtraError` when Alembic is not
    installed.
    """
    config = _config()
    from alembic.script import ScriptDirectory  # noqa: PLC0415 -- optional: "migrations"
    from alembic.util import CommandError  # noqa: PLC0415 -- optional: "migrations"

    script = ScriptDirectory.from_config(config)
    known = [rev.revision for rev in script.walk_revisions()]
    expected = f"expected one of {', '.join(reversed(known))}, head, base or +N"
    if _STEPS.fullmatch(revision):
        if len(revision) > len(str(len(known))) + 1 or int(revision[1:]) > len(known):
            raise ValueError(f"revision {revision!r}: chimeway has only {len(known)} migration(s)")
        return
    if not revision.strip() or "@" in revision or _RELATIVE.fullmatch(revision):
        raise ValueError(f"revision {revision!r} is not an upgrade target: {expected}")
    try:
        script.get_revisions(revision)
    except (CommandError, AssertionError):  # alembic asserts on some malformed ids
        raise ValueError(f"revision {revision!r} is not one of chimeway's: {expected}") from None


def upgrade(
    url_or_engine: str | Engine, revision: str = "head", *, namespace: str | None = None
) -> None:
    """Apply chimeway's migrations to the database up to ``revision``.

    ``namespace`` is the store's (:class:`~chimeway_core.store.SQLStore`):
    the tables and the version table are made there (on PostgreSQL, the
    schema is created when missing). Each namespace has its own history.

    ``url_or_engine`` is a database URL or an :class:`~sqlalchemy.Engine`
    (left open; an engine made from a URL is disposed afterwards). Runs in one
    transaction, on SQLite too: a migration that fails leaves the database as
    it was (a SQLite engine gets the connection hooks
    :class:`~chimeway_core.store.SQLStore` gives its own, which send ``BEGIN``
    themselves). Applying it to an up-to-date database does nothing. A
    ``revision`` :func:`check_revision` refuses raises :class:`ValueError`
    before the database is touched. Tables made by
    :meth:`~chimeway_core.store.SQLStore.create_all` (no revision recorded,
    the schema of this version's head) are adopted: the head revision is
    recorded and nothing else written; tables with no revision that differ
    raise :class:`UnrecordedSchemaError`. Raises
    :class:`~chimeway_core.errors.MissingExtraError` naming
    ``pip install "chimeway[migrations]"`` when Alembic is not installed.
    """
    config = _config()
    from alembic import command  # noqa: PLC0415 -- optional: "migrations"

    check_revision(revision)
    namespace = check_namespace(namespace)
    owned = isinstance(url_or_engine, str)
    engine = create_engine(url_or_engine) if isinstance(url_or_engine, str) else url_or_engine
    if engine.dialect.name == "sqlite":
        # pysqlite runs DDL outside any transaction unless BEGIN is sent by
        # hand: a failing migration would leave half of its tables behind.
        # The store's hooks (SQLAlchemy's documented pysqlite recipe) do that.
        configure_sqlite(engine)
    try:
        with _connect(engine, namespace) as connection, connection.begin():
            if namespace is not None and engine.dialect.name == "postgresql":
                connection.execute(CreateSchema(namespace, if_not_exists=True))
            config.attributes["connection"] = connection
            config.attributes["namespace"] = namespace
            if _made_by_create_all(connection, namespace):
                command.stamp(config, "head")
            command.upgrade(config, revision)
    finally:
        if owned:
            engine.dispose()


def status(url_or_engine: str | Engine, *, namespace: str | None = None) -> SchemaStatus:
    """Where the database's chimeway tables stand against this version's migrations.

    Reads only; in ``namespace`` (the store's), when given.
    ``url_or_engine`` as for :func:`upgrade` (a SQLite URL naming no file
    creates an empty one when connecting: pass an engine on a file that
    exists). A database this version can run on is
    :attr:`SchemaStatus.usable`; any other needs ``chimeway db upgrade``, or
    (:attr:`SchemaState.UNRECORDED`, :attr:`SchemaState.UNKNOWN`) a person.
    Raises :class:`~chimeway_core.errors.MissingExtraError` when Alembic is
    not installed.
    """
    config = _config()
    from alembic.script import ScriptDirectory  # noqa: PLC0415 -- optional: "migrations"
    from alembic.script.revision import RevisionError  # noqa: PLC0415 -- optional

    script = ScriptDirectory.from_config(config)
    head = script.get_current_head()
    assert head is not None  # chimeway ships at least one migration
    namespace = check_namespace(namespace)
    owned = isinstance(url_or_engine, str)
    engine = create_engine(url_or_engine) if isinstance(url_or_engine, str) else url_or_engine
    try:
        with _connect(engine, namespace) as connection:
            context = _context(connection, namespace)
            revision = context.get_current_revision()
            differences = _unrecorded_differences(connection, context, namespace)
    finally:
        if owned:
            engine.dispose()
    if differences is not None:
        if differences:
            shown = tuple(repr(difference) for difference in differences)
            return SchemaStatus(
                state=SchemaState.UNRECORDED, revision=None, head=head, differences=shown
            )
        return SchemaStatus(state=SchemaState.ADOPTABLE, revision=None, head=head)
    try:
        # Newest first, down to (not including) the recorded revision.
        steps = script.iterate_revisions("head", revision or "base")
        pending = tuple(reversed([step.revision for step in steps]))
    except RevisionError:
        return SchemaStatus(state=SchemaState.UNKNOWN, revision=revision, head=head)
    state = SchemaState.BEHIND if pending else SchemaState.CURRENT
    return SchemaStatus(state=state, revision=revision, head=head, pending=pending)


def _connect(engine: Engine, namespace: str | None) -> Connection:
    """A connection whose statements (the migrations' DDL too) run in ``namespace``."""
    if namespace is None:
        return engine.connect()
    if engine.dialect.name == "sqlite":
        attach_sqlite(engine, namespace)
    return engine.connect().execution_options(**{TRANSLATE_OPTION: translate_map(namespace)})


def _in(namespace: str) -> MetaData:
    """chimeway's tables placed in ``namespace``, for comparing with what is there."""
    placed = MetaData(naming_convention=metadata.naming_convention)
    for table in metadata.sorted_tables:
        table.to_metadata(placed, schema=namespace)
    return placed


def _context(connection: Connection, namespace: str | None = None) -> MigrationContext:
    from alembic.migration import MigrationContext  # noqa: PLC0415 -- optional

    def include_name(name: str | None, kind: str, _parents: object) -> bool:
        # Only chimeway's own tables (the application's may share the
        # database), and in a namespace only its schema.
        if kind == "schema":
            return name == namespace
        return kind != "table" or name in metadata.tables

    return MigrationContext.configure(
        connection,
        opts={
            "version_table": VERSION_TABLE,
            "version_table_schema": namespace,
            "compare_type": True,
            "include_schemas": namespace is not None,
            "include_name": include_name,
        },
    )


def _unrecorded_differences(
    connection: Connection, context: MigrationContext, namespace: str | None = None
) -> list[object] | None:
    """How tables with no revision recorded differ from head's; ``None``: not such tables.

    ``None`` when a revision is recorded or none of chimeway's tables exists
    (the migrations create them); ``[]`` when they match head's schema.
    """
    from alembic.autogenerate import compare_metadata  # noqa: PLC0415 -- optional

    if context.get_current_revision() is not None:
        return None
    if not set(inspect(connection).get_table_names(schema=namespace)) & set(metadata.tables):
        return None
    return list(compare_metadata(context, metadata if namespace is None else _in(namespace)))


def _made_by_create_all(connection: Connection, namespace: str | None = None) -> bool:
    """Whether chimeway's tables exist with no revision recorded, and match head's schema.

    Raises :class:`UnrecordedSchemaError` for such tables that do not match.
    """
    differences = _unrecorded_differences(connection, _context(connection, namespace), namespace)
    if differences:
        raise UnrecordedSchemaError(differences)
    return differences is not None
