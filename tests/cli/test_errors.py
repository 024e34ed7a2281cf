"""Bad configuration: one line on stderr, the documented exit code, never a traceback.

The cases the brief names (an unreachable database, an ``--app`` that does not
import or lacks the attribute, an unknown backend, a malformed URL, an unknown
or malformed delivery id) run as subprocesses of the real entry point, all at
once to keep the suite fast. The rest run through ``main()`` in-process, which
proves the same of the command line's own code: an exception escaping it would
fail the test.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import attrs
import pytest
from sqlalchemy.exc import OperationalError

from chimeway_core.cli import ExitCode, main
from chimeway_core.cli.config import database_failure
from tests.cli.conftest import (
    APP_MODULE,
    COMMAND,
    Invoke,
    Result,
    command_env,
    run,
    sqlite_ledger,
)

#: Most cases reach for psycopg, alembic, rq or celery (to show their errors).
pytestmark = pytest.mark.extras

UNREACHABLE = "postgresql+psycopg://postgres@127.0.0.1:1/chimeway"
MISSING_ID = "00000000-0000-4000-8000-000000000000"
LEDGER = "<ledger>"
"""Replaced by the URL of an empty SQLite ledger."""


@attrs.frozen
class Case:
    """One bad invocation and what it must produce."""

    name: str
    args: tuple[str, ...]
    code: int
    says: str
    env: tuple[tuple[str, str], ...] = ()
    hide: tuple[str, ...] = ()
    """Modules made unimportable (in-process cases only)."""
    files: tuple[tuple[str, str], ...] = ()
    """Files (name, text) written in the working directory first (in-process cases only)."""

    def argv(self, ledger: str) -> list[str]:
        """The arguments, with the ledger's URL in place."""
        return [ledger if arg == LEDGER else arg for arg in self.args]


def _worker(backend: str, app: str, *more: str) -> tuple[str, ...]:
    return ("worker", "--backend", backend, "--app", app, *more)


SUBPROCESS = [
    Case("malformed URL", ("inspect", "--db", "not a url"), 2, "malformed database URL"),
    Case("unreachable database", ("inspect", "--db", UNREACHABLE), 3, "cannot reach"),
    Case("malformed UUID", ("show", "not-a-uuid", "--db", LEDGER), 2, "not a delivery id"),
    Case("unknown delivery id", ("show", MISSING_ID, "--db", LEDGER), 1, "no delivery with id"),
    Case("unknown backend", _worker("kafka", "x:y"), 2, "invalid choice: 'kafka'"),
    Case(
        "app does not import",
        _worker("memory", "chimeway_cli_broken_app:engine"),
        2,
        "raised ValueError: this module fails at import (chimeway_cli_broken_app.py:1)",
    ),
    Case(
        "app lacks the attribute",
        _worker("memory", f"{APP_MODULE}:missing"),
        2,
        "has no attribute 'missing'",
    ),
]


@pytest.fixture(scope="module")
def ledger_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    """An empty SQLite ledger."""
    store, url = sqlite_ledger(tmp_path_factory.mktemp("errors") / "ledger.sqlite3")
    store.engine.dispose()
    return url


@pytest.fixture(scope="module")
def subprocess_results(
    ledger_url: str, app_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Result]:
    """Every subprocess case, run four at a time."""
    cwd = tmp_path_factory.mktemp("errors-cwd")
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = {
            case.name: pool.submit(
                run, *case.argv(ledger_url), cwd=cwd, env=dict(case.env), path=[app_dir]
            )
            for case in SUBPROCESS
        }
    return {name: future.result() for name, future in futures.items()}


@pytest.mark.parametrize("case", SUBPROCESS, ids=lambda case: case.name)
def test_bad_configuration_in_a_subprocess(
    case: Case, subprocess_results: dict[str, Result]
) -> None:
    """The real entry point prints exactly one line on stderr and exits with the documented code."""
    result = subprocess_results[case.name]
    assert case.code == result.code, result.stderr
    assert 1 == len(result.stderr_lines), result.stderr
    assert case.says in result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert "" == result.stdout


