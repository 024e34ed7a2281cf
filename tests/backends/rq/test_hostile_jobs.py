"""A chimeway RQ worker acts on no job hash field chimeway did not write.

RQ 3 acts on fields anyone with the Redis URL can add to a job hash:
``webhooks`` (HTTP requests with the writer's method and headers, the
failure one carrying the traceback), RQ's retries and repeats (the job runs
again), ``result_ttl`` / ``failure_ttl`` / ``timeout`` / ``ttl`` (how long
hashes live, how long a job may run), rate limits, dependencies, ``meta``,
groups. Each field is added to a real delivery's job hash and to a failing
``deliver`` job; an HTTP server records any request. Nothing may be
requested, every delivery is sent once, every job runs once, and the
lifetimes are the backend's.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import redis
import rq
from rq.job import JobStatus
from rq.serializers import JSONSerializer

from chimeway_backends.rq import ChimewayJob, ForeignJobError, RQBackend, deliver, run_worker
from chimeway_core import DeliveryStatus
from chimeway_core.engine import Chimeway
from chimeway_core.jobs import job_id_for
from chimeway_core.store import SQLStore
from chimeway_core.testing import FakeChannel

FOREIGN = "tests.backends.rq.foreign.touch"
RESULT_TTL, FAILURE_TTL, JOB_TIMEOUT = 300, 600, 5


class _Recorder(BaseHTTPRequestHandler):
    """Records every request's method, path and headers; answers 200."""

    requests: list[tuple[str, str, dict[str, str]]]

    def _record(self) -> None:
        self.requests.append((self.command, self.path, dict(self.headers)))
        self.send_response(200)
        self.end_headers()

    do_GET = do_POST = _record  # noqa: N815 - http.server's names

    def log_message(self, format: str, *args: object) -> None:
        """Quiet."""


@pytest.fixture
def recorder() -> Iterator[tuple[str, list[tuple[str, str, dict[str, str]]]]]:
    """A local HTTP server's base URL and the list of requests it received."""
    requests: list[tuple[str, str, dict[str, str]]] = []
    handler = type("Handler", (_Recorder,), {"requests": requests})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", requests
    server.shutdown()
    server.server_close()


def _webhooks(base: str) -> str:
    """RQ 3's webhooks field: a POST for each end, with a cloud metadata header."""
    return json.dumps(
        [
            {
                "url": f"{base}/{status}",
                "job_status": status,
                "method": "POST",
                "headers": {"Metadata-Flavor": "Google"},
                "timeout": 2,
            }
            for status in ("finished", "failed")
        ]
    )


def _hostile_fields(base: str) -> dict[str, str]:
    """Every job hash field RQ 3 acts on that chimeway never writes, with a value RQ accepts."""
    return {
        "webhooks": _webhooks(base),
        "repeats_left": "2",
        "repeat_intervals": "[0]",
        "retries_left": "3",
        "retry_intervals": "[0]",
        "enqueue_at_front_on_retry": "1",
        "result_ttl": "-1",
        "failure_ttl": "-1",
        "timeout": "-1",
        "ttl": "1",
        "meta": '{"hostile": true}',
        "dependency_id": "no-such-job",
        "dependency_ids": '["no-such-job"]',
        "allow_dependency_failures": "1",
        "enqueue_at_front": "1",
        "rate_limit_key": "hostile",
        "rate_limit_concurrency": "1",
        "group_id": "hostile-group",
        "success_callback_timeout": "1",
        "failure_callback_timeout": "1",
        "stopped_callback_timeout": "1",
    }


def _engine(store: SQLStore, connection: redis.Redis, queue: str) -> Chimeway:
    backend = RQBackend(
        connection,
        queue,
        job_timeout=JOB_TIMEOUT,
        result_ttl=RESULT_TTL,
        failure_ttl=FAILURE_TTL,
    )
    return Chimeway(store, backend, {"sms": FakeChannel(timeout=2.0)}, lease_margin=4.0)


