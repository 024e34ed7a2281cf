"""Scheduled RQ jobs keep moving without RQ's scheduler, and the rescuer says what it did.

RQ's scheduler moves a due scheduled job onto its queue; one scheduler per
queue, elected by a lock that outlives a killed scheduler by a minute, and
RQ's workers try to take it over only in their maintenance. These tests
kill it, or run workers without it, and check that retries still run, that
a scheduled job whose hash no one can read is replaced, and that
``rescue()`` counts as requeued only what it put on a queue.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import UUID

import pytest
import redis
from rq.job import JobStatus
from rq.scheduler import RQScheduler

from chimeway_backends.rq import ChimewaySimpleWorker, RQBackend, run_worker
from chimeway_backends.rq.backend import OVERDUE_AFTER
from chimeway_core.jobs import job_id_for
from tests.backends.rq.test_workers import ROOT, App, make_app, wait_until

__all__ = ["make_app"]  # a fixture, imported for pytest

CHIMEWAY_CLI = str(Path(sys.executable).with_name("chimeway"))
#: How long a retry due after the scheduler's death may take to run: well short of
#: the 61 s the dead scheduler's lock lives, which is what it took before.
RETRY_DEADLINE = 30.0


def burst(app: App, *, with_scheduler: bool) -> None:
    """One in-process burst of a simple worker: its rescue pass, then every queued job."""
    run_worker(
        app.engine,
        burst=True,
        with_scheduler=with_scheduler,
        worker_class=ChimewaySimpleWorker,
        logging_level="WARNING",
    )


def overdue(backend: RQBackend, delivery_id: UUID, seconds: float) -> None:
    """Make the delivery's scheduled job ``seconds`` past due, as a dead scheduler leaves it."""
    registry = backend.queue.scheduled_job_registry.key
    when = int(time.time() - seconds)
    assert 0 == backend.connection.zadd(registry, {job_id_for(delivery_id): when}, xx=True)


def retrying(app: App, recipient: str) -> UUID:
    """A delivery whose first attempt failed; its retry is a scheduled RQ job."""
    (delivery_id,) = app.notify_many([recipient])
    burst(app, with_scheduler=False)
    assert 1 == len(app.engine.get(delivery_id).attempts)
    assert [job_id_for(delivery_id)] == app.backend.queue.scheduled_job_registry.get_job_ids()
    return delivery_id


def test_release_overdue_moves_only_stuck_chimeway_jobs(
    make_app: Callable[..., App], redis_conn: redis.Redis
) -> None:
    """Overdue chimeway jobs go on the queue; recent, future, running and foreign ones stay."""
    app = make_app()
    backend = app.backend
    stuck = retrying(app, "mix-1")
    recent, running = uuid.uuid4(), uuid.uuid4()
    future = uuid.uuid4()
    for delivery_id in (recent, running, future):
        backend.enqueue(delivery_id, at=datetime.now(UTC) + timedelta(hours=1))
    overdue(backend, stuck, OVERDUE_AFTER + 5)
    overdue(backend, recent, 1)
    overdue(backend, running, OVERDUE_AFTER + 5)
    backend.connection.hset(f"rq:job:{job_id_for(running)}", "status", JobStatus.STARTED.value)
    registry = backend.queue.scheduled_job_registry
    redis_conn.zadd(registry.key, {"someone-elses-job": int(time.time()) - 60})
    assert 1 == backend.release_overdue()
    assert [job_id_for(stuck)] == backend.queue.job_ids
    assert {job_id_for(i) for i in (recent, future, running)} | {"someone-elses-job"} == set(
        registry.get_job_ids()
    )
    assert 0 == backend.release_overdue()


def test_rescue_queues_a_due_scheduled_job_and_counts_a_queued_one_as_pending(
    make_app: Callable[..., App],
) -> None:
    """No scheduler runs: a rescue pass puts the due retry on the queue, and says so."""
    app = make_app(APP_REQUEUE_AFTER="0.5")
    retried = retrying(app, "mix-1")
    overdue(app.backend, retried, 1)
    (waiting,) = app.notify_many(["mix-0"])  # its job is on the queue already
    time.sleep(0.6)  # both untouched for requeue_after
    report = app.engine.rescue()
    assert (1, 1) == (report.requeued, report.pending)
    # What it counts as requeued is on the queue, where a worker without a scheduler runs it.
    assert ([job_id_for(waiting), job_id_for(retried)], []) == (
        app.backend.queue.job_ids,
        app.backend.queue.scheduled_job_registry.get_job_ids(),
    )
    burst(app, with_scheduler=False)
    assert {retried: ("succeeded", None, 2), waiting: ("succeeded", None, 1)} == app.rows()


def test_a_scheduled_job_with_a_poisoned_hash_is_delivered_after_a_rescue_pass(
    make_app: Callable[..., App], redis_conn: redis.Redis
) -> None:
    """A scheduled job whose hash holds bytes no one can decode is rewritten, then runs."""
    app = make_app(APP_REQUEUE_AFTER="0.5")
    retried = retrying(app, "mix-1")
    key = f"rq:job:{job_id_for(retried)}"
    redis_conn.hset(key, "exc_info", b"\xff\xfe not UTF-8 \xc3\x28")
    overdue(app.backend, retried, 1)
    time.sleep(0.6)  # untouched for requeue_after
    assert 1 == app.engine.rescue().requeued
    assert (b"queued", None) == (redis_conn.hget(key, "status"), redis_conn.hget(key, "exc_info"))
    burst(app, with_scheduler=False)
    assert ("succeeded", None, 2) == app.rows()[retried]


