"""deliver() and the chimeway worker classes, run in this process on a real Redis and SQLite."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path
from uuid import UUID

import pytest
import redis
import rq
from rq.job import JobStatus
from rq.results import Result
from rq.serializers import JSONSerializer

from chimeway_backends.memory import MemoryBackend
from chimeway_backends.rq import (
    APP_ENV,
    RESCUE_INTERVAL_ENV,
    ChimewayJSONSerializer,
    ChimewaySimpleWorker,
    DeliveryRetry,
    RQBackend,
    current_engine,
    deliver,
    run_worker,
)
from chimeway_core import DeliveryStatus, Outcome, RetryPolicy, Sent, TemporaryFailure
from chimeway_core.channels.base import DeliveryGuarantee
from chimeway_core.engine import Chimeway
from chimeway_core.errors import EngineNotFoundError, InvalidJobError
from chimeway_core.jobs import job_id_for
from chimeway_core.loading import load_engine
from chimeway_core.records import Delivery
from chimeway_core.store import SQLStore
from chimeway_core.testing import FakeChannel

RETRY = RetryPolicy(max_attempts=3, initial_delay=0.2, backoff_factor=1.0, jitter=0.0)

MakeEngine = Callable[..., Chimeway]


@pytest.fixture
def make_engine(sqlite_store: SQLStore, redis_conn: redis.Redis, queue_name: str) -> MakeEngine:
    """An engine on SQLite and an RQBackend on the test queue, with the given script."""

    def make(script: Sequence[object] = (Sent(),), **options: object) -> Chimeway:
        backend = RQBackend(redis_conn, queue_name, job_timeout=5)
        channel = FakeChannel(script, timeout=2.0)
        return Chimeway(
            sqlite_store,
            backend,
            {"sms": channel},
            retry=RETRY,
            lease_margin=3.0,
            **options,  # type: ignore[arg-type]
        )

    return make


def burst(engine: Chimeway) -> None:
    """Run one burst of an in-process SimpleWorker on the engine's queue."""
    run_worker(engine, burst=True, worker_class=rq.SimpleWorker, rescue_interval=60)


def drain(engine: Chimeway, delivery_id: UUID, timeout: float = 20.0) -> None:
    """Burst workers until the delivery is terminal."""
    deadline = time.monotonic() + timeout
    while not engine.get(delivery_id).delivery.is_terminal:
        assert time.monotonic() < deadline, engine.explain(delivery_id)
        burst(engine)
        time.sleep(0.2)


def calls(engine: Chimeway) -> int:
    """How many times the engine's channel was called."""
    channel = engine.channels["sms"]
    assert isinstance(channel, FakeChannel)
    return len(channel.calls)


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        ((), {}),
        ((str(uuid.uuid4()), "extra"), {}),
        ((str(uuid.uuid4()),), {"delivery_id": "x"}),
        (("not-a-uuid",), {}),
        ((uuid.uuid4().hex,), {}),
        ((12345,), {}),
        (([str(uuid.uuid4())],), {}),
    ],
)
def test_bad_job_arguments_are_rejected_before_anything_runs(
    args: tuple[object, ...], kwargs: dict[str, object]
) -> None:
    """Anything but one canonical id string raises InvalidJobError without looking for an engine."""
    with pytest.raises(InvalidJobError):
        deliver(*args, **kwargs)


