"""``chimeway db upgrade``: apply chimeway's shipped migrations."""

from __future__ import annotations

import argparse
from typing import Final

from sqlalchemy import URL, Engine, column, inspect, select, table
from sqlalchemy.exc import DBAPIError, OperationalError

from chimeway_core.cli.config import (
    ENV_DATABASE_URL,
    connection_error,
    database_url,
    from_env,
    open_engine,
    shown,
    sqlite_path,
)
from chimeway_core.cli.errors import CliError, ExitCode
from chimeway_core.cli.output import echo, print_json
from chimeway_core.cli.parser import Subparsers, command
from chimeway_core.errors import MissingExtraError
from chimeway_core.migrations import (
    VERSION_TABLE,
    UnrecordedSchemaError,
    check_revision,
    upgrade,
)

__all__ = ["register", "run_upgrade"]

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


def register(subparsers: Subparsers) -> None:
    """Add ``chimeway db`` and its ``upgrade`` subcommand."""
    db = subparsers.add_parser(
        "db", help="Manage chimeway's tables.", description="Manage chimeway's tables."
    )
    actions = db.add_subparsers(title="commands", dest="db_command", metavar="COMMAND")
    actions.required = True
    parser = command(actions, "upgrade", run_upgrade, "Apply chimeway's migrations.")
    parser.description = _DESCRIPTION
    parser.add_argument("--db", metavar="URL", help=f"database URL (default: ${ENV_DATABASE_URL})")
    parser.add_argument(
        "--revision", default="head", help="the revision to upgrade to (default: head)"
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def _revision(engine: Engine) -> str | None:
    versions = table(VERSION_TABLE, column("version_num"))
    with engine.connect() as conn:
        return conn.execute(select(versions.c.version_num)).scalar_one_or_none()


def run_upgrade(args: argparse.Namespace) -> int:
    """Upgrade the database and print the revision it is at."""
    url = database_url(from_env(args.db, ENV_DATABASE_URL))
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
        upgrade(engine, args.revision)
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
    revision = _revision(engine)
    tables = sorted(
        name for name in inspect(engine).get_table_names() if name.startswith("chimeway_")
    )
    engine.dispose()
    if args.json:
        print_json({"database": shown(url), "revision": revision, "tables": tables})
    else:
        echo(f"{shown(url)} is at chimeway revision {revision}; tables: {', '.join(tables)}")
    return ExitCode.OK


def _failed(url: URL, error: DBAPIError) -> CliError:
    detail = next((line.strip() for line in str(error.orig).splitlines() if line.strip()), "")
    return CliError(f"migrating {shown(url)} failed: {detail}", ExitCode.PROBLEM)
