"""Fixtures for the Celery backend's tests: real brokers, real workers, PostgreSQL as the ledger.

Each test gets its own queue name (and, on Redis, its own key prefix in DB
14), removed at the end. The ledger is a fresh PostgreSQL database per test
session (the ledger tests' fixtures), truncated after each test. Every wait
is a bounded poll.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import attrs
import pytest
from celery import Celery, signals

from chimeway_backends.celery import TASK_NAME, CeleryBackend
from chimeway_backends.celery.harness import WakeUp, worker_for
from chimeway_core.engine import Chimeway
from chimeway_core.store import SQLStore
from tests.backends._workers import IDLE_TIMEOUT, BrokerSpec, redis_db_url, wait_until
from tests.services import RABBITMQ_URL, require

#: The Redis database the Celery tests use (keys are prefixed per test too).
REDIS_DB = 14
REDIS_BROKER_URL = redis_db_url(REDIS_DB)


@attrs.frozen
class Broker(BrokerSpec):
    """One broker for one test, with its transport options."""

    transport_options: dict[str, Any]

    def app(self, **conf: Any) -> Any:
        """A fresh Celery app on this broker, configured as chimeway recommends."""
        app = Celery(f"chimeway-test-{self.queue}", broker=self.url, set_as_current=False)
        app.conf.update(
            broker_transport_options=dict(self.transport_options),
            broker_connection_retry_on_startup=True,
            worker_prefetch_multiplier=1,
            worker_hijack_root_logger=False,
            worker_enable_remote_control=False,
            task_default_queue=self.queue,
        )
        app.conf.update(conf)
        app.steps["consumer"].add(WakeUp)
        return app


def _redis_cleanup(prefix: str, url: str = REDIS_BROKER_URL) -> None:
    import redis

    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=500))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


def _rabbitmq_cleanup(queue: str) -> None:
    from kombu import Connection

    with Connection(RABBITMQ_URL) as connection:
        channel = connection.default_channel
        channel.queue_delete(queue)


def make_broker(name: str, *, redis_db: int = REDIS_DB) -> Broker:
    """A Broker with a queue name unique to this call (on Redis, in database ``redis_db``)."""
    queue = f"chimeway-test-{secrets.token_hex(4)}"
    if name == "redis":
        url = redis_db_url(redis_db)
        return Broker(name, url, queue, {"global_keyprefix": f"{queue}:", "fanout_prefix": True})
    return Broker(name, RABBITMQ_URL, queue, {"confirm_publish": True})


def cleanup_broker(broker: Broker) -> None:
    """Remove every trace of ``broker``'s queue."""
    if broker.name == "redis":
        _redis_cleanup(f"{broker.queue}:", broker.url)
    else:
        _rabbitmq_cleanup(broker.queue)


@pytest.fixture(params=["redis", "rabbitmq"])
def broker(request: pytest.FixtureRequest) -> Iterator[Broker]:
    """Each broker in turn, with a queue of this test's own; cleaned up after."""
    require(request.param)
    spec = make_broker(request.param)
    yield spec
    cleanup_broker(spec)


class JobWatch:
    """Counts the chimeway jobs published and finished in this process, and their failures.

    Fed by Celery's signals, so it sees the test's enqueues and the in-process
    worker's runs and retries alike.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.published = 0
        self.finished = 0
        self.retries = 0
        self._failures: list[BaseException] = []

    def connect(self) -> None:
        """Start listening to Celery's signals."""
        signals.after_task_publish.connect(self._on_publish, weak=False)
        signals.task_postrun.connect(self._on_postrun, weak=False)
        signals.task_failure.connect(self._on_failure, weak=False)
        signals.task_retry.connect(self._on_retry, weak=False)

    def disconnect(self) -> None:
        """Stop listening."""
        signals.after_task_publish.disconnect(self._on_publish)
        signals.task_postrun.disconnect(self._on_postrun)
        signals.task_failure.disconnect(self._on_failure)
        signals.task_retry.disconnect(self._on_retry)

    def _on_publish(self, sender: object = None, **_: object) -> None:
        if sender == TASK_NAME:
            with self._lock:
                self.published += 1

    def _on_postrun(self, sender: Any = None, **_: object) -> None:
        if getattr(sender, "name", None) == TASK_NAME:
            with self._lock:
                self.finished += 1

    def _on_failure(
        self, sender: Any = None, exception: BaseException | None = None, **_: object
    ) -> None:
        if getattr(sender, "name", None) == TASK_NAME and exception is not None:
            with self._lock:
                self._failures.append(exception)

    def _on_retry(self, sender: Any = None, **_: object) -> None:
        if getattr(sender, "name", None) == TASK_NAME:
            with self._lock:
                self.retries += 1

    def pending(self) -> int:
        """Jobs published and not yet finished."""
        with self._lock:
            return self.published - self.finished

    def take_failures(self) -> list[BaseException]:
        """The failures since the last call, oldest first."""
        with self._lock:
            failures, self._failures = self._failures, []
            return failures


def run_watched_until_idle(
    engine: Chimeway, watch: JobWatch, *, timeout: float = IDLE_TIMEOUT
) -> list[BaseException]:
    """Wait until no job is pending and no delivery is live, three polls in a row."""
    quiet = 0

    def idle() -> bool:
        nonlocal quiet
        busy = watch.pending() > 0 or engine.store.oldest_non_terminal() is not None
        quiet = 0 if busy else quiet + 1
        return quiet >= 3

    wait_until(idle, timeout=timeout, what="the worker to be idle")
    return watch.take_failures()


@attrs.define
class InProcessCelery:
    """Builds engines on a CeleryBackend and runs an embedded worker for them."""

    broker: Broker
    store: SQLStore
    stack: ExitStack
    watch: JobWatch
    backend_options: dict[str, Any] = attrs.Factory(dict)
    """Keyword arguments for the next CeleryBackend (``rescue_interval`` is ``None`` unless set)."""

    def make_engine(self, channels: dict[str, Any], **options: Any) -> Chimeway:
        """An engine on a fresh app and backend, with a solo worker started for it."""
        app = self.broker.app()
        backend = CeleryBackend(
            app, queue=self.broker.queue, **{"rescue_interval": None, **self.backend_options}
        )
        engine = Chimeway(self.store, backend, channels, **options)
        backend.bind(engine)
        self.stack.enter_context(worker_for(app, self.broker.queue))
        return engine


@pytest.fixture
def job_watch() -> Iterator[JobWatch]:
    """A JobWatch listening for this test."""
    watch = JobWatch()
    watch.connect()
    yield watch
    watch.disconnect()


@pytest.fixture
def in_process(
    broker: Broker,
    pg_store: SQLStore,
    job_watch: JobWatch,
) -> Iterator[InProcessCelery]:
    """Engines on a CeleryBackend over ``broker`` with embedded workers, stopped after."""
    with ExitStack() as stack:
        yield InProcessCelery(broker, pg_store, stack, job_watch)