def test_without_an_engine_the_job_says_how_to_set_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker process with no engine and no CHIMEWAY_APP fails naming the variable."""
    monkeypatch.delenv(APP_ENV, raising=False)
    with pytest.raises(EngineNotFoundError, match=APP_ENV):
        deliver(str(uuid.uuid4()))


def test_load_engine_names_a_target_that_is_neither_engine_nor_path() -> None:
    """load_engine(5) is a TypeError naming what it takes, not an AttributeError."""
    with pytest.raises(TypeError, match="'module:attribute' str or None"):
        load_engine(5)  # type: ignore[arg-type]


def test_the_app_path_names_an_engine_or_a_factory(
    make_engine: MakeEngine, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """module:attribute finds an engine, a dotted attribute, or a zero-argument factory."""
    engine = make_engine()
    (tmp_path / "chimeway_app_probe.py").write_text(
        "ENGINE = None\nclass Holder:\n    engine = None\ndef factory():\n    return ENGINE\n"
        "not_an_engine = 42\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    import chimeway_app_probe  # type: ignore[import-not-found]

    monkeypatch.setattr(chimeway_app_probe, "ENGINE", engine)
    monkeypatch.setattr(chimeway_app_probe.Holder, "engine", engine)
    for path in ("chimeway_app_probe:ENGINE", "chimeway_app_probe:Holder.engine"):
        assert engine is load_engine(path)
    assert engine is load_engine("chimeway_app_probe:factory")
    for bad, problem in [
        ("chimeway_app_probe", "module:attribute"),
        ("chimeway_app_probe:missing", "no attribute"),
        ("chimeway_app_probe:not_an_engine", "int, not a Chimeway"),
    ]:
        with pytest.raises(EngineNotFoundError, match=problem):
            load_engine(bad)
    with pytest.raises(EngineNotFoundError, match="no module named"):
        load_engine("no_such_module_anywhere:engine")
    monkeypatch.setenv(APP_ENV, "chimeway_app_probe:factory")
    assert engine is current_engine() is current_engine()


def test_success_finishes_the_job_with_a_short_result(make_engine: MakeEngine) -> None:
    """A sent delivery: one call, the job finished, its result says ack."""
    engine = make_engine()
    delivery = engine.notify("sms", "+15550100")
    burst(engine)
    backend = engine.backend
    assert isinstance(backend, RQBackend)
    job = backend.queue.fetch_job(job_id_for(delivery.id))
    assert job is not None
    assert (DeliveryStatus.SUCCEEDED, 1, JobStatus.FINISHED) == (
        engine.get(delivery.id).delivery.status,
        calls(engine),
        job.get_status(),
    )
    assert "ack: " == str(job.return_value())[:5]


def test_a_retry_reschedules_the_same_job_not_before_run_at(make_engine: MakeEngine) -> None:
    """RETRY: the same job id is scheduled at or after the delivery's next run time.

    RQ's result of the retried run says why and when, where RQ's own JSON
    serializer would store "Unserializable return value".
    """
    engine = make_engine([TemporaryFailure("busy"), Sent()])
    delivery = engine.notify("sms", "+15550100")
    burst(engine)
    after = engine.get(delivery.id).delivery
    backend = engine.backend
    assert isinstance(backend, RQBackend)
    registry = backend.queue.scheduled_job_registry
    assert [job_id_for(delivery.id)] == registry.get_job_ids()
    assert registry.get_scheduled_time(job_id_for(delivery.id)) >= after.scheduled_at
    assert (DeliveryStatus.FAILED, [], 1) == (after.status, backend.queue.job_ids, calls(engine))
    job = backend.queue.fetch_job(job_id_for(delivery.id))
    result = None if job is None else job.latest_result()
    assert result is not None
    retried = str(result.return_value)
    assert (Result.Type.RETRIED, "retry: ", f", at {after.scheduled_at.isoformat()}") == (
        result.type,
        retried[:7],
        retried[retried.rindex(", at ") :],
    )
    drain(engine, delivery.id)
    assert (DeliveryStatus.SUCCEEDED, 2) == (engine.get(delivery.id).delivery.status, calls(engine))


def test_chimeways_json_serializer_writes_what_rqs_writes() -> None:
    """Either serializer reads the other's jobs: they differ only on a DeliveryRetry."""
    job_data = {"a": [1, "b"], "c": None}
    assert JSONSerializer.dumps(job_data) == ChimewayJSONSerializer.dumps(job_data)
    retry = DeliveryRetry(max=1, interval=3, summary="retry: busy")
    assert b'"retry: busy"' == ChimewayJSONSerializer.dumps(retry)
    with pytest.raises(TypeError, match="not JSON serializable"):
        ChimewayJSONSerializer.dumps(object())


def test_an_unhandled_outcome_fails_the_job_and_schedules_the_next_run(
    make_engine: MakeEngine,
) -> None:
    """An unhandled outcome fails the job into the FailedJobRegistry (shape shown) and reruns it."""
    engine = make_engine([{"undocumented": "shape"}])
    delivery = engine.notify("sms", "+15550100")
    burst(engine)
    backend = engine.backend
    assert isinstance(backend, RQBackend)
    job_id = job_id_for(delivery.id)
    assert [job_id] == backend.queue.failed_job_registry.get_job_ids()
    assert [job_id] == backend.queue.scheduled_job_registry.get_job_ids()
    job = backend.queue.fetch_job(job_id)
    assert job is not None
    result = job.latest_result()
    assert result is not None
    assert "outcome='failed' error_class='unknown_classification'" in str(result.exc_string)
    assert "attempt=1/3" in str(result.exc_string)
    drain(engine, delivery.id)
    after = engine.get(delivery.id)
    assert ((DeliveryStatus.CANCELLED, "retries_exhausted"), 3) == (
        (after.delivery.status, after.delivery.reason),
        len(after.attempts),
    )


