"""The request's trace reaches real RQ, Celery and Dramatiq worker processes.

The test process notifies inside a request span (its own SDK provider, in
memory); workers of :mod:`tests.telemetry.traced_app` export their spans to
a file. What links the two is only the trace context stored with each
delivery in the ledger.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from uuid import UUID

import pytest
import redis
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from sqlalchemy import Engine, text

from chimeway_backends.rq import RQBackend
from chimeway_backends.rq.harness import purge
from chimeway_core.backend import Backend
from chimeway_core.engine import Chimeway
from chimeway_core.store import SQLStore
from chimeway_core.telemetry import OpenTelemetrySubscriber, Telemetry
from tests.backends.rq.conftest import REDIS_TEST_DB, redis_url
from tests.services import RABBITMQ_URL, require
from tests.telemetry.traced_app import build, span_record

if TYPE_CHECKING:
    from tests.backends.dramatiq.conftest import Broker

pytestmark = pytest.mark.extras

ROOT = Path(__file__).resolve().parents[2]
CANARIES = ("CANARY-PAYLOAD-91c2", "canary-recipient-91c2", "CANARY-META-91c2")
TERMINAL = {"succeeded", "cancelled", "suppressed"}


class Request:
    """The web side: an engine whose telemetry exports to memory, and a request span."""

    def __init__(self, backend: Backend, db_url: str) -> None:
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider()
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        telemetry = Telemetry()
        telemetry.subscribe(OpenTelemetrySubscriber(tracer_provider=self.provider))
        self.engine: Chimeway = build(backend, db_url, telemetry)

    def notify_in_a_request(self) -> tuple[str, dict[str, UUID]]:
        """Notify two deliveries (one retried) in one request span: (trace id, ids by name)."""
        tracer = self.provider.get_tracer("web")
        with tracer.start_as_current_span("POST /orders") as request:
            ids = {
                "once": self.engine.notify(
                    "traced", f"ok-{CANARIES[1]}", {"x": CANARIES[0]}, metadata={"m": CANARIES[2]}
                ).id,
                "retried": self.engine.notify("traced", "retry-1", {"x": CANARIES[0]}).id,
            }
        return f"{request.get_span_context().trace_id:032x}", ids

    def spans(self) -> list[dict[str, Any]]:
        """The web side's finished spans, as the workers' file holds theirs."""
        return [span_record(span) for span in self.exporter.get_finished_spans()]


def _statuses(db: Engine, ids: dict[str, UUID]) -> set[str]:
    with db.connect() as conn:
        rows = conn.execute(text("SELECT id, status FROM chimeway_deliveries")).all()
    wanted = set(ids.values())
    return {status for delivery_id, status in rows if UUID(str(delivery_id)) in wanted}


def _wait_terminal(db: Engine, ids: dict[str, UUID], step: Callable[[], None]) -> None:
    deadline = time.monotonic() + 120
    while not _statuses(db, ids) <= TERMINAL:
        assert time.monotonic() < deadline, f"still live: {_statuses(db, ids)}"
        step()


def _check_one_trace_per_request(
    request: Request, trace_id: str, ids: dict[str, UUID], spans_file: Path
) -> None:
    web = request.spans()
    # A relay hands over the rows of many requests and is in none's trace: a
    # worker's relay of rows still in the outbox (a busy machine) is not checked.
    worker = [
        span
        for span in map(json.loads, spans_file.read_text().splitlines())
        if span["name"] != "chimeway.outbox.relayed"
    ]
    notify = {
        span["attributes"]["messaging.message.id"]: span
        for span in web
        if span["name"] == "chimeway.notify"
    }
    performs: dict[str, list[dict[str, Any]]] = {}
    for span in worker:
        if span["name"] == "chimeway.perform":
            performs.setdefault(span["attributes"]["messaging.message.id"], []).append(span)
    # The request's trace id reaches every worker span, each job a child of its notify span.
    assert {trace_id} == {span["trace_id"] for span in worker}
    assert {os.getpid()}.isdisjoint({span["pid"] for span in worker})
    for name, attempts in (("once", 1), ("retried", 2)):
        jobs = sorted(performs[str(ids[name])], key=lambda s: s["attributes"]["chimeway.attempt"])
        assert [notify[str(ids[name])]["span_id"]] * attempts == [s["parent_id"] for s in jobs]
        assert list(range(1, attempts + 1)) == [
            s["events"][0]["attributes"]["chimeway.attempt"] for s in jobs
        ]
        assert "succeeded" == jobs[-1]["attributes"]["chimeway.status"]
    assert (
        "failed"
        == min(performs[str(ids["retried"])], key=lambda s: s["attributes"]["chimeway.attempt"])[
            "attributes"
        ]["chimeway.status"]
    )
    # The channel's own client span nests under the job's span, in the worker.
    perform_ids = {s["span_id"] for jobs in performs.values() for s in jobs}
    calls = [span for span in worker if span["name"] == "provider call"]
    assert 3 == len(calls)
    assert perform_ids >= {span["parent_id"] for span in calls}
    everything = spans_file.read_text() + json.dumps(web)
    assert [] == [canary for canary in CANARIES if canary in everything]


def _perform_spans(spans_file: Path) -> int:
    """How many job spans the workers exported so far."""
    if not spans_file.exists():
        return 0
    return spans_file.read_text().count('"name": "chimeway.perform"')


def _environment(spans_file: Path, database: str, **extra: str) -> dict[str, str]:
    """What every traced worker reads: the repository on its path, the ledger, the spans file."""
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)]),
        "TRACED_DB": database,
        "TRACED_SPANS": str(spans_file),
        **extra,
    }


def _traced_by_a_worker(
    request: Request,
    command: list[str],
    env: dict[str, str],
    tmp_path: Path,
    ledger: Engine,
) -> None:
    """Run the long-lived worker ``command``, notify in a request, check the trace.

    The worker is stopped at the end (SIGTERM, then SIGKILL to its process
    group): it runs in a session of its own.
    """
    from tests.backends._workers import stop

    spans_file = Path(env["TRACED_SPANS"])
    log = tmp_path / "worker.log"
    with log.open("ab") as out:
        worker = subprocess.Popen(
            command,
            env=env,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        trace_id, ids = request.notify_in_a_request()

        def watch() -> None:
            assert worker.poll() is None, log.read_text()[-3000:]
            time.sleep(0.2)

        _wait_terminal(ledger, ids, watch)
        # The worker exports a job's span as the job ends, after its status is written.
        deadline = time.monotonic() + 60
        while _perform_spans(spans_file) < 3:
            assert time.monotonic() < deadline, "the worker's spans never arrived"
            time.sleep(0.2)
        _check_one_trace_per_request(request, trace_id, ids, spans_file)
    finally:
        stop(worker)
        request.engine.store.engine.dispose()


@pytest.fixture
def otel_queue() -> str:
    """A queue name of this test's own."""
    return f"otel-{secrets.token_hex(6)}"


