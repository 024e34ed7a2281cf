"""A chimeway RQ worker runs chimeway's deliver and nothing else a job on its queue names.

Each foreign job names :mod:`tests.backends.rq.foreign` (or os.mkdir), whose import and
whose function each leave a file behind: neither file may exist after the workers
ran, every foreign job must end in the ``FailedJobRegistry`` after one run,
and a real delivery queued beside them is still sent.
"""

from __future__ import annotations

import logging
import uuid
from pathlib import Path

import pytest
import redis
import rq
from rq import Callback, Retry
from rq.job import JobStatus

from chimeway_backends.rq import (
    DELIVER,
    ChimewayJob,
    ChimewaySimpleWorker,
    ForeignJobError,
    RQBackend,
    deliver,
    run_worker,
)
from chimeway_core import DeliveryStatus
from chimeway_core.engine import Chimeway
from chimeway_core.store import SQLStore
from chimeway_core.testing import FakeChannel

FOREIGN = "tests.backends.rq.foreign.touch"


@pytest.mark.parametrize("worker_class", [rq.SimpleWorker, rq.Worker])
def test_jobs_naming_other_code_fail_without_importing_it(
    worker_class: type[rq.worker.BaseWorker],
    sqlite_store: SQLStore,
    redis_conn: redis.Redis,
    queue_name: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Another function, a callback or an instance method: failed once, nothing imported or run."""
    imported, called = tmp_path / "imported", tmp_path / "called"
    monkeypatch.setenv("CHIMEWAY_TEST_FOREIGN_IMPORTED", str(imported))
    monkeypatch.setenv("CHIMEWAY_TEST_FOREIGN_CALLED", str(called))
    backend = RQBackend(redis_conn, queue_name, job_timeout=5)
    engine = Chimeway(sqlite_store, backend, {"sms": FakeChannel(timeout=2.0)}, lease_margin=3.0)
    real = engine.notify("sms", "+15550100")
    queue, unknown = backend.queue, str(uuid.uuid4())
    foreign = [
        queue.enqueue_call(FOREIGN),
        queue.enqueue_call(FOREIGN, retry=Retry(max=3)),
        queue.enqueue_call(deliver, args=(unknown,), on_success=Callback(FOREIGN)),
        queue.enqueue_call(deliver, args=(unknown,), on_failure=Callback(FOREIGN)),
        queue.enqueue_call(deliver, args=(unknown,), on_stopped=Callback(FOREIGN)),
        queue.enqueue_call("os.mkdir", args=(str(called),)),
        queue.enqueue_call("os.mkdir", args=(str(called),)),
    ]
    # JSON carries no object, but a string whose method a job could name.
    redis_conn.hset(foreign[-1].key, "data", f'["{DELIVER}", "{called}", [], {{}}]')
    with caplog.at_level(logging.ERROR, logger="chimeway_backends.rq"):
        run_worker(engine, burst=True, worker_class=worker_class, rescue_interval=60)
    assert (False, False) == (imported.exists(), called.exists())
    assert DeliveryStatus.SUCCEEDED == engine.get(real.id).delivery.status
    assert ({job.id for job in foreign}, 0) == (
        set(queue.failed_job_registry.get_job_ids()),
        queue.count + queue.scheduled_job_registry.count,
    )
    for job in foreign:
        result = job.latest_result()
        assert (JobStatus.FAILED, True) == (
            job.get_status(),
            result is not None and "ForeignJobError" in str(result.exc_string),
        )
    if worker_class is rq.SimpleWorker:  # a work horse logs in its own process
        refused = [r.message for r in caplog.records if r.message.startswith("refused RQ job")]
        assert len(foreign) == len(refused), refused


def test_a_chimeway_job_resolves_deliver_only() -> None:
    """ChimewayJob.func is deliver for a chimeway job and raises ForeignJobError otherwise."""
    job = ChimewayJob.create(deliver, args=[str(uuid.uuid4())], connection=redis.Redis())
    assert ("chimeway_backends.rq.deliver", deliver) == (DELIVER, job.func)
    job.func_name = "os.system"
    with pytest.raises(ForeignJobError, match=r"'os\.system', not chimeway_backends\.rq\.deliver"):
        _ = job.func
    assert None is job.retries_left


def test_the_worker_reads_jobs_as_chimeway_jobs_whatever_it_is_asked(
    sqlite_store: SQLStore,
    redis_conn: redis.Redis,
    queue_name: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Asked for another job class, a chimeway worker warns and still uses ChimewayJob."""
    engine = Chimeway(sqlite_store, RQBackend(redis_conn, queue_name), {"sms": FakeChannel()})
    with caplog.at_level(logging.WARNING, logger="chimeway_backends.rq"):
        default = ChimewaySimpleWorker([queue_name], connection=redis_conn, engine=engine)
        other = ChimewaySimpleWorker(
            [queue_name], connection=redis_conn, engine=engine, job_class=rq.job.Job
        )
        custom = ChimewaySimpleWorker(
            [queue_name], connection=redis_conn, engine=engine, job_class=_Custom
        )
    assert (ChimewayJob, ChimewayJob, ChimewayJob) == (
        default.job_class,
        other.job_class,
        custom.job_class,
    )
    assert all(queue.job_class is ChimewayJob for queue in custom.queues)
    assert 1 == sum("chimeway jobs only" in record.message for record in caplog.records)


class _Custom(rq.job.Job):
    """A job class that is not a chimeway job."""
