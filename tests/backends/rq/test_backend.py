"""RQBackend against a real Redis: job shape, JSON payloads, deduplication, scheduling, races."""

from __future__ import annotations

import json
import re
import threading
import uuid
import zlib
from datetime import UTC, datetime, timedelta

import pytest
import redis
from rq import Queue
from rq.job import Job, JobStatus

from chimeway_backends.rq import RQBackend, deliver
from chimeway_core.backend import Enqueued
from chimeway_core.jobs import Backend, job_id_for
from tests.backends.rq.conftest import REDIS_TEST_DB, purge, redis_url

# Fresh ids each run: a job id is global to the Redis database, and a run
# killed before its teardown must not leave jobs the next run would dedupe on.
A, B, C = (uuid.uuid4() for _ in range(3))
QUEUED, SCHEDULED, PENDING = Enqueued.QUEUED, Enqueued.SCHEDULED, Enqueued.PENDING


def scheduled(backend: RQBackend) -> dict[str, float]:
    """The scheduled registry of the backend's queue: job id -> score."""
    registry = backend.queue.scheduled_job_registry
    return {
        job_id: registry.get_scheduled_time(job_id).timestamp() for job_id in registry.get_job_ids()
    }


def finish(backend: RQBackend, delivery_id: uuid.UUID, status: JobStatus) -> None:
    """Pretend a worker took the job off the queue and left it in ``status``, with an expiry."""
    job_id = job_id_for(delivery_id)
    backend.queue.remove(job_id)
    backend.queue.scheduled_job_registry.remove(job_id)
    job = Job.fetch(job_id, connection=backend.connection, serializer=backend.queue.serializer)
    job.set_status(status)
    backend.connection.expire(job.key, 30)


def test_satisfies_the_backend_protocol(redis_conn: redis.Redis, queue_name: str) -> None:
    """RQBackend is a Backend."""
    assert isinstance(RQBackend(redis_conn, queue_name), Backend)


@pytest.mark.parametrize(
    ("arguments", "error", "message"),
    [
        ({"connection": redis_url(REDIS_TEST_DB)}, TypeError, "connection must be a redis.Redis"),
        ({"queue_name": ""}, ValueError, "queue_name must be a non-empty str"),
        ({"job_timeout": 0}, ValueError, "job_timeout must be an int >= 1"),
        ({"job_timeout": 1.5}, TypeError, "job_timeout must be an int, not float"),
        ({"result_ttl": -2}, ValueError, "result_ttl must be an int >= -1"),
        ({"failure_ttl": 1.5}, TypeError, "failure_ttl must be an int, not float"),
    ],
)
def test_a_wrong_argument_is_refused_by_name(
    redis_conn: redis.Redis,
    queue_name: str,
    arguments: dict[str, object],
    error: type[Exception],
    message: str,
) -> None:
    """RQBackend names a wrong connection, queue name, timeout or ttl at construction."""
    given: dict[str, object] = {"connection": redis_conn, "queue_name": queue_name, **arguments}
    with pytest.raises(error, match=re.escape(message)):
        RQBackend(**given)  # type: ignore[arg-type]
    RQBackend(redis_conn, queue_name, result_ttl=-1, failure_ttl=0)  # RQ's own meanings


def test_a_job_runs_deliver_with_the_id_as_json(redis_conn: redis.Redis, queue_name: str) -> None:
    """The job is deliver(str(id)) under job_id_for(id), stored as JSON, never pickle."""
    backend = RQBackend(redis_conn, queue_name, job_timeout=7, result_ttl=11, failure_ttl=13)
    backend.enqueue(A)
    assert [job_id_for(A)] == backend.queue.job_ids
    raw = redis_conn.hget(f"rq:job:{job_id_for(A)}", "data")
    assert isinstance(raw, bytes)
    assert ["chimeway_backends.rq.deliver", None, [str(A)], {}] == json.loads(zlib.decompress(raw))
    job = backend.queue.fetch_job(job_id_for(A))
    assert job is not None
    assert (deliver.__name__, 7, 11, 13) == (
        str(job.func_name).rsplit(".", 1)[1],
        job.timeout,
        job.result_ttl,
        job.failure_ttl,
    )


def test_duplicate_enqueues_make_one_job(redis_conn: redis.Redis, queue_name: str) -> None:
    """Enqueueing a delivery that has a queued or scheduled job makes no second job."""
    backend = RQBackend(redis_conn, queue_name)
    later = datetime.now(UTC) + timedelta(hours=1)
    assert (QUEUED, PENDING) == (backend.enqueue(A), backend.enqueue(A))
    assert [PENDING, QUEUED, QUEUED, PENDING] == backend.enqueue_many([A, B, B, A])
    assert SCHEDULED == backend.enqueue(C, at=later)
    assert PENDING == backend.enqueue(C, at=later + timedelta(hours=1))
    assert [job_id_for(A), job_id_for(B)] == backend.queue.job_ids
    assert [job_id_for(C)] == list(scheduled(backend))
    # Due now: the scheduled job goes on the queue, as RQ's scheduler would put it.
    assert [QUEUED] == backend.enqueue_many([C])
    assert ([job_id_for(A), job_id_for(B), job_id_for(C)], {}) == (
        backend.queue.job_ids,
        scheduled(backend),
    )