IN_PROCESS = [
    Case("no command", (), 2, "required: COMMAND"),
    Case("unknown command", ("frobnicate",), 2, "invalid choice"),
    Case(
        "malformed URL from the environment",
        ("inspect",),
        2,
        "malformed database URL",
        (("CHIMEWAY_DATABASE_URL", "::nonsense"),),
    ),
    Case(
        "password never echoed",
        ("inspect", "--db", "postgresql://u:s3cret@h:port/db"),
        2,
        "postgresql://u:***@h:port/db",
    ),
    Case("unsupported database", ("inspect", "--db", "mysql://u@h/db"), 2, "unsupported database"),
    Case("unknown driver", ("inspect", "--db", "postgresql+nodriver://u@h/db"), 2, "nodriver"),
    Case("in-memory SQLite", ("inspect", "--db", "sqlite://"), 2, "in-memory SQLite"),
    Case(
        "missing SQLite file", ("inspect", "--db", "sqlite:///nowhere.db"), 2, "no SQLite database"
    ),
    Case(
        "missing SQLite file named by a SQLite URI",
        ("inspect", "--db", "sqlite:///file:nowhere.db?mode=ro&uri=true"),
        2,
        "no SQLite database at 'nowhere.db'",
    ),
    Case(
        "in-memory SQLite URI",
        ("inspect", "--db", "sqlite:///file::memory:?uri=true"),
        2,
        "in-memory SQLite",
    ),
    Case(
        "in-memory SQLite URI by its mode",
        ("inspect", "--db", "sqlite:///file:ledger?mode=memory&cache=shared&uri=true"),
        2,
        "in-memory SQLite",
    ),
    Case(
        "file: without uri=true is a file of that name",
        ("inspect", "--db", "sqlite:///file:ledger.db"),
        2,
        "no SQLite database at 'file:ledger.db'",
    ),
    Case(
        "unreachable database on upgrade", ("db", "upgrade", "--db", UNREACHABLE), 3, "cannot reach"
    ),
    Case("upgrade without a database", ("db", "upgrade"), 2, "no database"),
    Case("db without a subcommand", ("db",), 2, "required"),
    Case("cancel an unknown id", ("cancel", MISSING_ID, "--db", LEDGER), 1, "no delivery with id"),
    Case("cancel a malformed id", ("cancel", "12", "--db", LEDGER), 2, "not a delivery id"),
    Case("worker without --app", ("worker", "--backend", "memory"), 2, "--app"),
    Case("app without a colon", _worker("memory", APP_MODULE), 2, "module:attribute"),
    Case(
        "app module missing",
        _worker("memory", "no_such_module:engine"),
        2,
        "no module named 'no_such_module'",
    ),
    Case(
        "app attribute not an engine",
        _worker("memory", f"{APP_MODULE}:NOT_AN_ENGINE"),
        2,
        "is a int, not a Chimeway engine",
    ),
    Case(
        "app factory raises",
        _worker("memory", f"{APP_MODULE}:broken_factory"),
        2,
        "raised RuntimeError: cannot build the engine",
    ),
    Case(
        "engine not on the memory backend",
        _worker("memory", f"{APP_MODULE}:recording_engine", "--db", LEDGER),
        2,
        "not a chimeway_backends.memory.MemoryBackend",
        (("RECORD_PATH", "unused"),),
    ),
    Case(
        "engine not on the rq backend",
        _worker("rq", f"{APP_MODULE}:memory_engine", "--db", LEDGER),
        2,
        "not a chimeway_backends.rq.RQBackend",
    ),
    Case(
        "engine on an unreachable database",
        _worker("memory", f"{APP_MODULE}:memory_engine", "--db", UNREACHABLE),
        3,
        "cannot reach",
    ),
    Case(
        "Redis unreachable",
        _worker("rq", f"{APP_MODULE}:rq_engine", "--db", LEDGER),
        3,
        "cannot reach Redis",
        (("CHIMEWAY_REDIS_URL", "redis://127.0.0.1:1/0"),),
    ),
    Case(
        "Celery broker unreachable",
        _worker("celery", f"{APP_MODULE}:celery_engine", "--db", LEDGER),
        3,
        "cannot reach the Celery broker at amqp://guest:**@127.0.0.1:1//: ",
        (("CHIMEWAY_BROKER_URL", "amqp://guest:guest@127.0.0.1:1//"),),
    ),
    Case(
        "celery extra missing",
        _worker("celery", "x:y"),
        2,
        "needs the 'celery' extra: pip install \"chimeway[celery]\"",
        hide=("celery",),
    ),
    Case("rq extra missing", _worker("rq", "x:y"), 2, 'pip install "chimeway[rq]"', hide=("rq",)),
    Case(
        "adapter missing",
        _worker("rq", "x:y"),
        2,
        "its adapter chimeway_backends.rq is not installed",
        hide=("chimeway_backends.rq",),
    ),
    Case(
        "malformed Redis URL",
        _worker("memory", f"{APP_MODULE}:memory_engine", "--redis-url", "http://x"),
        2,
        "malformed --redis-url",
    ),
    Case(
        "malformed broker URL from the environment",
        _worker("memory", f"{APP_MODULE}:memory_engine"),
        2,
        "malformed CHIMEWAY_BROKER_URL 'nonsense'",
        (("CHIMEWAY_BROKER_URL", "nonsense"),),
    ),
    Case(
        "malformed Redis URL from the environment",
        ("relay", "--app", "x:y"),
        2,
        "malformed CHIMEWAY_REDIS_URL 'bad'",
        (("CHIMEWAY_REDIS_URL", "bad"),),
    ),
    Case(
        "empty --redis-url is not the environment's",
        ("relay", "--app", "x:y", "--redis-url", ""),
        2,
        "malformed --redis-url ''",
        (("CHIMEWAY_REDIS_URL", "redis://127.0.0.1:1/0"),),
    ),
    Case("zero worker threads", _worker("memory", "x:y", "--concurrency", "0"), 2, "--concurrency"),
    Case(
        "a typo's worth of worker threads",
        _worker("memory", "x:y", "--concurrency", "10000"),
        2,
        "--concurrency must be from 1 to 256, got 10000",
    ),
    Case(
        "celery in burst mode",
        _worker("celery", f"{APP_MODULE}:celery_engine", "--burst"),
        2,
        "--burst: a celery worker has no burst mode",
    ),
    Case(
        "rq with concurrency",
        _worker("rq", f"{APP_MODULE}:rq_engine", "--db", LEDGER, "--concurrency", "4"),
        2,
        "one job at a time",
        (("CHIMEWAY_REDIS_URL", "redis://127.0.0.1:1/0"),),
    ),
    Case(
        "relay of an in-memory engine",
        ("relay", "--app", f"{APP_MODULE}:memory_engine", "--db", LEDGER),
        2,
        "queues in memory",
    ),
    Case(
        "rescue of an in-memory engine",
        ("rescue", "--app", f"{APP_MODULE}:memory_engine", "--db", LEDGER),
        2,
        "queues in memory",
    ),
    Case("unknown mix profile", ("demo", "--mix", "spam=1"), 2, "unknown profile 'spam'"),
    Case("malformed mix", ("demo", "--mix", "success"), 2, "is not name=weight"),
    Case("negative mix weight", ("demo", "--mix", "success=-1"), 2, "finite number >= 0"),
    Case("no deliveries", ("demo", "-n", "0"), 2, "between 1 and"),
    Case("reset without --db", ("demo", "--reset"), 2, "--reset needs --db"),
    Case(
        "mix whose sum overflows",
        ("demo", "-n", "200", "--mix", "success=1e308,permanent=1e308"),
        2,
        "must add up to a finite number",
    ),
    Case(
        "unknown option of a command",
        ("demo", "--bogus"),
        2,
        "chimeway demo: error: unrecognized arguments: --bogus",
    ),
    Case(
        "unknown option before the command",
        ("--bogus", "demo"),
        2,
        "chimeway: error: unrecognized arguments: --bogus (see 'chimeway --help')",
    ),
    Case(
        "unknown option of db upgrade",
        ("db", "upgrade", "--bogus"),
        2,
        "chimeway db upgrade: error: unrecognized arguments: --bogus",
    ),
    Case(
        "password in the query string never echoed",
        ("inspect", "--db", f"{UNREACHABLE}?password=s3cret&sslpassword=s3cret"),
        3,
        "?password=***&sslpassword=***",
    ),
    Case(
        "password in a malformed URL's query string never echoed",
        ("inspect", "--db", "not a url?token=s3cret"),
        2,
        "?token=***",
    ),
    Case(
        "password with an unencoded @",
        ("inspect", "--db", "postgresql://u:pa@s3cret@127.0.0.1/db"),
        2,
        "postgresql://u:***@127.0.0.1/db': an '@' in the password must be written %40",
    ),
    Case(
        "malformed URL whose password holds an @",
        ("inspect", "--db", "post gresql://u:pa@s3cret@h/db"),
        2,
        "'post gresql://u:***@h/db'",
    ),
    Case(
        "port out of range",
        ("inspect", "--db", "postgresql://postgres@127.0.0.1:99999/test"),
        2,
        "invalid port 99999",
    ),
    Case(
        "negative port",
        ("inspect", "--db", "postgresql://postgres@127.0.0.1:-1/test"),
        2,
        "invalid port -1",
    ),
    Case(
        "connection parameter libpq refuses",
        ("inspect", "--db", "postgresql://postgres@127.0.0.1:1/test?sslmode=bogus"),
        2,
        "cannot use the database",
    ),
    Case(
        "unknown connection option",
        ("inspect", "--db", "postgresql://postgres@127.0.0.1:1/test?bogusparam=1"),
        2,
        'invalid connection option "bogusparam"',
    ),
    Case(
        "psycopg2 missing",
        ("inspect", "--db", "postgresql+psycopg2://u@h/db"),
        2,
        "or use postgresql+psycopg://",
        hide=("psycopg2",),
    ),
    Case(
        "SQLite URL parameter the driver refuses",
        ("inspect", "--db", "sqlite:///ledger.db?timeout=abc"),
        2,
        "invalid URL parameter timeout='abc'",
        files=(("ledger.db", ""),),
    ),
    Case(
        "SQLite file that is not a database",
        ("inspect", "--db", "sqlite:///notes.txt"),
        2,
        "cannot use the database sqlite:///notes.txt: file is not a database",
        files=(("notes.txt", "not a database, " * 100),),
    ),
    Case(
        "explicitly empty --db",
        ("cancel", MISSING_ID, "--db", ""),
        2,
        "--db is empty",
        (("CHIMEWAY_DATABASE_URL", "sqlite:///elsewhere.db"),),
    ),
    Case(
        "explicitly empty --db of a worker",
        _worker("memory", f"{APP_MODULE}:memory_engine", "--db", ""),
        2,
        "--db is empty",
    ),
    Case(
        "upgrade to an empty revision",
        ("db", "upgrade", "--db", "sqlite:///new.db", "--revision", ""),
        2,
        "--revision: revision '' is not an upgrade target",
    ),
    Case(
        "upgrade to a downgrade target",
        ("db", "upgrade", "--db", "sqlite:///new.db", "--revision", "head-1"),
        2,
        "--revision: revision 'head-1' is not an upgrade target",
    ),
    Case(
        "upgrade to an unknown revision",
        ("db", "upgrade", "--db", "sqlite:///new.db", "--revision", "bogus"),
        2,
        "revision 'bogus' is not one of chimeway's",
    ),
    Case(
        "upgrade past the last migration",
        ("db", "upgrade", "--db", "sqlite:///new.db", "--revision", "+9"),
        2,
        "chimeway has only",
    ),
    Case("upgrade of in-memory SQLite", ("db", "upgrade", "--db", "sqlite://"), 2, "in-memory"),
    Case("infinite relay grace", ("relay", "--app", "x:y", "--grace", "inf"), 2, "--grace"),
    Case("relay grace past datetime", ("relay", "--app", "x:y", "--grace", "1e11"), 2, "at most"),
    Case("NaN relay grace", ("relay", "--app", "x:y", "--grace", "nan"), 2, "finite"),
    Case("infinite worker grace", _worker("memory", "x:y", "--grace", "inf"), 2, "--grace"),
    Case("worker grace past a wait", _worker("memory", "x:y", "--grace", "1e10"), 2, "at most"),
    Case(
        "tick interval past a wait",
        _worker("memory", "x:y", "--tick-interval", "1e10"),
        2,
        "--tick-interval must be a finite number of seconds > 0 and at most",
    ),
    Case(
        "engine from CHIMEWAY_APP",
        ("worker", "--backend", "memory"),
        2,
        f"--app {APP_MODULE}:missing: module '{APP_MODULE}' has no attribute 'missing'",
        (("CHIMEWAY_APP", f"{APP_MODULE}:missing"),),
    ),
    Case(
        "relay on a missing SQLite file",
        ("relay", "--app", f"{APP_MODULE}:memory_engine", "--db", "sqlite:///nope.db"),
        2,
        "no SQLite database at 'nope.db'",
    ),
    Case(
        "worker on a database without chimeway's tables",
        _worker("rq", f"{APP_MODULE}:rq_engine", "--db", "sqlite:///empty.db"),
        2,
        "has no chimeway tables",
        (("CHIMEWAY_REDIS_URL", "redis://127.0.0.1:1/0"),),
        files=(("empty.db", ""),),
    ),
    Case(
        "relay with Redis unreachable",
        ("relay", "--app", f"{APP_MODULE}:rq_engine", "--db", LEDGER),
        3,
        "cannot reach Redis",
        (("CHIMEWAY_REDIS_URL", "redis://127.0.0.1:1/0"),),
    ),
    Case(
        "rescue with the Celery broker unreachable",
        ("rescue", "--app", f"{APP_MODULE}:celery_engine", "--db", LEDGER),
        3,
        "cannot reach the Celery broker",
        (("CHIMEWAY_BROKER_URL", "amqp://guest:guest@127.0.0.1:1//"),),
    ),
]


