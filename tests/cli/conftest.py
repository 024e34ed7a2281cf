"""Running the ``chimeway`` command line in a subprocess, and the ledgers and apps it needs.

:data:`COMMAND` is the one place that says how the command is started: the
installed ``chimeway`` console script, found next to the running interpreter
(nox installs the package into its session's environment).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

import attrs
import pytest

from chimeway_core.cli import main
from chimeway_core.records import NewDelivery
from chimeway_core.store import SQLStore
from tests.services import fresh_postgres_database

#: How the command line is started: the console script a user types.
_SCRIPT: Final = Path(sys.executable).with_name("chimeway")
COMMAND: Final[tuple[str, ...]] = (
    (str(_SCRIPT),) if _SCRIPT.exists() else (sys.executable, "-m", "chimeway_core")
)
SRC: Final = Path(__file__).resolve().parents[2] / "src"

#: The module the ``--app`` tests import (written to a temporary directory).
APP_MODULE: Final = "chimeway_cli_test_app"

_APP_SOURCE: Final = '''
"""Engines for the command-line tests, configured from the environment."""

import os
import secrets
from pathlib import Path

from chimeway_backends.memory import MemoryBackend
from chimeway_core import RetryPolicy, Sent, TemporaryFailure
from chimeway_core.channels import CallableChannel
from chimeway_core.engine import Chimeway
from chimeway_core.store import SQLStore

NOT_AN_ENGINE = 42


class FileBackend:
    """A backend that appends every enqueued id to the file $RECORD_PATH."""

    def __init__(self, path):
        self.path = Path(path)

    def enqueue(self, delivery_id, *, at=None):
        with self.path.open("a") as file:
            file.write(f"{delivery_id}\\n")

    def enqueue_many(self, delivery_ids):
        for delivery_id in delivery_ids:
            self.enqueue(delivery_id)


def _channels():
    return {"log": CallableChannel(lambda delivery, key: Sent(), timeout=5.0)}


def memory_engine():
    store = SQLStore(os.environ["CHIMEWAY_DATABASE_URL"])
    return Chimeway(store, MemoryBackend(), _channels(), relay_grace=0.0)


def unlucky_memory_engine():
    """Every delivery to "log" fails for now and is retried a minute later."""
    store = SQLStore(os.environ["CHIMEWAY_DATABASE_URL"])
    channels = {"log": CallableChannel(lambda delivery, key: TemporaryFailure("busy"))}
    retry = RetryPolicy(initial_delay=60.0, jitter=0.0)
    return Chimeway(store, MemoryBackend(), channels, retry=retry, relay_grace=0.0)


def second_try_memory_engine():
    """The first attempt at each delivery fails; the retry, 0.2 s later, is sent.

    The engine's relay_grace and requeue_after are the defaults (10 s, 300 s).
    """
    store = SQLStore(os.environ["CHIMEWAY_DATABASE_URL"])

    def send(delivery, key):
        return TemporaryFailure("busy") if delivery.attempt_count == 1 else Sent()

    channels = {"log": CallableChannel(send)}
    retry = RetryPolicy(initial_delay=0.2, jitter=0.0)
    return Chimeway(store, MemoryBackend(), channels, retry=retry)


def slow_memory_engine():
    """Every send to "log" takes half a second."""
    import time

    store = SQLStore(os.environ["CHIMEWAY_DATABASE_URL"])

    def send(delivery, key):
        time.sleep(0.5)
        return Sent()

    return Chimeway(store, MemoryBackend(), {"log": CallableChannel(send)}, relay_grace=0.0)


def fixed_engine():
    """An engine whose database is fixed by the application, not $CHIMEWAY_DATABASE_URL."""
    store = SQLStore(os.environ["FIXED_DATABASE_URL"])
    return Chimeway(store, MemoryBackend(), _channels(), relay_grace=0.0)


def recording_engine():
    store = SQLStore(os.environ["CHIMEWAY_DATABASE_URL"])
    return Chimeway(store, FileBackend(os.environ["RECORD_PATH"]), _channels(), relay_grace=0.0)


def rq_engine():
    import redis
    from chimeway_backends.rq import RQBackend

    store = SQLStore(os.environ["CHIMEWAY_DATABASE_URL"])
    connection = redis.Redis.from_url(os.environ["CHIMEWAY_REDIS_URL"])
    backend = RQBackend(connection, os.environ.get("QUEUE", "chimeway-cli-test"), job_timeout=10)
    return Chimeway(store, backend, _channels(), relay_grace=0.0)


def _routed_channels():
    return {**_channels(), "sms": CallableChannel(lambda delivery, key: Sent(), timeout=5.0)}


def routed_memory_engine():
    """"log" on the default queue, "sms" on the queue "sms"."""
    store = SQLStore(os.environ["CHIMEWAY_DATABASE_URL"])
    routes = {"sms": "sms"}
    return Chimeway(store, MemoryBackend(), _routed_channels(), routes=routes, relay_grace=0.0)


def routed_rq_engine():
    """rq_engine with "sms" routed to the queue $QUEUE-sms."""
    import redis
    from chimeway_backends.rq import RQBackend

    store = SQLStore(os.environ["CHIMEWAY_DATABASE_URL"])
    connection = redis.Redis.from_url(os.environ["CHIMEWAY_REDIS_URL"])
    queue = os.environ["QUEUE"]
    backend = RQBackend(connection, queue, job_timeout=10)
    routes = {"sms": f"{queue}-sms"}
    return Chimeway(store, backend, _routed_channels(), routes=routes, relay_grace=0.0)


def celery_engine():
    from celery import Celery
    from chimeway_backends.celery import CeleryBackend

    store = SQLStore(os.environ["CHIMEWAY_DATABASE_URL"])
    broker = os.environ["CHIMEWAY_BROKER_URL"]
    app = Celery("chimeway-cli-test", broker=broker, set_as_current=False)
    app.conf.update(worker_hijack_root_logger=False, worker_enable_remote_control=False)
    backend = CeleryBackend(app, queue=os.environ.get("QUEUE", "chimeway-cli-test"))
    return Chimeway(store, backend, _channels(), relay_grace=0.0)


def broken_factory():
    raise RuntimeError("cannot build the engine")
'''

_BROKEN_SOURCE: Final = 'raise ValueError("this module fails at import")\n'


@attrs.frozen
class Result:
    """What one run of the command printed and returned."""

    code: int
    stdout: str
    stderr: str

    @property
    def stderr_lines(self) -> list[str]:
        """The non-empty lines on stderr."""
        return [line for line in self.stderr.splitlines() if line.strip()]


def command_env(
    extra: Mapping[str, str] | None = None, path: Sequence[Path] = ()
) -> dict[str, str]:
    """The environment of a run: ours without CHIMEWAY_* variables, plus ``extra``."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("CHIMEWAY_")}
    env["PYTHONPATH"] = os.pathsep.join(str(p) for p in (SRC, *path))
    env.update(extra or {})
    return env


