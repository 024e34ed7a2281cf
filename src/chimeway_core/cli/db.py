"""``chimeway db upgrade`` and ``db check``: apply chimeway's shipped migrations, or check them."""

from __future__ import annotations

import argparse
from typing import Final

from sqlalchemy import URL, Engine, column, inspect, select, table
from sqlalchemy.exc import DBAPIError, OperationalError

from chimeway_core.cli.config import (
    ENV_DATABASE_URL,
    add_namespace,
    connection_error,
    database_url,
    from_env,
    namespace,
    open_engine,
    shown,
    shown_in,
    sqlite_path,
)
from chimeway_core.cli.errors import CliError, ExitCode
from chimeway_core.cli.output import counted, echo, print_json
from chimeway_core.cli.parser import Subparsers, command
from chimeway_core.errors import MissingExtraError
from chimeway_core.migrations import (
    VERSION_TABLE,
    SchemaState,
    SchemaStatus,
    UnrecordedSchemaError,
    check_revision,
    status,
    upgrade,
)

__all__ = ["register", "run_check", "run_upgrade"]

_DESCRIPTION: Final = f"""\
Apply chimeway's migrations (chimeway_core.migrations) to the database, up to
--revision (default: head; or a revision id, base, +N). Creates the tables on
an empty database; does nothing on an up-to-date one; records the head
revision for tables SQLStore.create_all() made, if they match it. It runs in
one transaction: a migration that fails leaves the database as it was. The
revision is recorded in {VERSION_TABLE}, apart from your application's own
Alembic history. Needs the "migrations" extra (pip install
"chimeway[migrations]").

exit status: 0 upgraded, 1 the migration failed, 2 bad options (an unknown
--revision, an in-memory SQLite database) or missing extra, 3 database
unreachable."""


_CHECK_DESCRIPTION: Final = """\
Say whether this version of chimeway runs on the database's tables as they
are: at the head revision, or made by SQLStore.create_all() of this version
(no revision recorded yet; db upgrade records it). Otherwise it names what is
wrong: migrations to apply (db upgrade), tables with no revision that differ
from this version's, or a revision this version does not ship (a newer
chimeway migrated the database). Reads only: a deploy's gate.

exit status: 0 usable as it is, 1 not (migrations to apply or a schema to
look at), 2 bad options, a missing SQLite file or the "migrations" extra
missing, 3 database unreachable."""