def test_the_worker_rescues_a_delivery_whose_job_was_lost(
    make_engine: MakeEngine, redis_conn: redis.Redis
) -> None:
    """A due delivery with no job is requeued by the worker's rescuer and sent in the same burst."""
    engine = make_engine(requeue_after=0.0)
    delivery = engine.notify("sms", "+15550100")
    backend = engine.backend
    assert isinstance(backend, RQBackend)
    backend.queue.empty()  # type: ignore[no-untyped-call]  # rq leaves it untyped
    assert [] == backend.queue.job_ids
    time.sleep(0.01)
    burst(engine)
    assert (DeliveryStatus.SUCCEEDED, 1) == (engine.get(delivery.id).delivery.status, calls(engine))


def test_the_worker_reads_json_only_and_wakes_up_to_rescue(
    make_engine: MakeEngine, redis_conn: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """Asked for pickle, the worker still deserializes JSON; its blocking wait fits the rescue."""
    engine = make_engine()
    with caplog.at_level(logging.WARNING, logger="chimeway_backends.rq"):
        worker = ChimewaySimpleWorker(
            [engine.backend.queue_name],  # type: ignore[attr-defined]
            connection=redis_conn,
            engine=engine,
            rescue_interval=2.5,
            serializer="pickle",
        )
    assert (ChimewayJSONSerializer, 3) == (worker.serializer, worker.dequeue_timeout)
    assert any("JSON only" in record.message for record in caplog.records)


def test_timeouts_that_break_the_lease_are_reported(
    sqlite_store: SQLStore,
    redis_conn: redis.Redis,
    queue_name: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A job timeout longer than a channel's lease, or shorter than its timeout, is warned about."""
    backend = RQBackend(redis_conn, queue_name, job_timeout=40)
    channels = {
        "fast": FakeChannel(timeout=5.0),
        "slow": FakeChannel(timeout=50.0),
        "ok": FakeChannel(timeout=30.0),
    }
    engine = Chimeway(sqlite_store, backend, channels, lease_margin=30.0)
    with caplog.at_level(logging.WARNING, logger="chimeway_backends.rq"):
        ChimewaySimpleWorker([queue_name], connection=redis_conn, engine=engine)
    warned = sorted(
        str(record.args[0]) for record in caplog.records if isinstance(record.args, tuple)
    )
    assert ["fast", "slow"] == warned


def test_a_worker_needs_an_rq_engine_and_a_chimeway_class(
    sqlite_store: SQLStore, redis_conn: redis.Redis, queue_name: str
) -> None:
    """An engine on another backend, or a worker class that is not chimeway's, is refused."""
    memory_engine = Chimeway(sqlite_store, MemoryBackend(), {"sms": FakeChannel()})
    with pytest.raises(TypeError, match="RQBackend"):
        run_worker(memory_engine, redis_conn, [queue_name], burst=True)
    with pytest.raises(TypeError, match="RQBackend"):
        ChimewaySimpleWorker([queue_name], connection=redis_conn, engine=memory_engine)
    engine = Chimeway(sqlite_store, RQBackend(redis_conn, queue_name), {"sms": FakeChannel()})
    with pytest.raises(TypeError, match="not a chimeway worker class"):
        run_worker(engine, burst=True, worker_class=rq.worker.HerokuWorker)
    with pytest.raises(ValueError, match="rescue_interval"):
        run_worker(engine, burst=True, rescue_interval=0)


@pytest.mark.parametrize(
    ("given", "environment", "error", "message"),
    [
        (float("inf"), None, ValueError, "rescue_interval must be a finite number"),
        ("30", None, TypeError, "rescue_interval must be a number of seconds"),
        (None, "soon", ValueError, "CHIMEWAY_RESCUE_INTERVAL='soon' must be a finite number"),
        (None, "inf", ValueError, "CHIMEWAY_RESCUE_INTERVAL='inf' must be a finite number"),
        (None, "-5", ValueError, "CHIMEWAY_RESCUE_INTERVAL='-5' must be a finite number"),
    ],
)
def test_a_rescue_interval_that_is_no_finite_positive_time_is_refused(
    sqlite_store: SQLStore,
    redis_conn: redis.Redis,
    queue_name: str,
    monkeypatch: pytest.MonkeyPatch,
    given: object,
    environment: str | None,
    error: type[Exception],
    message: str,
) -> None:
    """An infinite interval used to pass and crash in RQ's dequeue; a bad variable is named."""
    engine = Chimeway(sqlite_store, RQBackend(redis_conn, queue_name), {"sms": FakeChannel()})
    if environment is not None:
        monkeypatch.setenv(RESCUE_INTERVAL_ENV, environment)
    with pytest.raises(error, match=message):
        ChimewaySimpleWorker(
            [queue_name],
            connection=redis_conn,
            engine=engine,
            rescue_interval=given,  # type: ignore[arg-type]
        )


def test_the_command_listener_reads_briefly_so_a_worker_stops_at_once(
    make_engine: MakeEngine, queue_name: str, redis_conn: redis.Redis
) -> None:
    """RQ's listener blocked 60 s per read; unsubscribe() then waited for it now and then.

    That made a burst (or a warm shutdown) hang up to a minute: this test's
    neighbours timed out on it. The chimeway worker reads for at most 0.5 s.
    """
    worker = ChimewaySimpleWorker([queue_name], connection=redis_conn, engine=make_engine())
    worker.subscribe()
    try:
        thread = worker.pubsub_thread
        assert thread is not None
        assert thread.is_alive()
        assert ChimewaySimpleWorker.command_listen_seconds == thread.sleep_time <= 1.0
    finally:
        worker.unsubscribe()
    thread.join(timeout=5)
    assert not thread.is_alive()


def test_a_deferral_waits_without_an_attempt(make_engine: MakeEngine) -> None:
    """A delivery not yet due defers: the job is rescheduled, no attempt is consumed."""
    engine = make_engine()
    delivery = engine.notify(
        "sms", "+15550100", scheduled_at=engine.clock.now() + timedelta(seconds=1)
    )
    backend = engine.backend
    assert isinstance(backend, RQBackend)
    backend.queue.enqueue_many(
        [
            backend.queue.prepare_data(
                deliver, args=[str(delivery.id)], job_id=f"{job_id_for(delivery.id)}-early"
            )
        ]
    )
    burst(engine)
    assert (0, 0) == (engine.get(delivery.id).delivery.attempt_count, calls(engine))
    drain(engine, delivery.id)
    assert (DeliveryStatus.SUCCEEDED, 1) == (engine.get(delivery.id).delivery.status, calls(engine))


@pytest.mark.parametrize(
    ("guarantee", "status", "reason", "outcomes"),
    [
        (
            DeliveryGuarantee.AT_LEAST_ONCE,
            DeliveryStatus.SUCCEEDED,
            None,
            [Outcome.UNKNOWN, Outcome.SUCCEEDED],
        ),
        (
            DeliveryGuarantee.AT_MOST_ONCE,
            DeliveryStatus.CANCELLED,
            "outcome_unknown",
            [Outcome.UNKNOWN],
        ),
    ],
)
def test_a_job_cut_off_by_the_rq_timeout_is_rescued_as_unknown(
    sqlite_store: SQLStore,
    redis_conn: redis.Redis,
    queue_name: str,
    guarantee: DeliveryGuarantee,
    status: DeliveryStatus,
    reason: str | None,
    outcomes: list[Outcome],
) -> None:
    """RQ's job timeout mid-call is a lost worker, not a channel failure: rescued as unknown."""

    def hang_once(delivery: Delivery) -> object:
        if delivery.attempt_count == 1:
            time.sleep(5)
        return Sent()

    channel = FakeChannel(hang_once, guarantee=guarantee, timeout=0.5)
    backend = RQBackend(redis_conn, queue_name, job_timeout=1)
    engine = Chimeway(sqlite_store, backend, {"sms": channel}, retry=RETRY, lease_margin=1.0)
    delivery = engine.notify("sms", "+15550100")
    burst(engine)
    job_id = job_id_for(delivery.id)
    assert [job_id] == backend.queue.failed_job_registry.get_job_ids()
    job = backend.queue.fetch_job(job_id)
    assert job is not None
    result = job.latest_result()
    assert result is not None
    assert "JobTimeLimitExceeded" in str(result.exc_string)
    assert [None] == [a.outcome for a in engine.get(delivery.id).attempts]
    time.sleep(0.6)  # the 1.5 s lease runs out
    drain(engine, delivery.id)
    after = engine.get(delivery.id)
    assert (status, reason, outcomes) == (
        after.delivery.status,
        after.delivery.reason,
        [a.outcome for a in after.attempts],
    )