def test_a_started_job_is_not_doubled(redis_conn: redis.Redis, queue_name: str) -> None:
    """While a delivery's job runs, enqueueing it again makes no job (the running one decides)."""
    backend = RQBackend(redis_conn, queue_name)
    backend.enqueue(A)
    finish(backend, A, JobStatus.STARTED)
    assert PENDING == backend.enqueue(A)
    assert PENDING == backend.enqueue(A, at=datetime.now(UTC) + timedelta(minutes=1))
    assert ([], {}) == (backend.queue.job_ids, scheduled(backend))


@pytest.mark.parametrize("status", [JobStatus.FINISHED, JobStatus.FAILED, JobStatus.STOPPED])
def test_an_ended_job_is_replaced_and_kept(
    redis_conn: redis.Redis, queue_name: str, status: JobStatus
) -> None:
    """After the job ended, an enqueue writes a fresh queued job and drops the old expiry."""
    backend = RQBackend(redis_conn, queue_name)
    backend.enqueue(A)
    finish(backend, A, status)
    redis_conn.hset(f"rq:job:{job_id_for(A)}", "exc_info", b"left over")
    backend.enqueue(A)
    job = backend.queue.fetch_job(job_id_for(A))
    assert job is not None
    assert ([job_id_for(A)], JobStatus.QUEUED, -1, None) == (
        backend.queue.job_ids,
        job.get_status(),
        redis_conn.ttl(job.key),
        redis_conn.hget(job.key, "exc_info"),
    )


def test_a_hash_without_a_status_is_replaced_whole(
    redis_conn: redis.Redis, queue_name: str
) -> None:
    """A job hash with no status (not RQ's) still loses its fields and expiry to the new job."""
    backend = RQBackend(redis_conn, queue_name)
    key = f"rq:job:{job_id_for(A)}"
    redis_conn.hset(key, "exc_info", b"left over")
    redis_conn.expire(key, 30)
    assert backend.enqueue(A) is QUEUED
    assert (JobStatus.QUEUED.value.encode(), -1, None) == (
        redis_conn.hget(key, "status"),
        redis_conn.ttl(key),
        redis_conn.hget(key, "exc_info"),
    )


