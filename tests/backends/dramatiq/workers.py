"""Running real ``dramatiq`` worker processes on the scripted app of ``worker_app.py``.

A ``dramatiq`` command stops all its worker processes when one of them dies
(and exits): in production a supervisor starts it again.
:func:`supervised` plays that supervisor. What does not depend on Dramatiq
is :mod:`tests.backends._workers`'s.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import attrs
import dramatiq
from sqlalchemy import Engine

from chimeway_backends.dramatiq import DramatiqBackend
from chimeway_core import RetryPolicy
from chimeway_core.engine import Chimeway
from chimeway_core.store import SQLStore
from chimeway_core.testing import FakeChannel
from tests.backends._workers import APP_MODULE, MAX_ATTEMPTS, ScriptedSetup, copy_app, stop
from tests.backends.dramatiq.conftest import Broker

APP_SOURCE = Path(__file__).with_name("worker_app.py")
#: What each ``dramatiq`` worker process logs once it consumes.
READY = "Worker process is ready for action."


@attrs.define
class WorkerSetup(ScriptedSetup):
    """The scripted app's setup on a Dramatiq broker; closes the brokers its producers opened."""

    made: list[dramatiq.Broker] = attrs.Factory(list)

    def close(self) -> None:
        """Close the brokers the producers opened."""
        for made in self.made:
            made.close()

    def backend_env(self) -> dict[str, str]:
        """The broker's kind, and what the backend's page recommends: prefetch 1."""
        return {
            "CHIMEWAY_TEST_BROKER_KIND": self.broker.name,
            # A process holds only what it runs.
            "dramatiq_queue_prefetch": "1",
        }

    def producer(self, engine: Engine) -> Chimeway:
        """An engine in the test process that notifies onto the workers' queue (never performs)."""
        broker = self.broker
        assert isinstance(broker, Broker)
        self.made.append(broker.make())
        backend = DramatiqBackend(self.made[-1], queue=broker.queue, rescue_interval=None)
        retry = RetryPolicy(max_attempts=MAX_ATTEMPTS)
        return Chimeway(SQLStore(engine), backend, {"scripted": FakeChannel()}, retry=retry)


def make_setup(broker: Broker, workdir: Path, database_url: str) -> WorkerSetup:
    """Copy the app module into ``workdir`` and describe the workers to run there."""
    copy_app(APP_SOURCE, workdir)
    return WorkerSetup(broker, workdir, database_url)


def dramatiq_command(setup: WorkerSetup, *, processes: int, threads: int) -> list[str]:
    """``dramatiq chimeway_worker_app:broker`` on the setup's queue."""
    return [
        *(sys.executable, "-m", "dramatiq", f"{APP_MODULE}:broker"),
        *("--processes", str(processes), "--threads", str(threads)),
        *("--queues", setup.broker.queue),
    ]


@contextmanager
def dramatiq_workers(
    setup: WorkerSetup, *, processes: int = 2, threads: int = 2
) -> Iterator[subprocess.Popen[bytes]]:
    """A ``dramatiq`` command, every process ready; stopped (warm, then hard) at the end."""
    ready = setup.log.read_text().count(READY) if setup.log.exists() else 0
    process = setup.start_ready(
        dramatiq_command(setup, processes=processes, threads=threads),
        lambda log: log.count(READY) >= ready + processes,
        "the dramatiq workers to be ready",
    )
    try:
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
            process = setup.start(command)
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
