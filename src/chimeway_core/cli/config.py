"""Configuration of the command line: URLs from options or the environment, the database.

An option always wins over its environment variable. A database URL is
checked before anything connects: it must parse, name PostgreSQL or SQLite,
and have its driver installed; ``postgresql://`` and ``postgres://`` mean
``postgresql+psycopg://`` (the ``postgres`` extra). Connecting then tells a
database that is down (:attr:`ExitCode.UNREACHABLE`) from one that answered
with a refusal — wrong database name, password, a bad connection parameter,
a SQLite file that cannot be opened or is not a database
(:attr:`ExitCode.USAGE`). No message repeats a password, whether it is in the
URL's user part or in its query string (``?password=``).
"""

from __future__ import annotations

import argparse
import os
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final
from urllib.parse import unquote, urlsplit

from sqlalchemy import URL, Engine, create_engine, inspect, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError
from sqlalchemy.util import asbool

from chimeway_core.cli.errors import CliError, ExitCode
from chimeway_core.ledger.namespace import check_namespace
from chimeway_core.schema import DeliveryRow, metadata
from chimeway_core.store import SUPPORTED_BACKENDS, SQLStore

__all__ = [
    "ENV_BROKER_URL",
    "ENV_DATABASE_URL",
    "ENV_NAMESPACE",
    "ENV_REDIS_URL",
    "check_connection",
    "check_service_url",
    "check_tables",
    "connection_error",
    "database_failure",
    "database_url",
    "add_namespace",
    "from_env",
    "namespace",
    "open_engine",
    "open_store",
    "shown",
    "shown_in",
    "sqlite_path",
]

#: The database URL when ``--db`` is not given.
ENV_DATABASE_URL: Final = "CHIMEWAY_DATABASE_URL"
#: The ledger's namespace when ``--namespace`` is not given.
ENV_NAMESPACE: Final = "CHIMEWAY_NAMESPACE"
#: The Redis URL (RQ backend) when ``--redis-url`` is not given.
ENV_REDIS_URL: Final = "CHIMEWAY_REDIS_URL"
#: The broker URL (Celery backend) when ``--broker-url`` is not given.
ENV_BROKER_URL: Final = "CHIMEWAY_BROKER_URL"

_DRIVERLESS: Final = {"postgresql": "postgresql+psycopg", "postgres": "postgresql+psycopg"}
_CONNECT_TIMEOUT_SECONDS: Final = 5
_EXAMPLES: Final = "sqlite:///path/to/ledger.sqlite3 or postgresql+psycopg://user@host/dbname"
# Up to the last '@': a password may hold an unencoded '@' (or '/', '?').
_PASSWORD: Final = re.compile(r"(://[^:/@?]*:).*@")
# A query parameter whose name holds one of these carries a secret.
_SECRET_WORDS: Final = "pass|pwd|secret|token"  # noqa: S105 - names, not a password
_SECRET_PARAMETER: Final = re.compile(_SECRET_WORDS, re.IGNORECASE)
_SECRET_QUERY: Final = re.compile(rf"([?&][^=&]*(?:{_SECRET_WORDS})[^=&]*=)[^&]*", re.IGNORECASE)
_SERVER_SEVERITY: Final = re.compile(r"\b(FATAL|ERROR|PANIC):")
# libpq's complaints about the connection string itself: nothing was reached,
# but nothing will be until the URL is fixed.
_BAD_PARAMETER: Final = re.compile(
    r"\binvalid (?:connection option|port number|[\w ]* value)|missing \"=\" after"
    r"|unterminated quoted string|could not parse network address"
)
_SQLITE_BUSY: Final = re.compile(r"\b(locked|busy)\b")
_MAX_PORT: Final = 65535


def from_env(option: str | None, variable: str, env: Mapping[str, str] | None = None) -> str | None:
    """The option's value if it was given (even empty), else the variable's (empty: unset)."""
    if option is not None:
        return option
    value = (os.environ if env is None else env).get(variable, "")
    return value or None


def _redact(text: str) -> str:
    return _SECRET_QUERY.sub(r"\1***", _PASSWORD.sub(r"\1***@", text))


def shown(url: URL) -> str:
    """The URL as messages show it: passwords hidden, in the user part and the query string."""
    if url.password is not None and url.host is not None and "@" in url.host:
        # An unencoded '@' in the password: SQLAlchemy took the rest of it for the host.
        url = url.set(host=url.host.rpartition("@")[2])
    return _SECRET_QUERY.sub(r"\1***", url.render_as_string(hide_password=True))