@pytest.mark.parametrize("case", IN_PROCESS, ids=lambda case: case.name)
def test_bad_configuration_in_process(
    case: Case,
    ledger_url: str,
    app_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """main() returns the documented code after one line on stderr and nothing on stdout."""
    for name in ("CHIMEWAY_DATABASE_URL", "CHIMEWAY_REDIS_URL", "CHIMEWAY_BROKER_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("CHIMEWAY_APP", raising=False)
    for name, text in case.files:
        (tmp_path / name).write_text(text)
    for name, value in case.env:
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(app_dir))
    for module in case.hide:
        monkeypatch.setitem(sys.modules, module, None)
        for adapter in ("chimeway_backends.rq", "chimeway_backends.celery"):
            if adapter != module:
                monkeypatch.delitem(sys.modules, adapter, raising=False)
    code = main(case.argv(ledger_url))
    out, err = capsys.readouterr()
    assert case.code == code, err
    assert 1 == len(err.strip().splitlines()), err
    assert case.says in err
    assert "" == out
    assert "s3cret" not in err


def test_a_ledger_missing_one_table_is_a_configuration_error(
    tmp_path: Path, invoke: Invoke
) -> None:
    """chimeway's tables but not the outbox: exit 2 naming the missing table, not 3."""
    store, url = sqlite_ledger(tmp_path / "ledger.sqlite3")
    with store.engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE chimeway_outbox")
    store.engine.dispose()
    result = invoke("inspect", "--db", url)
    assert 2 == result.code
    assert [
        f"chimeway: error: {url} lacks chimeway's table(s) chimeway_outbox; "
        "create them with: chimeway db upgrade --db URL"
    ] == result.stderr.splitlines()


@pytest.mark.parametrize(
    ("message", "code"),
    [
        ("no such table: chimeway_outbox", ExitCode.USAGE),
        ("file is not a database", ExitCode.USAGE),
        ("attempt to write a readonly database", ExitCode.USAGE),
        ("database is locked", ExitCode.UNREACHABLE),
    ],
)
def test_sqlite_errors_in_the_middle_of_a_command(message: str, code: ExitCode) -> None:
    """A SQLite file is configuration, not a service: only a lock held too long is exit 3."""
    error = OperationalError("SELECT 1", {}, sqlite3.OperationalError(message))
    failure = database_failure(error)
    assert (code, True) == (failure.code, failure.message.endswith(message))


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_output_that_cannot_be_written_is_one_line(tmp_path: Path) -> None:
    """stdout on a full disk: exit 1 with one line on stderr, no traceback."""
    with Path("/dev/full").open("w") as full:
        done = subprocess.run(
            [*COMMAND, "table"],
            cwd=tmp_path,
            env=command_env(),
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            check=False,
        )
    assert 1 == done.returncode
    assert [
        "chimeway: error: cannot write the output: No space left on device"
    ] == done.stderr.splitlines()
