"""Running real ``dramatiq`` worker processes on the scripted app of ``worker_app.py``.

A ``dramatiq`` command stops all its worker processes when one of them dies
(and exits): in production a supervisor starts it again.
:func:`supervised` plays that supervisor.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from uuid import UUID

import attrs
import dramatiq
from sqlalchemy import Engine

import chimeway_backends
from chimeway_backends.dramatiq import DramatiqBackend
from chimeway_core import RetryPolicy
from chimeway_core.engine import Chimeway
from chimeway_core.store import SQLStore
from chimeway_core.testing import FakeChannel
from tests.backends.dramatiq.conftest import Broker, wait_until

SRC = Path(chimeway_backends.__file__).resolve().parents[1]
APP_SOURCE = Path(__file__).with_name("worker_app.py")
APP_MODULE = "chimeway_worker_app"
#: ``worker_app.RETRY.max_attempts`` (that module only imports inside a worker).
MAX_ATTEMPTS = 3
#: What each ``dramatiq`` worker process logs once it consumes.
READY = "Worker process is ready for action."


@attrs.define
class Call:
    """One line of the scripted channel's ``calls.log``."""

    delivery_id: UUID
    idempotency_key: str
    attempt: int
    pid: int


@attrs.define
class WorkerSetup:
    """Where a worker's app, files and ledger are; builds the producer-side engine."""

    broker: Broker
    workdir: Path
    database_url: str
    made: list[dramatiq.Broker] = attrs.Factory(list)

    def close(self) -> None:
        """Close the brokers the producers opened."""
        for made in self.made:
            made.close()

    @property
    def log(self) -> Path:
        """The workers' combined stdout and stderr."""
        return self.workdir / "worker.log"

    @property
    def markers(self) -> Path:
        """Where the channel writes a marker before it sleeps or dies."""
        return self.workdir / "markers"

    def env(self, **extra: str) -> dict[str, str]:
        """The environment the worker app reads."""
        return {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(self.workdir), str(SRC)]),
            "CHIMEWAY_TEST_DIR": str(self.workdir),
            "CHIMEWAY_TEST_QUEUE": self.broker.queue,
            "CHIMEWAY_TEST_BROKER": self.broker.url,
            "CHIMEWAY_TEST_BROKER_KIND": self.broker.name,
            "CHIMEWAY_TEST_DB": self.database_url,
            # What the backend's page recommends: a process holds only what it runs.
            "dramatiq_queue_prefetch": "1",
            **extra,
        }

    def producer(self, engine: Engine) -> Chimeway:
        """An engine in the test process that notifies onto the workers' queue (never performs)."""
        self.made.append(self.broker.make())
        backend = DramatiqBackend(self.made[-1], queue=self.broker.queue, rescue_interval=None)
        retry = RetryPolicy(max_attempts=MAX_ATTEMPTS)
        return Chimeway(SQLStore(engine), backend, {"scripted": FakeChannel()}, retry=retry)

    def calls(self) -> list[Call]:
        """Every call the scripted channel logged, in order."""
        path = self.workdir / "calls.log"
        if not path.exists():
            return []
        calls = []
        for line in path.read_text().splitlines():
            delivery_id, key, attempt, pid = line.split()
            calls.append(Call(UUID(delivery_id), key, int(attempt), int(pid)))
        return calls


def make_setup(broker: Broker, workdir: Path, database_url: str) -> WorkerSetup:
    """Copy the app module into ``workdir`` and describe the workers to run there."""
    workdir.mkdir(parents=True, exist_ok=True)
    shutil.copy(APP_SOURCE, workdir / f"{APP_MODULE}.py")
    return WorkerSetup(broker, workdir, database_url)


def dramatiq_command(setup: WorkerSetup, *, processes: int, threads: int) -> list[str]:
    """``dramatiq chimeway_worker_app:broker`` on the setup's queue."""
    return [
        sys.executable,
        "-m",
        "dramatiq",
        f"{APP_MODULE}:broker",
        "--processes",
        str(processes),
        "--threads",
        str(threads),
        "--queues",
        setup.broker.queue,
    ]


def start(setup: WorkerSetup, command: list[str], **env: str) -> subprocess.Popen[bytes]:
    """Start ``command`` in the setup's directory, its output appended to the log."""
    with setup.log.open("ab") as log:
        return subprocess.Popen(
            command,
            cwd=setup.workdir,
            env=setup.env(**env),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


@contextmanager
def dramatiq_workers(
    setup: WorkerSetup, *, processes: int = 2, threads: int = 2
) -> Iterator[subprocess.Popen[bytes]]:
    """A ``dramatiq`` command, every process ready; stopped (warm, then hard) at the end."""
    ready = setup.log.read_text().count(READY) if setup.log.exists() else 0
    process = start(setup, dramatiq_command(setup, processes=processes, threads=threads))
    try:
        wait_until(
            lambda: (
                setup.log.read_text().count(READY) >= ready + processes
                or process.poll() is not None
            ),
            what="the dramatiq workers to be ready",
        )
        assert process.poll() is None, setup.log.read_text()[-3000:]
        yield process
    finally:
        stop(process)


@contextmanager
def supervised(setup: WorkerSetup, *, processes: int = 2, threads: int = 1) -> Iterator[list[int]]:
    """A ``dramatiq`` command started again whenever it exits, as a supervisor would.

    Yields the list of restarts so far (one entry per exit code seen).
    """
    exits: list[int] = []
    done = threading.Event()
    command = dramatiq_command(setup, processes=processes, threads=threads)

    def supervise() -> None:
        while not done.is_set():
            process = start(setup, command)
            while process.poll() is None:
                if done.wait(0.1):
                    stop(process)
                    return
            exits.append(process.returncode)

    thread = threading.Thread(target=supervise, daemon=True)
    thread.start()
    try:
        yield exits
    finally:
        done.set()
        thread.join(timeout=120)


def stop(process: subprocess.Popen[bytes]) -> None:
    """Warm shutdown (SIGTERM), then SIGKILL to the worker's own process group after 30 s."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        with suppress(subprocess.TimeoutExpired):
            process.wait(timeout=30)
    if process.poll() is None or _group_alive(process.pid):
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def wait_all_terminal(store: SQLStore, *, timeout: float = 90.0) -> None:
    """Poll the ledger until no delivery is live."""
    wait_until(
        lambda: store.oldest_non_terminal() is None,
        timeout=timeout,
        what="every delivery to be terminal",
    )