def test_a_new_job_deletes_nothing(
    redis_conn: redis.Redis, queue_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where no job hash exists, the enqueue writes the job without a DEL first."""
    deleted: list[object] = []
    original = redis.client.Pipeline.delete

    def spy(self: redis.client.Pipeline, *names: object) -> object:
        deleted.extend(names)
        return original(self, *names)

    monkeypatch.setattr(redis.client.Pipeline, "delete", spy)
    backend = RQBackend(redis_conn, queue_name)
    assert [QUEUED, QUEUED] == backend.enqueue_many([B, C])
    assert [] == deleted
    finish(backend, B, JobStatus.FINISHED)
    assert [QUEUED, PENDING] == backend.enqueue_many([B, C])
    assert [f"rq:job:{job_id_for(B)}"] == deleted


def test_a_scheduled_entry_without_its_job_is_replaced(
    redis_conn: redis.Redis, queue_name: str
) -> None:
    """A scheduled registry entry whose job hash expired does not count as a pending job."""
    backend = RQBackend(redis_conn, queue_name)
    backend.enqueue(A, at=datetime.now(UTC) + timedelta(hours=1))
    redis_conn.delete(f"rq:job:{job_id_for(A)}")
    backend.enqueue(A)
    assert ([job_id_for(A)], {}) == (backend.queue.job_ids, scheduled(backend))


def test_a_large_batch_is_queued_in_several_transactions(
    redis_conn: redis.Redis, queue_name: str
) -> None:
    """enqueue_many of 1,200 deliveries queues each exactly once, in order."""
    ids = [uuid.uuid4() for _ in range(1200)]
    backend = RQBackend(redis_conn, queue_name)
    backend.enqueue_many(ids)
    backend.enqueue_many(ids[::-1])
    assert [job_id_for(i) for i in ids] == backend.queue.job_ids


def test_scheduling_rounds_up_to_the_second(redis_conn: redis.Redis, queue_name: str) -> None:
    """A job for a time is scheduled at that time rounded up, so it never runs early."""
    backend = RQBackend(redis_conn, queue_name)
    at = datetime(2031, 1, 1, 12, 0, 0, 250_000, tzinfo=UTC)
    backend.enqueue(A, at=at)
    assert {job_id_for(A): datetime(2031, 1, 1, 12, 0, 1, tzinfo=UTC).timestamp()} == scheduled(
        backend
    )
    job = backend.queue.fetch_job(job_id_for(A))
    assert job is not None
    assert JobStatus.SCHEDULED == job.get_status()


def test_an_earlier_enqueue_moves_a_scheduled_job(redis_conn: redis.Redis, queue_name: str) -> None:
    """A scheduled job moves earlier for an earlier time (or now), never later."""
    backend = RQBackend(redis_conn, queue_name)
    base = datetime(2031, 1, 1, 12, 0, tzinfo=UTC)
    backend.enqueue(A, at=base + timedelta(hours=2))
    backend.enqueue(A, at=base + timedelta(hours=3))
    assert [(base + timedelta(hours=2)).timestamp()] == list(scheduled(backend).values())
    backend.enqueue(A, at=base + timedelta(hours=1))
    assert [(base + timedelta(hours=1)).timestamp()] == list(scheduled(backend).values())
    assert [QUEUED] == backend.enqueue_many([A])
    assert ([job_id_for(A)], {}) == (backend.queue.job_ids, scheduled(backend))
    job = backend.queue.fetch_job(job_id_for(A))
    assert job is not None
    assert JobStatus.QUEUED == job.get_status()


def test_a_time_in_the_past_queues_now(redis_conn: redis.Redis, queue_name: str) -> None:
    """A run time that has already passed queues the job at once, without the scheduler."""
    backend = RQBackend(redis_conn, queue_name)
    backend.enqueue(A, at=datetime.now(UTC) - timedelta(seconds=5))
    assert ([job_id_for(A)], {}) == (backend.queue.job_ids, scheduled(backend))


def test_bad_arguments_are_refused(redis_conn: redis.Redis, queue_name: str) -> None:
    """A naive run time, an id that is not a UUID and a bad job timeout are refused."""
    backend = RQBackend(redis_conn, queue_name)
    with pytest.raises(ValueError, match="timezone-aware"):
        backend.enqueue(A, at=datetime(2031, 1, 1))
    with pytest.raises(TypeError, match="UUID"):
        backend.enqueue(str(A))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="UUID"):
        backend.enqueue_many([A, str(B)])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="job_timeout"):
        RQBackend(redis_conn, queue_name, job_timeout=0)
    assert [] == backend.queue.job_ids


def test_an_empty_batch_does_nothing(redis_conn: redis.Redis, queue_name: str) -> None:
    """enqueue_many([]) writes nothing."""
    RQBackend(redis_conn, queue_name).enqueue_many([])
    assert [] == list(redis_conn.scan_iter(match=f"*{queue_name}*"))


def test_concurrent_enqueuers_make_one_job(redis_conn: redis.Redis, queue_name: str) -> None:
    """Twenty threads enqueueing the same deliveries at once make one job per delivery.

    Half share one backend (an application's threads), half have their own (other processes).
    """
    ids = [uuid.uuid4() for _ in range(20)]
    gate = threading.Barrier(20)
    shared = RQBackend(redis_conn, queue_name)

    def enqueue(n: int) -> None:
        own = redis.Redis.from_url(redis_url(REDIS_TEST_DB))
        backend = shared if n < 10 else RQBackend(own, queue_name)
        gate.wait()
        if n % 2:
            backend.enqueue_many(ids)
        else:
            for delivery_id in ids:
                backend.enqueue(delivery_id)
        own.close()

    threads = [threading.Thread(target=enqueue, args=(n,)) for n in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    job_ids = Queue(queue_name, connection=redis_conn).job_ids
    assert sorted(job_id_for(i) for i in ids) == sorted(job_ids)


def test_queue_picks_another_queue_and_a_pending_job_stays_on_its_own(
    redis_conn: redis.Redis, queue_name: str
) -> None:
    """queue= writes to that RQ queue; a delivery queued on one gets no second job on another."""
    other = f"{queue_name}-sms"
    backend = RQBackend(redis_conn, queue_name)
    try:
        backend.enqueue_many([A, B], queue=other)
        backend.enqueue(C, at=datetime.now(UTC) + timedelta(hours=1), queue=other)
        backend.enqueue_many([A])  # the default queue: A is pending on the other one
        backend.enqueue(B, queue=queue_name)
        routed = Queue(other, connection=redis_conn)
        assert ([], [job_id_for(A), job_id_for(B)]) == (backend.queue.job_ids, routed.job_ids)
        assert [job_id_for(C)] == routed.scheduled_job_registry.get_job_ids()
        assert other == Job.fetch(job_id_for(A), connection=redis_conn).origin
        # Scheduled elsewhere is not seen from here: a job on the queue asked for.
        backend.enqueue(C)
        assert [job_id_for(C)] == backend.queue.job_ids
        with pytest.raises(ValueError, match="queue must be a non-empty str or None"):
            backend.enqueue(A, queue="")
    finally:
        purge(redis_conn, other)
