"""Configuration of the command line: URLs from options or the environment, the database.

An option always wins over its environment variable. A database URL is
checked before anything connects: it must parse, name PostgreSQL or SQLite,
and have its driver installed; ``postgresql://`` and ``postgres://`` mean
``postgresql+psycopg://`` (the ``postgres`` extra). Connecting then tells a
database that is down (:attr:`ExitCode.UNREACHABLE`) from one that answered
with a refusal — wrong database name, password, a SQLite file that cannot be
opened (:attr:`ExitCode.USAGE`). No message repeats a password.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from sqlalchemy import URL, Engine, create_engine, inspect, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError

from chimeway_core.cli.errors import CliError, ExitCode
from chimeway_core.schema import DeliveryRow
from chimeway_core.store import SUPPORTED_BACKENDS, SQLStore

__all__ = [
    "ENV_BROKER_URL",
    "ENV_DATABASE_URL",
    "ENV_REDIS_URL",
    "check_connection",
    "check_service_url",
    "connection_error",
    "database_failure",
    "database_url",
    "from_env",
    "open_engine",
    "open_store",
    "shown",
    "sqlite_path",
]

#: The database URL when ``--db`` is not given.
ENV_DATABASE_URL: Final = "CHIMEWAY_DATABASE_URL"
#: The Redis URL (RQ backend) when ``--redis-url`` is not given.
ENV_REDIS_URL: Final = "CHIMEWAY_REDIS_URL"
#: The broker URL (Celery backend) when ``--broker-url`` is not given.
ENV_BROKER_URL: Final = "CHIMEWAY_BROKER_URL"

_DRIVERLESS: Final = {"postgresql": "postgresql+psycopg", "postgres": "postgresql+psycopg"}
_CONNECT_TIMEOUT_SECONDS: Final = 5
_EXAMPLES: Final = "sqlite:///path/to/ledger.sqlite3 or postgresql+psycopg://user@host/dbname"
_PASSWORD: Final = re.compile(r"(://[^:/@]*:)[^@]*@")
_SERVER_SEVERITY: Final = re.compile(r"\b(FATAL|ERROR|PANIC):")


def from_env(option: str | None, variable: str, env: Mapping[str, str] | None = None) -> str | None:
    """The option's value, else the environment variable's (empty counts as unset)."""
    if option:
        return option
    value = (os.environ if env is None else env).get(variable, "")
    return value or None


def _redact(text: str) -> str:
    return _PASSWORD.sub(r"\1***@", text)


def shown(url: URL) -> str:
    """The URL as messages show it: the password hidden."""
    return url.render_as_string(hide_password=True)


def database_url(text: str | None) -> URL:
    """Parse and check a database URL, or raise :class:`CliError` (usage)."""
    if text is None:
        raise CliError(f"no database: pass --db URL or set {ENV_DATABASE_URL}")
    try:
        url = make_url(text)
    except (ArgumentError, ValueError):
        raise CliError(f"malformed database URL {_redact(text)!r}: expected {_EXAMPLES}") from None
    if url.drivername in _DRIVERLESS:
        url = url.set(drivername=_DRIVERLESS[url.drivername])
    backend = url.get_backend_name()
    if backend not in SUPPORTED_BACKENDS:
        raise CliError(
            f"unsupported database {backend!r} in {shown(url)!r}: chimeway's ledger runs on "
            f"PostgreSQL or SQLite ({_EXAMPLES})"
        )
    try:
        url.get_dialect()
    except NoSuchModuleError:
        raise CliError(f"unknown database driver {url.drivername!r} in {shown(url)!r}") from None
    return url


def sqlite_path(url: URL) -> Path | None:
    """The file of a SQLite URL; ``None`` for in-memory SQLite or another database."""
    if url.get_backend_name() != "sqlite":
        return None
    database = url.database or ""
    if database in {"", ":memory:"} or database.startswith("file:"):
        return None
    return Path(database)


def open_engine(url: URL, *, must_exist: bool = True) -> Engine:
    """A SQLAlchemy engine for ``url``, connected once to prove it works.

    With ``must_exist`` a SQLite URL must name an existing file (SQLite would
    otherwise create an empty one) and not be in-memory.
    """
    if must_exist and url.get_backend_name() == "sqlite":
        path = sqlite_path(url)
        if path is None:
            raise CliError(
                f"{shown(url)!r} is an in-memory SQLite database, empty in every process; "
                "point --db at a file"
            )
        if not path.is_file():
            raise CliError(f"no SQLite database at {str(path)!r} ({shown(url)})")
    connect_args: dict[str, Any] = {}
    if url.get_backend_name() == "postgresql":
        connect_args["connect_timeout"] = _CONNECT_TIMEOUT_SECONDS
    try:
        engine = create_engine(url, connect_args=connect_args)
    except ImportError as error:
        extra = ' (pip install "chimeway[postgres]")' if "psycopg" in str(error) else ""
        raise CliError(
            f"the driver for {url.drivername!r} is not installed: {error}{extra}"
        ) from None
    check_connection(engine, url)
    return engine


def _detail(error: DBAPIError) -> str:
    return next((line.strip() for line in str(error.orig).splitlines() if line.strip()), "")


def _answered(error: DBAPIError) -> bool:
    """Whether a server answered (refused), as opposed to not answering at all.

    libpq reports a refusal during connection (no such database or role, bad
    password) as text with the server's severity and no SQLSTATE.
    """
    if getattr(error.orig, "sqlstate", None) is not None:
        return True
    return _SERVER_SEVERITY.search(str(error.orig)) is not None


def connection_error(url: URL, error: DBAPIError) -> CliError:
    """The :class:`CliError` for a failure to connect to the database at ``url``.

    A PostgreSQL server that answered (an SQLSTATE: no such database, bad
    password) and a SQLite file that cannot be opened are configuration
    errors; no answer at all is an unreachable service.
    """
    if url.get_backend_name() == "sqlite" or _answered(error):
        return CliError(f"cannot use the database {shown(url)}: {_detail(error)}")
    return CliError(
        f"cannot reach the database {shown(url)}: {_detail(error)}", ExitCode.UNREACHABLE
    )


def database_failure(error: DBAPIError) -> CliError:
    """The :class:`CliError` for a database error in the middle of a command.

    An error the server answered with is a problem the command found; no
    answer (the connection dropped) is an unreachable service.
    """
    if _answered(error):
        return CliError(f"the database refused: {_detail(error)}", ExitCode.PROBLEM)
    return CliError(f"the database failed: {_detail(error)}", ExitCode.UNREACHABLE)


def check_connection(engine: Engine, url: URL | None = None) -> None:
    """Connect once, or raise the :class:`CliError` of :func:`connection_error`."""
    try:
        with engine.connect():
            pass
    except DBAPIError as error:
        raise connection_error(url or engine.url, error) from None


def open_store(text: str | None, *, require_tables: bool = True) -> SQLStore:
    """The ledger at the URL ``text`` (checked, connected, with chimeway's tables)."""
    url = database_url(text)
    engine = open_engine(url)
    if require_tables and not inspect(engine).has_table(DeliveryRow.__tablename__):
        raise CliError(
            f"{shown(url)} has no chimeway tables; create them with: chimeway db upgrade --db URL"
        )
    return SQLStore(engine)


def check_service_url(text: str | None, option: str, schemes: tuple[str, ...]) -> str | None:
    """Check a Redis or broker URL's scheme; return it unchanged (or ``None``)."""
    if text is None:
        return None
    scheme, sep, rest = text.partition("://")
    if not sep or not rest or scheme not in schemes:
        raise CliError(
            f"malformed {option} {_redact(text)!r}: expected a URL starting with "
            + " or ".join(f"{s}://" for s in schemes)
        )
    return text
