"""Running real ``celery worker`` processes on the scripted app of ``worker_app.py``.

What does not depend on Celery is :mod:`tests.backends._workers`'s.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import attrs
from sqlalchemy import Engine

from chimeway_backends.celery import CeleryBackend
from chimeway_core import RetryPolicy
from chimeway_core.engine import Chimeway
from chimeway_core.store import SQLStore
from chimeway_core.testing import FakeChannel
from tests.backends._workers import APP_MODULE, MAX_ATTEMPTS, ScriptedSetup, copy_app, stop
from tests.backends.celery.conftest import Broker

APP_SOURCE = Path(__file__).with_name("worker_app.py")


@attrs.define
class WorkerSetup(ScriptedSetup):
    """The scripted app's setup on a Celery broker, with its transport options."""

    transport_options: dict[str, Any] = attrs.Factory(dict)

    def backend_env(self) -> dict[str, str]:
        """The broker's transport options, for ``worker_app.py``."""
        return {"CHIMEWAY_TEST_TRANSPORT": json.dumps(self.transport_options)}

    def producer(self, engine: Engine) -> Chimeway:
        """An engine in the test process that notifies onto the worker's queue.

        It never performs (its channel is a stand-in); its retry policy gives
        new deliveries the worker app's ``max_attempts``.
        """
        broker = self.broker
        assert isinstance(broker, Broker)
        app = broker.app(broker_transport_options=self.transport_options)
        backend = CeleryBackend(app, queue=broker.queue, rescue_interval=None)
        retry = RetryPolicy(max_attempts=MAX_ATTEMPTS)
        return Chimeway(SQLStore(engine), backend, {"scripted": FakeChannel()}, retry=retry)


def make_setup(broker: Broker, workdir: Path, database_url: str, **options: Any) -> WorkerSetup:
    """Copy the app module into ``workdir`` and describe the worker to run there."""
    copy_app(APP_SOURCE, workdir)
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
        *(sys.executable, "-m", "celery", "-A", APP_MODULE, "worker"),
        *("--pool", pool, "--concurrency", str(concurrency), "--queues", setup.broker.queue),
        *("--prefetch-multiplier", "1", "--loglevel", "INFO"),
        *("--without-gossip", "--without-mingle", "--without-heartbeat"),
        *("--hostname", f"{setup.broker.queue}@%h"),
    ]
    process = setup.start_ready(
        command, lambda log: " ready." in log, "the celery worker to be ready", **env
    )
    try:
        yield process
    finally:
        stop(process)