def database_url(text: str | None) -> URL:
    """Parse and check a database URL, or raise :class:`CliError` (usage)."""
    if text is None:
        raise CliError(f"no database: pass --db URL or set {ENV_DATABASE_URL}")
    if not text.strip():
        raise CliError(f"--db is empty: expected a database URL ({_EXAMPLES})")
    try:
        url = make_url(text)
    except (ArgumentError, ValueError):
        raise CliError(f"malformed database URL {_redact(text)!r}: expected {_EXAMPLES}") from None
    if url.password is not None and url.host is not None and "@" in url.host:
        raise CliError(
            f"malformed database URL {shown(url)!r}: an '@' in the password must be written %40"
        )
    if url.port is not None and not 1 <= url.port <= _MAX_PORT:
        raise CliError(f"invalid port {url.port} in {shown(url)!r}: expected 1 to {_MAX_PORT}")
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
    """The file of a SQLite URL; ``None`` for in-memory SQLite or another database.

    With ``uri=true`` the database is a SQLite URI (``file:path?mode=ro``), as
    the pysqlite driver reads it: its path is the file, and ``mode=memory`` or
    a ``:memory:`` path is in memory. Without it, ``file:x.db`` is a file of
    that very name, as SQLite itself would open it.
    """
    if url.get_backend_name() != "sqlite":
        return None
    database = url.database or ""
    if database in {"", ":memory:"}:
        return None
    if _sqlite_uri(url) and database.startswith("file:"):
        path = unquote(urlsplit(database).path)
        in_memory = url.query.get("mode") == "memory" or path in {"", ":memory:"}
        return None if in_memory else Path(path)
    return Path(database)


def _sqlite_uri(url: URL) -> bool:
    """Whether the driver reads the database as a SQLite URI (``uri=true``)."""
    uri = url.query.get("uri")
    try:
        return isinstance(uri, str) and asbool(uri)
    except ValueError:  # connecting says what is wrong with it
        return False