@pytest.mark.parametrize("worker_class", [rq.Worker, rq.SimpleWorker])
def test_no_job_makes_a_worker_send_a_webhook(
    worker_class: type[rq.worker.BaseWorker],
    sqlite_store: SQLStore,
    redis_conn: redis.Redis,
    queue_name: str,
    recorder: tuple[str, list[tuple[str, str, dict[str, str]]]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A foreign job, a deliver job (ending well or failing), a real delivery: no request."""
    base, requests = recorder
    engine = _engine(sqlite_store, redis_conn, queue_name)
    queue = engine.backend.queue  # type: ignore[attr-defined]
    real = engine.notify("sms", "+15550100")
    jobs = [
        queue.enqueue_call(FOREIGN),
        queue.enqueue_call(deliver, args=(str(uuid.uuid4()),)),
        queue.enqueue_call(deliver, args=("not-a-delivery-id",)),
    ]
    keys = [job.key for job in jobs] + [ChimewayJob.key_for(job_id_for(real.id))]
    assert all(redis_conn.exists(key) for key in keys)
    for key in keys:
        redis_conn.hset(key, "webhooks", _webhooks(base))
    with caplog.at_level(logging.WARNING, logger="chimeway_backends.rq"):
        run_worker(engine, burst=True, worker_class=worker_class, rescue_interval=60)
    history = engine.get(real.id)
    assert (DeliveryStatus.SUCCEEDED, 1) == (history.delivery.status, len(history.attempts))
    assert [] == requests
    ignoring = [r.message for r in caplog.records if "ignoring field(s)" in r.message]
    assert len(keys) == len(ignoring), ignoring
    assert all(message.endswith("chimeway does not write: webhooks") for message in ignoring)


@pytest.mark.parametrize("worker_class", [rq.Worker, rq.SimpleWorker])
def test_fields_chimeway_does_not_write_change_nothing(
    worker_class: type[rq.worker.BaseWorker],
    sqlite_store: SQLStore,
    redis_conn: redis.Redis,
    queue_name: str,
    recorder: tuple[str, list[tuple[str, str, dict[str, str]]]],
) -> None:
    """Each field on a delivery's hash and on a failing job's: one run each, chimeway's TTLs."""
    base, requests = recorder
    engine = _engine(sqlite_store, redis_conn, queue_name)
    queue = engine.backend.queue  # type: ignore[attr-defined]
    fields = _hostile_fields(base)
    delivered, failing = {}, {}
    # As the backend writes its jobs: only the hostile field differs.
    chimeway_options = {
        "timeout": JOB_TIMEOUT,
        "result_ttl": RESULT_TTL,
        "failure_ttl": FAILURE_TTL,
    }
    for name, value in fields.items():
        delivery = engine.notify("sms", f"+1555{len(delivered):07d}")
        delivered[name] = (delivery.id, job_id_for(delivery.id))
        failing[name] = queue.enqueue_call(
            deliver, args=(f"not-a-delivery-{name}",), **chimeway_options
        ).id
        for job_id in (delivered[name][1], failing[name]):
            key = ChimewayJob.key_for(job_id)
            assert redis_conn.exists(key)
            redis_conn.hset(key, name, value)
    worker_name = f"hostile-{uuid.uuid4().hex}"
    run_worker(engine, burst=True, worker_class=worker_class, rescue_interval=60, name=worker_name)
    now = time.time()
    acted: dict[str, list[str]] = {}
    for name in fields:
        delivery_id, job_id = delivered[name]
        history = engine.get(delivery_id)
        job = rq.job.Job.fetch(job_id, connection=redis_conn, serializer=JSONSerializer)
        bad = job.fetch(failing[name], connection=redis_conn, serializer=JSONSerializer)
        ttl = redis_conn.ttl(job.key)
        failed_until = queue.failed_job_registry.connection.zscore(
            queue.failed_job_registry.key, bad.id
        )
        checks = {
            "delivery sent once": (history.delivery.status, len(history.attempts))
            == (DeliveryStatus.SUCCEEDED, 1),
            "delivery job ran once": len(job.results()) == 1,
            "delivery job finished": job.get_status() == JobStatus.FINISHED,
            "delivery hash kept result_ttl": 0 < ttl <= RESULT_TTL,
            "delivery job timeout": redis_conn.hget(job.key, "timeout")
            == str(JOB_TIMEOUT).encode(),
            "failing job ran once": len(bad.results()) == 1,
            "failing job failed": bad.get_status() == JobStatus.FAILED,
            "failed for failure_ttl": failed_until is not None
            and now < failed_until <= now + FAILURE_TTL + 1,
        }
        wrong = [check for check, held in checks.items() if not held]
        if wrong:
            acted[name] = wrong
    assert {} == acted
    # RQ's retries of a failed job leave no result: count runs on the worker's hash.
    counts = redis_conn.hmget(
        f"rq:worker:{worker_name}", "successful_job_count", "failed_job_count"
    )
    assert [str(len(fields)).encode()] * 2 == counts
    assert (0, 0) == (queue.count, queue.scheduled_job_registry.count)
    assert [] == requests


def test_a_job_hash_of_any_bytes_reads_without_raising(redis_conn: redis.Redis) -> None:
    """Every field ChimewayJob reads, not UTF-8 or not parseable: defaults, and a refusal."""
    job_id = str(uuid.uuid4())
    key = ChimewayJob.key_for(job_id)
    garbage = b"\xff\xfe\x00 not text"
    fields = [
        "created_at", "enqueued_at", "started_at", "ended_at", "last_heartbeat", "origin",
        "worker_name", "description", "status", "number_of_retries", "timeout", "result_ttl",
        "failure_ttl", "exc_info", "result", "retries_left", "retry_intervals", "webhooks",
        "meta", "dependency_ids", "repeat_intervals",
    ]  # fmt: skip
    redis_conn.hset(key, mapping={"data": garbage, **dict.fromkeys(fields, garbage)})
    redis_conn.hset(key, garbage, garbage)  # a field whose name is not text either
    try:
        with pytest.raises(UnicodeDecodeError):
            rq.job.Job.fetch(job_id, connection=redis_conn, serializer=JSONSerializer)
        job = ChimewayJob.fetch(job_id, connection=redis_conn, serializer=JSONSerializer)
        assert ("", None, None, JobStatus.CREATED, None, [], {}) == (
            job.origin,
            job.description,
            job.timeout,
            job.get_status(refresh=False),
            job.retries_left,
            job.webhooks,
            job.meta,
        )
        assert JobStatus.CREATED == job.get_status()  # read again from Redis
        with pytest.raises(ForeignJobError, match="its data is not a JSON call"):
            _ = job.func
    finally:
        redis_conn.delete(key)
