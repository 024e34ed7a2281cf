"""MemoryBackend under concurrent enqueues, and MemoryWorker in real time."""

from __future__ import annotations

import math
import threading
import time
import uuid
from datetime import timedelta

import pytest

from chimeway_backends.memory import MemoryBackend, MemoryWorker
from chimeway_core.clock import SystemClock
from chimeway_core.jobs import JobKind
from tests.backends.memory.fakes import ScriptedPerformer, Step


def wait_for(condition: object, timeout: float = 10.0) -> None:
    """Poll ``condition`` until true, failing after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_concurrent_enqueues_give_exact_counts() -> None:
    """Threads enqueuing shared and own ids at once make exactly one job per id."""
    backend = MemoryBackend()
    shared = [uuid.uuid4() for _ in range(50)]
    own = [[uuid.uuid4() for _ in range(50)] for _ in range(8)]
    start = threading.Barrier(8)

    def enqueue(mine: list[uuid.UUID]) -> None:
        start.wait()
        for shared_id, own_id in zip(shared, mine, strict=True):
            backend.enqueue(shared_id)
            backend.enqueue_many([own_id, shared_id])

    threads = [threading.Thread(target=enqueue, args=(mine,)) for mine in own]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    expected_ids = set(shared) | {i for mine in own for i in mine}
    pending = [job.delivery_id for job in backend.pending()]
    assert (450, 450, 8 * 50 * 3 - 450) == (
        len(pending),
        backend.enqueued,
        backend.deduplicated,
    )
    assert expected_ids == set(pending)


def test_worker_runs_every_job_once_with_concurrency_two() -> None:
    """Two worker threads run every job (and each scripted retry) exactly once."""
    clock = SystemClock()
    backend = MemoryBackend(clock)
    ids = [uuid.uuid4() for _ in range(200)]
    retrying = ids[:20]
    scripts: dict[uuid.UUID, list[Step]] = {
        i: [(JobKind.RETRY, timedelta(milliseconds=20))] for i in retrying
    }
    performer = ScriptedPerformer(clock, scripts)
    performer.before_return = lambda _: time.sleep(0.001)
    backend.enqueue_many(ids)
    worker = MemoryWorker(backend, performer, concurrency=2, poll_interval=0.01)
    worker.start()
    try:
        wait_for(lambda: backend.stats.acks == 200)
    finally:
        assert worker.stop(timeout=5)
    called = performer.called_ids
    expected = {i: 2 if i in retrying else 1 for i in ids}
    assert expected == {i: called.count(i) for i in ids}
    assert ([], []) == (backend.pending(), backend.failures)
    assert 220 == backend.stats.jobs_run


def test_worker_stops_gracefully() -> None:
    """stop() lets running jobs finish and takes no new one: nothing lost, nothing twice."""
    backend = MemoryBackend()
    ids = [uuid.uuid4() for _ in range(10)]
    release = threading.Event()
    performer = ScriptedPerformer(backend.clock)
    performer.before_return = lambda _: release.wait(5)
    backend.enqueue_many(ids)
    worker = MemoryWorker(backend, performer, concurrency=2, poll_interval=0.01)
    worker.start()
    wait_for(lambda: len(performer.calls) == 2)
    stopped: list[bool] = []
    stopper = threading.Thread(target=lambda: stopped.append(worker.stop(timeout=5)))
    stopper.start()
    time.sleep(0.05)
    assert worker.running  # still finishing the two running jobs
    release.set()
    stopper.join()
    done = performer.called_ids
    left = [job.delivery_id for job in backend.pending()]
    assert ([True], 2, 8, False) == (stopped, len(done), len(left), worker.running)
    assert sorted(ids) == sorted(done + left)
    assert 2 == backend.stats.acks


def test_worker_ticks_and_survives_a_failing_tick() -> None:
    """The tick callback runs on its interval, and an exception in it does not stop it."""
    ticks: list[int] = []

    def tick() -> None:
        ticks.append(1)
        if len(ticks) == 1:
            raise RuntimeError("rescuer hiccup")

    backend = MemoryBackend()
    worker = MemoryWorker(backend, ScriptedPerformer(backend.clock), tick=tick, tick_interval=0.01)
    with worker:
        wait_for(lambda: len(ticks) >= 3)
    assert not worker.running


def test_run_forever_returns_after_stop() -> None:
    """run_forever blocks until stop() is called from another thread."""
    backend = MemoryBackend()
    performer = ScriptedPerformer(backend.clock)
    worker = MemoryWorker(backend, performer, poll_interval=0.01)
    runner = threading.Thread(target=worker.run_forever)
    runner.start()
    backend.enqueue(uuid.UUID(int=1))
    wait_for(lambda: backend.stats.acks == 1)
    worker.stop(timeout=5)
    runner.join(5)
    assert (False, False) == (runner.is_alive(), worker.running)


def test_run_until_idle_waits_for_real_time() -> None:
    """With a real clock, run_until_idle sleeps until a delayed job is due."""
    clock = SystemClock()
    backend = MemoryBackend(clock)
    begin = clock.now()
    backend.enqueue(uuid.UUID(int=1), at=begin + timedelta(milliseconds=50))
    performer = ScriptedPerformer(clock)
    backend.run_until_idle(performer)
    assert performer.calls[0][1] >= begin + timedelta(milliseconds=50)


@pytest.mark.parametrize(
    ("arguments", "error", "message"),
    [
        ({"poll_interval": math.inf}, ValueError, "poll_interval must be a finite number"),
        ({"poll_interval": 0}, ValueError, "poll_interval must be a finite number of seconds > 0"),
        ({"tick_interval": math.nan}, ValueError, "tick_interval must be a finite number"),
        ({"tick_interval": "30"}, TypeError, "tick_interval must be a number of seconds"),
        ({"concurrency": 2.0}, TypeError, "concurrency must be an int"),
        ({"concurrency": 0}, ValueError, "concurrency must be an int >= 1"),
    ],
)
def test_a_worker_with_an_unusable_interval_is_refused_when_built(
    arguments: dict[str, object], error: type[Exception], message: str
) -> None:
    """An infinite poll interval used to pass and crash the worker thread's first wait."""
    backend = MemoryBackend()
    with pytest.raises(error, match=message):
        MemoryWorker(backend, ScriptedPerformer(backend.clock), **arguments)  # type: ignore[arg-type]


def test_a_worker_stuck_on_its_queue_does_not_hold_up_another_queues_worker() -> None:
    """Two workers on one backend, one per queue: while every "slow" job hangs, "fast" ones run."""
    backend = MemoryBackend(SystemClock())
    performer = ScriptedPerformer(SystemClock())
    slow, fast = [uuid.uuid4() for _ in range(3)], [uuid.uuid4() for _ in range(50)]
    release = threading.Event()
    performer.before_return = lambda delivery_id: delivery_id in slow and release.wait(10)
    backend.enqueue_many(slow, queue="slow")
    backend.enqueue_many(fast)
    with (
        MemoryWorker(backend, performer, concurrency=2, queues=["slow"]),
        MemoryWorker(backend, performer, concurrency=2, queues=["default"]),
    ):
        wait_for(lambda: 2 == len(set(performer.called_ids) & set(slow)))  # both hang
        wait_for(lambda: set(fast) <= set(performer.called_ids))
        assert 2 == len(set(performer.called_ids) & set(slow))
        release.set()
        wait_for(backend.idle)
    assert sorted(slow + fast) == sorted(performer.called_ids)