def run(
    *args: str,
    cwd: Path,
    env: Mapping[str, str] | None = None,
    path: Sequence[Path] = (),
    timeout: float = 60,
) -> Result:
    """Run ``chimeway *args`` in ``cwd`` and wait for it."""
    done = subprocess.run(
        [*COMMAND, *args],
        cwd=cwd,
        env=command_env(env, path),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return Result(done.returncode, done.stdout, done.stderr)


def run_all(
    *invocations: Sequence[str],
    cwd: Path | None = None,
    cwds: Sequence[Path] = (),
    path: Sequence[Path] = (),
) -> list[Result]:
    """Run several independent invocations at once, in ``cwd`` or one each of ``cwds``."""
    if cwd is not None:
        cwds = [cwd] * len(invocations)
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = [
            pool.submit(run, *args, cwd=directory, path=path)
            for args, directory in zip(invocations, cwds, strict=True)
        ]
    return [future.result() for future in futures]


#: Runs ``chimeway *args`` in-process through ``main()`` (see the ``invoke`` fixture).
Invoke = Callable[..., Result]


@pytest.fixture
def invoke(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Invoke:
    """Call ``main(args)`` in ``tmp_path`` with ``env`` set and no other CHIMEWAY_* variable."""
    for name in [key for key in os.environ if key.startswith("CHIMEWAY_")]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)

    def call(*args: str, env: Mapping[str, str] | None = None) -> Result:
        for name, value in (env or {}).items():
            monkeypatch.setenv(name, value)
        capsys.readouterr()
        code = main(list(args))
        out, err = capsys.readouterr()
        return Result(code, out, err)

    return call


def start(
    *args: str, cwd: Path, env: Mapping[str, str] | None = None, path: Sequence[Path] = ()
) -> subprocess.Popen[str]:
    """Start ``chimeway *args`` in ``cwd`` without waiting."""
    return subprocess.Popen(
        [*COMMAND, *args],
        cwd=cwd,
        env=command_env(env, path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def sqlite_ledger(path: Path) -> tuple[SQLStore, str]:
    """A new SQLite ledger with chimeway's tables at ``path``, and its URL."""
    url = f"sqlite:///{path}"
    store = SQLStore(url)
    store.create_all()
    return store, url


def add_deliveries(store: SQLStore, count: int, *, now: datetime | None = None) -> list[str]:
    """Create ``count`` live deliveries on the ``log`` channel (with outbox rows); their ids."""
    created = store.create_many(
        [NewDelivery(channel="log", recipient=f"r{i}@example.test") for i in range(count)],
        now=now or datetime.now(UTC),
    )
    return [str(c.delivery.id) for c in created]


@pytest.fixture(scope="session")
def app_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding the ``--app`` fixture modules."""
    directory = tmp_path_factory.mktemp("apps")
    (directory / f"{APP_MODULE}.py").write_text(textwrap.dedent(_APP_SOURCE))
    (directory / "chimeway_cli_broken_app.py").write_text(_BROKEN_SOURCE)
    return directory


@pytest.fixture(scope="session")
def demo_ledger(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[SQLStore, str]]:
    """A SQLite ledger the demo filled with 120 deliveries; the store and its URL."""
    directory = tmp_path_factory.mktemp("demo-ledger")
    url = f"sqlite:///{directory / 'ledger.sqlite3'}"
    result = run("demo", "-n", "120", "--seed", "1", "--db", url, cwd=directory)
    assert 0 == result.code, result.stderr
    store = SQLStore(url)
    yield store, url
    store.engine.dispose()


@pytest.fixture
def fresh_postgres() -> Iterator[str]:
    """An empty PostgreSQL database, dropped afterwards; yields its URL."""
    with fresh_postgres_database("chimeway_cli") as url:
        yield url
