"""Running real ``celery worker`` processes on the scripted app of ``worker_app.py``."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any
from uuid import UUID

import attrs
from sqlalchemy import Engine

import chimeway_backends
from chimeway_backends.celery import CeleryBackend
from chimeway_core import RetryPolicy
from chimeway_core.engine import Chimeway
from chimeway_core.store import SQLStore
from chimeway_core.testing import FakeChannel
from tests.backends.celery.conftest import Broker, wait_until

SRC = Path(chimeway_backends.__file__).resolve().parents[1]
APP_SOURCE = Path(__file__).with_name("worker_app.py")
APP_MODULE = "chimeway_worker_app"
#: ``worker_app.RETRY.max_attempts`` (that module only imports inside a worker).
MAX_ATTEMPTS = 3


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
    transport_options: dict[str, Any]

    @property
    def log(self) -> Path:
        """The worker's combined stdout and stderr."""
        return self.workdir / "worker.log"

    @property
    def markers(self) -> Path:
        """Where the channel writes a marker before it sleeps or dies."""
        return self.workdir / "markers"

    def env(self, **extra: str) -> dict[str, str]:
        """The environment the worker app reads."""
        python_path = os.pathsep.join([str(self.workdir), str(SRC)])
        return {
            **os.environ,
            "PYTHONPATH": python_path,
            "CHIMEWAY_TEST_DIR": str(self.workdir),
            "CHIMEWAY_TEST_QUEUE": self.broker.queue,
            "CHIMEWAY_TEST_BROKER": self.broker.url,
            "CHIMEWAY_TEST_TRANSPORT": json.dumps(self.transport_options),
            "CHIMEWAY_TEST_DB": self.database_url,
            **extra,
        }

    def producer(self, engine: Engine) -> Chimeway:
        """An engine in the test process that notifies onto the worker's queue.

        It never performs (its channel is a stand-in); its retry policy gives
        new deliveries the worker app's ``max_attempts``.
        """
        app = self.broker.app(broker_transport_options=self.transport_options)
        backend = CeleryBackend(app, queue=self.broker.queue, rescue_interval=None)
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


def make_setup(broker: Broker, workdir: Path, database_url: str, **options: Any) -> WorkerSetup:
    """Copy the app module into ``workdir`` and describe the worker to run there."""
    workdir.mkdir(parents=True, exist_ok=True)
    shutil.copy(APP_SOURCE, workdir / f"{APP_MODULE}.py")
    return WorkerSetup(broker, workdir, database_url, {**broker.transport_options, **options})


@contextmanager
def celery_worker(
    setup: WorkerSetup,
    *,
    pool: str,
    concurrency: int,
    command: list[str] | None = None,
    **env: str,
) -> Iterator[subprocess.Popen[bytes]]:
    """A ``celery -A chimeway_worker_app worker`` process, ready; stopped (warm, then hard)."""
    command = command or [
        sys.executable,
        "-m",
        "celery",
        "-A",
        APP_MODULE,
        "worker",
        "--pool",
        pool,
        "--concurrency",
        str(concurrency),
        "--queues",
        setup.broker.queue,
        "--prefetch-multiplier",
        "1",
        "--loglevel",
        "INFO",
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
        "--hostname",
        f"{setup.broker.queue}@%h",
    ]
    with setup.log.open("ab") as log:
        process = subprocess.Popen(
            command,
            cwd=setup.workdir,
            env=setup.env(**env),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_until(
            lambda: " ready." in setup.log.read_text() or process.poll() is not None,
            what="the celery worker to be ready",
        )
        assert process.poll() is None, setup.log.read_text()[-3000:]
        yield process
    finally:
        stop(process)


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


def elapsed(start: float) -> float:
    """Seconds since ``start`` (a ``time.monotonic()`` reading)."""
    return time.monotonic() - start
