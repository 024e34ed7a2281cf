"""The in-memory queue itself: :class:`MemoryBackend` and the values it reports.

See :mod:`chimeway_core.memory` for the theory of operation.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import assert_never
from uuid import UUID

import attrs

from chimeway_core._checks import queue_or
from chimeway_core.backend import Backend, Enqueued
from chimeway_core.clock import Clock, SystemClock, VirtualClock, ensure_aware
from chimeway_core.errors import ChimewayError, UnhandledOutcomeError
from chimeway_core.jobs import JobKind, JobResult, Performer, job_id_for

__all__ = [
    "DEFAULT_ERROR_RETRY_DELAY",
    "DEFAULT_QUEUE",
    "JobFailure",
    "MaxJobsExceededError",
    "MemoryBackend",
    "QueuedJob",
    "RunStats",
]

_log = logging.getLogger(__name__)

#: How long a job whose ``perform`` crashed waits before it runs again.
DEFAULT_ERROR_RETRY_DELAY = timedelta(seconds=1)
#: The queue of a job enqueued without ``queue=``.
DEFAULT_QUEUE = "default"


@attrs.frozen(kw_only=True)
class QueuedJob:
    """A pending job: queued (due) or scheduled for later."""

    delivery_id: UUID
    job_id: str
    run_at: datetime
    enqueued_at: datetime
    queue: str = DEFAULT_QUEUE


@attrs.frozen(kw_only=True)
class JobFailure:
    """A job whose ``perform`` raised; ``error`` is the exception itself."""

    delivery_id: UUID
    error: BaseException = attrs.field(eq=False)
    at: datetime


@attrs.frozen(kw_only=True)
class RunStats:
    """Counts of jobs run and of how each ended (a failure is an exception)."""

    jobs_run: int = 0
    acks: int = 0
    retries: int = 0
    defers: int = 0
    failures: int = 0

    def __sub__(self, other: RunStats) -> RunStats:
        """The counts accumulated since ``other`` was taken."""
        return RunStats(
            jobs_run=self.jobs_run - other.jobs_run,
            acks=self.acks - other.acks,
            retries=self.retries - other.retries,
            defers=self.defers - other.defers,
            failures=self.failures - other.failures,
        )


class MaxJobsExceededError(ChimewayError):
    """``run_until_idle`` ran ``max_jobs`` jobs and work was still pending.

    Usually a performer that retries or defers forever. ``pending`` is what
    was left, earliest first.
    """

    def __init__(self, jobs_run: int, pending: Sequence[QueuedJob]) -> None:
        self.jobs_run = jobs_run
        self.pending = tuple(pending)
        shown = ", ".join(f"{job.delivery_id} at {job.run_at.isoformat()}" for job in pending[:5])
        more = f" and {len(pending) - 5} more" if len(pending) > 5 else ""
        super().__init__(
            f"run_until_idle stopped after max_jobs={jobs_run} jobs with "
            f"{len(pending)} still pending: {shown}{more}"
        )


@attrs.define
class _Job:
    run_at: datetime
    enqueued_at: datetime
    seq: int
    queue: str


class MemoryBackend(Backend):
    """A thread-safe in-process queue of delivery ids: a :class:`~chimeway_core.backend.Backend`.

    ``clock`` is what enqueue times and due-ness are read from (the wall clock
    by default). ``error_retry_delay`` is how long a job whose ``perform``
    raised something other than ``UnhandledOutcomeError`` waits before it runs
    again.
    """

    name = "memory"
    default_queue = DEFAULT_QUEUE

    def __init__(
        self,
        clock: Clock | None = None,
        *,
        error_retry_delay: timedelta = DEFAULT_ERROR_RETRY_DELAY,
    ) -> None:
        if clock is not None and not isinstance(clock, Clock):
            raise TypeError(
                f"clock must have now() (chimeway_core.Clock), not {type(clock).__name__}"
            )
        if not isinstance(error_retry_delay, timedelta):
            raise TypeError(
                f"error_retry_delay must be a timedelta, not {type(error_retry_delay).__name__}"
            )
        if error_retry_delay < timedelta(0):
            raise ValueError(f"error_retry_delay must be >= 0, got {error_retry_delay!r}")
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.error_retry_delay = error_retry_delay
        self._changed = threading.Condition(threading.Lock())
        self._jobs: dict[UUID, _Job] = {}
        self._heaps: dict[str, list[tuple[datetime, int, UUID]]] = {}
        # Running jobs, by the queue they were taken from.
        self._running: dict[UUID, str] = {}
        # Pending jobs whose delivery is running: off the heap until it ends.
        self._parked: set[UUID] = set()
        self._seq = itertools.count()
        self._failures: list[JobFailure] = []
        self._stats = RunStats()
        self._enqueued = 0
        self._deduplicated = 0

    # -- enqueueing ---------------------------------------------------------

    def _enqueue(self, delivery_id: UUID, at: datetime | None, queue: str) -> Enqueued:
        # A delivery with a pending job gets no second one; the pending job moves
        # earlier when ``at`` is earlier than its run time, and stays on its queue.
        now = self.clock.now()
        with self._changed:
            done = self._put(delivery_id, now if at is None else at, now, queue)
            self._changed.notify_all()
        return done

    def _enqueue_many(self, delivery_ids: list[UUID], queue: str) -> list[Enqueued]:
        now = self.clock.now()
        with self._changed:  # all of them under one lock
            done = [self._put(delivery_id, now, now, queue) for delivery_id in delivery_ids]
            self._changed.notify_all()
        return done

    def _put(self, delivery_id: UUID, run_at: datetime, now: datetime, queue: str) -> Enqueued:
        job = self._jobs.get(delivery_id)
        done = Enqueued.QUEUED if run_at <= now else Enqueued.SCHEDULED
        if job is None:
            job = _Job(run_at=run_at, enqueued_at=now, seq=next(self._seq), queue=queue)
            self._jobs[delivery_id] = job
            self._enqueued += 1
        else:
            self._deduplicated += 1
            if run_at >= job.run_at:
                return Enqueued.PENDING  # due no later than asked
            if job.run_at <= now:
                done = Enqueued.PENDING  # due already: moving it up the queue runs nothing sooner
            job.run_at, job.seq = run_at, next(self._seq)
        if delivery_id not in self._parked:
            self._push(delivery_id, job)
        return done

    def _push(self, delivery_id: UUID, job: _Job) -> None:
        heapq.heappush(self._heaps.setdefault(job.queue, []), (job.run_at, job.seq, delivery_id))

    # -- introspection ------------------------------------------------------

    def pending(self) -> list[QueuedJob]:
        """Every pending job, queued or scheduled, in the order they would run."""
        with self._changed:
            ordered = sorted(self._jobs.items(), key=lambda item: (item[1].run_at, item[1].seq))
            return [
                QueuedJob(
                    delivery_id=delivery_id,
                    job_id=job_id_for(delivery_id),
                    run_at=job.run_at,
                    enqueued_at=job.enqueued_at,
                    queue=job.queue,
                )
                for delivery_id, job in ordered
            ]

    def is_enqueued(self, delivery_id: UUID) -> bool:
        """Whether ``delivery_id`` has a pending job (not counting one running now)."""
        with self._changed:
            return delivery_id in self._jobs

    def idle(self, now: datetime | None = None, *, queues: Sequence[str] | None = None) -> bool:
        """Whether no job is running and none is due at ``now`` (default: the clock's now).

        Only jobs of ``queues`` count, when given (running ones by the queue
        they were taken from). Jobs scheduled for later may still be
        pending: :meth:`pending` lists them.
        """
        now = self.clock.now() if now is None else ensure_aware(now, "now")
        served = _served(queues)
        with self._changed:
            if any(served is None or queue in served for queue in self._running.values()):
                return False
            return all(
                job.run_at > now
                for job in self._jobs.values()
                if served is None or job.queue in served
            )

    @property
    def failures(self) -> list[JobFailure]:
        """A copy of the failures recorded so far, oldest first."""
        with self._changed:
            return list(self._failures)

    @property
    def stats(self) -> RunStats:
        """Counts since the backend was made, over every way of running jobs."""
        with self._changed:
            return self._stats

    @property
    def enqueued(self) -> int:
        """How many jobs were created (enqueues that made a new pending job)."""
        with self._changed:
            return self._enqueued

    @property
    def deduplicated(self) -> int:
        """How many enqueues found a pending job and made none."""
        with self._changed:
            return self._deduplicated

    # -- running ------------------------------------------------------------

    def run_until_idle(
        self,
        performer: Performer,
        *,
        max_jobs: int = 1_000_000,
        fail_fast: bool = False,
        queues: Sequence[str] | None = None,
    ) -> RunStats:
        """Run jobs in this thread until none is pending; return what this call did.

        ``queues``, when given, are the only queues served, in that order.
        When only future jobs remain, a :class:`VirtualClock` is moved to the
        next run time; any other clock is waited for. ``fail_fast`` re-raises
        the first exception from ``perform`` (after recording it and enqueuing
        the job again as usual). Raises :class:`MaxJobsExceededError` rather
        than run job ``max_jobs + 1``.
        """
        return self._run(
            performer, max_jobs=max_jobs, fail_fast=fail_fast, advance=True, queues=queues
        )

    def run_due(
        self,
        performer: Performer,
        *,
        max_jobs: int = 1_000_000,
        fail_fast: bool = False,
        queues: Sequence[str] | None = None,
    ) -> RunStats:
        """Like :meth:`run_until_idle`, but only jobs due now: time is not moved or waited."""
        return self._run(
            performer, max_jobs=max_jobs, fail_fast=fail_fast, advance=False, queues=queues
        )

    def _run(
        self,
        performer: Performer,
        *,
        max_jobs: int,
        fail_fast: bool,
        advance: bool,
        queues: Sequence[str] | None,
    ) -> RunStats:
        served = _served(queues)
        order = None if queues is None else tuple(_queue_name(queue) for queue in queues)
        before = self.stats
        ran = 0
        while True:
            delivery_id = self._take_due(self.clock.now(), order)
            if delivery_id is None:
                if not advance or not self._wait_for_next(served):
                    return self.stats - before
                continue
            if ran >= max_jobs:
                self._release(delivery_id, requeue_at=self.clock.now())
                raise MaxJobsExceededError(ran, self.pending())
            ran += 1
            error = self._run_one(delivery_id, performer)
            if error is not None and fail_fast:
                raise error

    def _take_due(self, now: datetime, queues: Sequence[str] | None = None) -> UUID | None:
        """Take the job to run now: the earliest due one, or that of the first of ``queues``."""
        with self._changed:
            names = list(self._heaps) if queues is None else queues
            due = [
                (head, name)
                for name in names
                if (head := self._head(name)) is not None and head[0] <= now
            ]
            if not due:
                return None
            _, name = due[0] if queues is not None else min(due)
            _, _, delivery_id = heapq.heappop(self._heaps[name])
            del self._jobs[delivery_id]
            self._running[delivery_id] = name
            return delivery_id

    def _head(self, queue: str) -> tuple[datetime, int, UUID] | None:
        """The live top of a queue's heap, once stale and parked entries are dropped."""
        heap = self._heaps.get(queue, [])
        while heap:
            head = heap[0]
            job = self._jobs.get(head[2])
            if job is None or job.seq != head[1]:
                heapq.heappop(heap)  # superseded by a move or a run
            elif head[2] in self._running:
                heapq.heappop(heap)  # parked until its delivery's running job ends
                self._parked.add(head[2])
            else:
                return head
        return None

    def _next_run_at(self, served: frozenset[str] | None) -> datetime | None:
        with self._changed:
            live = [
                job.run_at
                for delivery_id, job in self._jobs.items()
                if delivery_id not in self._parked and (served is None or job.queue in served)
            ]
            return min(live, default=None)

    def _wait_for_next(self, served: frozenset[str] | None = None) -> bool:
        """Bring the next job's time closer; ``False`` when nothing ``served`` is pending."""
        next_at = self._next_run_at(served)
        if next_at is None:
            with self._changed:
                if not any(served is None or job.queue in served for job in self._jobs.values()):
                    return False
                # Only jobs of deliveries running elsewhere: wait for them.
                self._changed.wait(0.05)
            return True
        now = self.clock.now()
        if next_at <= now:
            return True
        if isinstance(self.clock, VirtualClock):
            self.clock.set(next_at)
            return True
        with self._changed:
            self._changed.wait((next_at - now).total_seconds())
        return True

    def _run_one(self, delivery_id: UUID, performer: Performer) -> Exception | None:
        """Run one taken job and translate its end; return the exception, if any."""
        try:
            result = _job_result(performer.perform(delivery_id))
        except UnhandledOutcomeError as error:
            self._fail(delivery_id, error, requeue_at=error.run_at, queue=error.queue)
            return error
        except Exception as error:
            retry_at = self.clock.now() + self.error_retry_delay
            self._fail(delivery_id, error, requeue_at=retry_at, queue=self._taken_from(delivery_id))
            return error
        except BaseException:
            # KeyboardInterrupt and friends: put the job back, then let it go.
            self._release(delivery_id, requeue_at=self.clock.now())
            raise
        self._finish(delivery_id, result)
        return None

    def _finish(self, delivery_id: UUID, result: JobResult) -> None:
        with self._changed:
            stats = attrs.evolve(self._stats, jobs_run=self._stats.jobs_run + 1)
            match result.kind:
                case JobKind.ACK:
                    stats = attrs.evolve(stats, acks=stats.acks + 1)
                case JobKind.RETRY:
                    stats = attrs.evolve(stats, retries=stats.retries + 1)
                case JobKind.DEFER:
                    stats = attrs.evolve(stats, defers=stats.defers + 1)
                case _:
                    assert_never(result.kind)
            self._stats = stats
            self._end_locked(delivery_id, result.run_at, _queue_name(result.queue))

    def _taken_from(self, delivery_id: UUID) -> str:
        with self._changed:
            return self._running[delivery_id]

    def _fail(
        self,
        delivery_id: UUID,
        error: Exception,
        *,
        requeue_at: datetime | None,
        queue: str | None,
    ) -> None:
        with self._changed:
            self._failures.append(
                JobFailure(delivery_id=delivery_id, error=error, at=self.clock.now())
            )
            self._stats = attrs.evolve(
                self._stats,
                jobs_run=self._stats.jobs_run + 1,
                failures=self._stats.failures + 1,
            )
            self._end_locked(delivery_id, requeue_at, _queue_name(queue))

    def _release(self, delivery_id: UUID, *, requeue_at: datetime) -> None:
        with self._changed:
            self._end_locked(delivery_id, requeue_at, self._running[delivery_id])

    def _end_locked(self, delivery_id: UUID, requeue_at: datetime | None, queue: str) -> None:
        """End a running job; put it back on ``queue`` for ``requeue_at``, if given."""
        del self._running[delivery_id]
        if delivery_id in self._parked:
            self._parked.discard(delivery_id)
            self._push(delivery_id, self._jobs[delivery_id])
        if requeue_at is not None:
            self._put(delivery_id, ensure_aware(requeue_at, "run_at"), self.clock.now(), queue)
        self._changed.notify_all()

    def _wait_for_work(self, timeout: float) -> None:
        with self._changed:
            self._changed.wait(timeout)

    def _wake_all(self) -> None:
        with self._changed:
            self._changed.notify_all()


def _job_result(result: object) -> JobResult:
    if not isinstance(result, JobResult):
        raise TypeError(f"perform returned {type(result).__qualname__}, not a JobResult")
    return result


def _queue_name(queue: object) -> str:
    """A queue's name: ``queue`` itself, or :data:`DEFAULT_QUEUE` for ``None``."""
    return queue_or(queue, DEFAULT_QUEUE)


def _served(queues: Sequence[str] | None) -> frozenset[str] | None:
    """The names of ``queues`` as a set to test against; ``None`` serves every queue."""
    if queues is None:
        return None
    if isinstance(queues, str) or not queues:
        raise ValueError(f"queues must be a non-empty sequence of queue names, got {queues!r}")
    return frozenset(_queue_name(queue) for queue in queues)