def test_an_enqueue_for_later_does_not_hold_back_an_overdue_job(
    make_app: Callable[..., App],
) -> None:
    """A job its scheduler left overdue goes on the queue, even when asked for a later time."""
    app = make_app()
    retried = retrying(app, "mix-1")
    overdue(app.backend, retried, 1)
    later = datetime.now(UTC) + timedelta(hours=1)
    app.backend.enqueue(retried, at=later)
    assert [job_id_for(retried)] == app.backend.queue.job_ids


def test_maintenance_interval_defaults_to_a_minute_and_is_checked(
    make_app: Callable[..., App],
) -> None:
    """RQ's maintenance runs every 60 s in a chimeway worker unless told; 0 is refused."""
    app = make_app()
    queues = [app.queue]
    default = ChimewaySimpleWorker(queues, engine=app.engine, connection=app.backend.connection)
    told = ChimewaySimpleWorker(
        queues, engine=app.engine, connection=app.backend.connection, maintenance_interval=15
    )
    assert (60, 15) == (default.maintenance_interval, told.maintenance_interval)
    with pytest.raises(ValueError, match="maintenance_interval"):
        ChimewaySimpleWorker(
            queues, engine=app.engine, connection=app.backend.connection, maintenance_interval=0
        )


@pytest.fixture
def chimeway_workers(tmp_path: Path) -> Iterator[Callable[[App], subprocess.Popen[bytes]]]:
    """Start ``chimeway worker --backend rq`` processes; SIGTERM (then SIGKILL) at teardown."""
    started: list[subprocess.Popen[bytes]] = []

    def start(app: App) -> subprocess.Popen[bytes]:
        command = [CHIMEWAY_CLI, "worker", "--backend", "rq", "--app", app.env()["CHIMEWAY_APP"]]
        command += ["--tick-interval", "1", "--log-level", "info"]
        with (tmp_path / f"worker-{len(started)}.log").open("wb") as log:
            process = subprocess.Popen(
                command, env=app.env(), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT
            )
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in started:
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _parent(pid: int) -> int:
    """The parent process id of ``pid`` (Linux)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rpartition(")")[2].split()[1])


def _lock_holder(app: App) -> RQScheduler | None:
    """The scheduler holding the queue's lock, if its record is there."""
    connection = app.backend.connection
    name = connection.get(RQScheduler.get_locking_key(app.queue))
    if name is None:
        return None
    try:
        return RQScheduler.fetch(name.decode(), connection)
    except Exception:  # not registered yet: ask again
        return None


@pytest.mark.slow
def test_a_retry_runs_soon_after_the_scheduler_holding_the_lock_is_killed(
    make_app: Callable[..., App],
    chimeway_workers: Callable[[App], subprocess.Popen[bytes]],
) -> None:
    """SIGKILL the worker holding RQ's scheduler lock and its scheduler; restart it at once.

    The dead scheduler's lock lives on for 61 s and RQ's workers try to take it
    over only in their maintenance; a 429 retry due a second after must still
    run, within the lease (3 s) + the rescue interval (1 s) + a few seconds.
    """
    app = make_app(APP_LEASE_MARGIN="2.0")
    workers = [chimeway_workers(app), chimeway_workers(app)]
    holder: list[RQScheduler] = []

    def elected() -> bool:
        found = _lock_holder(app)
        if found is None or not found.pid or not Path(f"/proc/{found.pid}").exists():
            return False
        holder.append(found)
        return True

    wait_until(elected, timeout=60, what="a worker's scheduler to take the lock")
    scheduler_pid = holder[-1].pid
    (victim,) = [w for w in workers if w.pid == _parent(scheduler_pid)]
    os.kill(victim.pid, signal.SIGKILL)
    os.kill(scheduler_pid, signal.SIGKILL)
    victim.wait(timeout=30)
    chimeway_workers(app)  # the supervisor restarts it at once
    dead = app.backend.connection.get(RQScheduler.get_locking_key(app.queue))
    assert holder[-1].name.encode() == dead  # the dead scheduler still holds the lock

    (delivery_id,) = app.notify_many(["later-1"])
    wait_until(
        lambda: app.rows()[delivery_id][0] == "succeeded",
        timeout=RETRY_DEADLINE,
        what="the retry after the 429 to run",
    )
    first, second = app.engine.get(delivery_id).attempts
    assert first.finished_at is not None
    assert second.started_at >= first.finished_at + timedelta(seconds=1)  # Retry-After honoured


@pytest.mark.slow
def test_a_survivor_takes_the_scheduler_lock_over_on_its_rescue_pass(
    make_app: Callable[..., App],
    chimeway_workers: Callable[[App], subprocess.Popen[bytes]],
) -> None:
    """Once a killed scheduler's lock is gone, a live worker runs the scheduler within seconds.

    RQ would wait for its next maintenance (a minute in a chimeway worker, ten in RQ's own).
    """
    app = make_app()
    workers = [chimeway_workers(app), chimeway_workers(app)]
    holders: list[RQScheduler] = []

    def elected() -> bool:
        found = _lock_holder(app)
        alive = found is not None and found.pid and Path(f"/proc/{found.pid}").exists()
        if found is None or not alive or found.name in {h.name for h in holders}:
            return False
        holders.append(found)
        return True

    wait_until(elected, timeout=60, what="a worker's scheduler to take the lock")
    (victim,) = [w for w in workers if w.pid == _parent(holders[0].pid)]
    os.kill(victim.pid, signal.SIGKILL)
    os.kill(holders[0].pid, signal.SIGKILL)
    victim.wait(timeout=30)
    app.backend.connection.delete(RQScheduler.get_locking_key(app.queue))  # as its expiry does
    wait_until(elected, timeout=RETRY_DEADLINE, what="a surviving worker to take the lock over")
    (survivor,) = [w for w in workers if w is not victim]
    assert survivor.pid == _parent(holders[1].pid)