@pytest.mark.redis
def test_an_rq_worker_continues_the_requests_trace(
    tmp_path: Path, postgres_database: str, pg_store: SQLStore, otel_queue: str
) -> None:
    """Forking RQ workers: one trace per delivery, every attempt in it, from the request on."""
    require("redis")
    url = redis_url(REDIS_TEST_DB)
    conn = redis.Redis.from_url(url)
    spans_file = tmp_path / "spans.jsonl"
    request = Request(RQBackend(conn, otel_queue), postgres_database)
    env = _environment(
        spans_file,
        postgres_database,
        CHIMEWAY_APP="tests.telemetry.traced_app:engine",
        TRACED_REDIS=url,
        TRACED_QUEUE=otel_queue,
    )
    command = [str(Path(sys.executable).with_name("rq")), "worker", "--url", url]
    command += ["-w", "chimeway_backends.rq.ChimewayWorker", "--with-scheduler"]
    command += ["--serializer", "rq.serializers.JSONSerializer", "--burst", otel_queue]

    def burst() -> None:
        run = subprocess.run(  # noqa: PLW1510 - the return code is asserted
            command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=120
        )
        assert 0 == run.returncode, run.stderr[-3000:]
        time.sleep(0.3)

    try:
        trace_id, ids = request.notify_in_a_request()
        _wait_terminal(pg_store.engine, ids, burst)
        _check_one_trace_per_request(request, trace_id, ids, spans_file)
    finally:
        purge(conn, otel_queue)
        conn.close()
        request.engine.store.engine.dispose()