def open_engine(url: URL, *, must_exist: bool = True, pool_pre_ping: bool = False) -> Engine:
    """A SQLAlchemy engine for ``url``, connected once to prove it works.

    With ``must_exist`` a SQLite URL must name an existing file (SQLite would
    otherwise create an empty one) and not be in-memory. ``pool_pre_ping``
    (for a long-running command) tests a pooled connection before each use,
    so one the server dropped is replaced rather than failing a request.
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
        engine = create_engine(
            # hide_parameters: a database error must not quote payloads or recipients.
            url,
            connect_args=connect_args,
            pool_pre_ping=pool_pre_ping,
            hide_parameters=True,
        )
    except ImportError as error:
        raise CliError(
            f"the driver for {url.drivername!r} is not installed: {error}{_install_hint(url)}"
        ) from None
    except (ValueError, TypeError) as error:
        # The dialect converts the URL's query parameters (?timeout=abc).
        raise CliError(f"{_bad_parameter(url, connect_args)} in {shown(url)!r}: {error}") from None
    check_connection(engine, url)
    return engine


def _install_hint(url: URL) -> str:
    if url.get_driver_name() == "psycopg2":
        return (
            " (pip install psycopg2-binary, or use postgresql+psycopg://: the driver "
            '"chimeway[postgres]" installs is psycopg 3)'
        )
    if url.get_driver_name() == "psycopg":
        return ' (pip install "chimeway[postgres]")'
    return ""


def _bad_parameter(url: URL, connect_args: dict[str, Any]) -> str:
    """The query parameter of ``url`` the dialect refused, found by leaving each one out."""
    for key in url.query:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # about parameters the driver ignores
                create_engine(url.difference_update_query([key]), connect_args=connect_args)
        except (ValueError, TypeError):
            continue
        value = "***" if _SECRET_PARAMETER.search(key) else url.query[key]
        return f"invalid URL parameter {key}={value!r}"
    return "invalid URL parameters"


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


def _refused_parameter(error: DBAPIError) -> bool:
    return _BAD_PARAMETER.search(str(error.orig)) is not None


def _sqlite(error: DBAPIError) -> bool:
    return type(error.orig).__module__.partition(".")[0] == "sqlite3"


def connection_error(url: URL, error: DBAPIError) -> CliError:
    """The :class:`CliError` for a failure to connect to the database at ``url``.

    A PostgreSQL server that answered (an SQLSTATE: no such database, bad
    password), a connection parameter libpq refuses (``?sslmode=bogus``) and
    a SQLite file that cannot be opened or is not a database are
    configuration errors; no answer at all is an unreachable service.
    """
    if url.get_backend_name() == "sqlite" or _answered(error) or _refused_parameter(error):
        return CliError(f"cannot use the database {shown(url)}: {_detail(error)}")
    return CliError(
        f"cannot reach the database {shown(url)}: {_detail(error)}", ExitCode.UNREACHABLE
    )


def database_failure(error: DBAPIError) -> CliError:
    """The :class:`CliError` for a database error in the middle of a command.

    An error the server answered with is a problem the command found; no
    answer (the connection dropped) is an unreachable service. On SQLite,
    a file that is not a database, lacks a table or cannot be written is a
    configuration error; a database locked by others past the busy timeout
    is unreachable, like a server that does not answer in time.
    """
    if _sqlite(error):
        detail = _detail(error)
        if _SQLITE_BUSY.search(detail):
            return CliError(f"the SQLite database is busy: {detail}", ExitCode.UNREACHABLE)
        return CliError(f"cannot use the SQLite database: {detail}")
    if _answered(error):
        return CliError(f"the database refused: {_detail(error)}", ExitCode.PROBLEM)
    return CliError(f"the database failed: {_detail(error)}", ExitCode.UNREACHABLE)


def check_connection(engine: Engine, url: URL | None = None) -> None:
    """Connect once, or raise the :class:`CliError` of :func:`connection_error`.

    On SQLite the file is read too: connecting alone does not notice a file
    that is not a database.
    """
    try:
        with engine.connect() as connection:
            if engine.dialect.name == "sqlite":
                connection.exec_driver_sql("PRAGMA schema_version")
    except DBAPIError as error:
        raise connection_error(url or engine.url, error) from None


def add_namespace(parser: argparse.ArgumentParser) -> None:
    """Add ``--namespace`` to a command that opens the ledger."""
    parser.add_argument(
        "--namespace",
        metavar="NAME",
        help="the ledger's namespace: a PostgreSQL schema, or a SQLite file attached beside "
        f"the database (default: ${ENV_NAMESPACE}, else none: the default schema)",
    )


def namespace(args: argparse.Namespace) -> str | None:
    """The namespace ``--namespace`` (or ``$CHIMEWAY_NAMESPACE``) names, checked."""
    try:
        return check_namespace(from_env(args.namespace, ENV_NAMESPACE))
    except ValueError as error:
        raise CliError(f"--namespace: {error}") from None


def shown_in(url: URL, namespace: str | None) -> str:
    """:func:`shown` of ``url``, naming ``namespace`` when there is one."""
    return shown(url) if namespace is None else f"{shown(url)} (namespace {namespace})"


def check_tables(engine: Engine, url: URL | None = None, namespace: str | None = None) -> None:
    """Raise :class:`CliError` (usage) unless the database (namespace) holds every chimeway table.

    In a SQLite namespace, ``engine`` must be a store's (it attaches the namespace).
    """
    where = shown_in(url or engine.url, namespace)
    fix = "chimeway db upgrade --db URL"
    if namespace is not None:
        fix += f" --namespace {namespace}"
    present = set(inspect(engine).get_table_names(schema=namespace))
    if DeliveryRow.__tablename__ not in present:
        raise CliError(f"{where} has no chimeway tables; create them with: {fix}")
    missing = sorted(table.name for table in metadata.sorted_tables if table.name not in present)
    if missing:
        raise CliError(
            f"{where} lacks chimeway's table(s) {', '.join(missing)}; create them with: {fix}"
        )


def open_store(
    text: str | None,
    *,
    require_tables: bool = True,
    pool_pre_ping: bool = False,
    namespace: str | None = None,
) -> SQLStore:
    """The ledger at the URL ``text``, in ``namespace`` (checked, connected, with its tables)."""
    url = database_url(text)
    engine = open_engine(url, pool_pre_ping=pool_pre_ping)
    store = SQLStore(engine, namespace=namespace)
    if require_tables:
        check_tables(store.engine, url, namespace)
    return store


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