def register(subparsers: Subparsers) -> None:
    """Add ``chimeway db`` and its ``upgrade`` and ``check`` subcommands."""
    db = subparsers.add_parser(
        "db", help="Manage chimeway's tables.", description="Manage chimeway's tables."
    )
    actions = db.add_subparsers(title="commands", dest="db_command", metavar="COMMAND")
    actions.required = True
    parser = command(actions, "upgrade", run_upgrade, "Apply chimeway's migrations.")
    parser.description = _DESCRIPTION
    parser.add_argument("--db", metavar="URL", help=f"database URL (default: ${ENV_DATABASE_URL})")
    add_namespace(parser)
    parser.add_argument(
        "--revision", default="head", help="the revision to upgrade to (default: head)"
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")

    check = command(
        actions, "check", run_check, "Check that the tables are at chimeway's head revision."
    )
    check.description = _CHECK_DESCRIPTION
    check.add_argument("--db", metavar="URL", help=f"database URL (default: ${ENV_DATABASE_URL})")
    add_namespace(check)
    check.add_argument("--json", action="store_true", help="print the result as JSON")


def _revision(engine: Engine, schema: str | None) -> str | None:
    versions = table(VERSION_TABLE, column("version_num"), schema=schema)
    with engine.connect() as conn:
        return conn.execute(select(versions.c.version_num)).scalar_one_or_none()


def run_upgrade(args: argparse.Namespace) -> int:
    """Upgrade the database and print the revision it is at."""
    url = database_url(from_env(args.db, ENV_DATABASE_URL))
    where = namespace(args)
    try:
        check_revision(args.revision)
    except MissingExtraError as error:
        raise CliError(str(error)) from None
    except ValueError as error:
        raise CliError(f"--revision: {error}") from None
    if url.get_backend_name() == "sqlite" and sqlite_path(url) is None:
        raise CliError(
            f"{shown(url)!r} is an in-memory SQLite database, gone when this command ends; "
            "point --db at a file"
        )
    engine = open_engine(url, must_exist=False)
    try:
        upgrade(engine, args.revision, namespace=where)
    except MissingExtraError as error:
        raise CliError(str(error)) from None
    except UnrecordedSchemaError as error:
        raise CliError(f"migrating {shown(url)} failed: {error}", ExitCode.PROBLEM) from None
    except OperationalError as error:
        if getattr(error.orig, "sqlstate", None) is None and url.get_backend_name() != "sqlite":
            raise connection_error(url, error) from None
        raise _failed(url, error) from None
    except DBAPIError as error:
        raise _failed(url, error) from None
    except Exception as error:
        if type(error).__module__.split(".")[0] != "alembic":
            raise
        raise CliError(f"migrating {shown(url)} failed: {error}", ExitCode.PROBLEM) from None
    revision = _revision(engine, where)
    tables = sorted(
        name
        for name in inspect(engine).get_table_names(schema=where)
        if name.startswith("chimeway_")
    )
    engine.dispose()
    if args.json:
        print_json(
            {"database": shown(url), **_named(where), "revision": revision, "tables": tables}
        )
    else:
        listed = ", ".join(tables)
        echo(f"{shown_in(url, where)} is at chimeway revision {revision}; tables: {listed}")
    return ExitCode.OK


def _failed(url: URL, error: DBAPIError) -> CliError:
    detail = next((line.strip() for line in str(error.orig).splitlines() if line.strip()), "")
    return CliError(f"migrating {shown(url)} failed: {detail}", ExitCode.PROBLEM)


def run_check(args: argparse.Namespace) -> int:
    """Print where the database's tables stand; exit 1 unless this version runs on them."""
    url = database_url(from_env(args.db, ENV_DATABASE_URL))
    where = namespace(args)
    engine = open_engine(url)
    try:
        found = status(engine, namespace=where)
    except MissingExtraError as error:
        raise CliError(str(error)) from None
    finally:
        engine.dispose()
    if args.json:
        print_json(
            {
                "database": shown(url),
                **_named(where),
                "state": found.state.value,
                "usable": found.usable,
                "revision": found.revision,
                "head": found.head,
                "pending": list(found.pending),
                "differences": list(found.differences),
            }
        )
    else:
        echo(f"{shown_in(url, where)}: {_verdict(found)}")
    return ExitCode.OK if found.usable else ExitCode.PROBLEM


def _named(where: str | None) -> dict[str, str]:
    """The JSON output's ``namespace`` entry: there only when a namespace is used."""
    return {} if where is None else {"namespace": where}


def _verdict(found: SchemaStatus) -> str:
    head = found.head
    match found.state:
        case SchemaState.CURRENT:
            return f"at chimeway revision {head} (head): up to date"
        case SchemaState.ADOPTABLE:
            return (
                f"chimeway's tables as create_all() makes them at head {head}, no revision "
                "recorded: usable (chimeway db upgrade records it)"
            )
        case SchemaState.BEHIND:
            at = "no chimeway tables" if found.revision is None else f"at {found.revision}"
            return (
                f"{at}; head is {head}: {counted(len(found.pending), 'migration')} to apply "
                f"({', '.join(found.pending)}): run chimeway db upgrade"
            )
        case SchemaState.UNRECORDED:
            shown_ = "; ".join(found.differences[:3])
            more = f" and {len(found.differences) - 3} more" if len(found.differences) > 3 else ""
            return (
                f"chimeway's tables with no revision recorded, differing from head {head} in "
                f"{counted(len(found.differences), 'place')}: {shown_}{more}; "
                "db upgrade refuses them"
            )
        case SchemaState.UNKNOWN:
            return (
                f"at chimeway revision {found.revision}, which this version (head {head}) does "
                "not ship: a newer chimeway migrated the database"
            )