@pytest.fixture
def rabbitmq_queue(otel_queue: str) -> Iterator[str]:
    """The test's queue on RabbitMQ, deleted afterwards."""
    require("rabbitmq")
    yield otel_queue
    from kombu import Connection

    with Connection(RABBITMQ_URL) as connection:
        connection.default_channel.queue_delete(otel_queue)


@pytest.mark.rabbitmq
def test_a_celery_worker_continues_the_requests_trace(
    tmp_path: Path, postgres_database: str, pg_store: SQLStore, rabbitmq_queue: str
) -> None:
    """A prefork Celery worker on RabbitMQ: the same one trace per delivery."""
    from celery import Celery

    from chimeway_backends.celery import CeleryBackend

    app = Celery("otel-producer", broker=RABBITMQ_URL, set_as_current=False)
    app.conf.update(task_default_queue=rabbitmq_queue, broker_connection_retry_on_startup=True)
    request = Request(
        CeleryBackend(app, queue=rabbitmq_queue, rescue_interval=None), postgres_database
    )
    env = _environment(
        tmp_path / "spans.jsonl",
        postgres_database,
        TRACED_BROKER=RABBITMQ_URL,
        TRACED_QUEUE=rabbitmq_queue,
    )
    command = [sys.executable, "-m", "celery", "-A", "tests.telemetry.traced_celery_app"]
    command += ["worker", "--pool", "prefork", "--concurrency", "2", "--queues", rabbitmq_queue]
    command += ["--without-gossip", "--without-mingle", "--without-heartbeat", "--loglevel", "INFO"]
    command += ["--hostname", f"{rabbitmq_queue}@%h"]
    try:
        _traced_by_a_worker(request, command, env, tmp_path, pg_store.engine)
    finally:
        app.pool.force_close_all()
        app.close()


@pytest.fixture
def dramatiq_broker() -> Iterator[Broker]:
    """A Dramatiq broker spec on RabbitMQ with a queue ``otel-dq-*`` of this test's own."""
    require("rabbitmq")
    from tests.backends.dramatiq.conftest import Broker, cleanup_broker
    from tests.services import RABBITMQ_PIKA_URL

    spec = Broker("rabbitmq", RABBITMQ_PIKA_URL, f"otel-dq-{secrets.token_hex(6)}")
    yield spec
    cleanup_broker(spec)  # the queue, its delay queue and its dead-letter queue


@pytest.mark.rabbitmq
def test_a_dramatiq_worker_continues_the_requests_trace(
    tmp_path: Path, postgres_database: str, pg_store: SQLStore, dramatiq_broker: Broker
) -> None:
    """A ``dramatiq`` worker process on RabbitMQ: the same one trace per delivery."""
    from chimeway_backends.dramatiq import DramatiqBackend

    queue = dramatiq_broker.queue
    producer = dramatiq_broker.make()
    backend = DramatiqBackend(producer, queue=queue, rescue_interval=None)
    request = Request(backend, postgres_database)
    env = _environment(
        tmp_path / "spans.jsonl",
        postgres_database,
        TRACED_BROKER=dramatiq_broker.url,
        TRACED_QUEUE=queue,
        dramatiq_queue_prefetch="1",
    )
    command = [sys.executable, "-m", "dramatiq", "tests.telemetry.traced_dramatiq_app:broker"]
    command += ["--processes", "1", "--threads", "2", "--queues", queue]
    try:
        _traced_by_a_worker(request, command, env, tmp_path, pg_store.engine)
    finally:
        producer.close()
