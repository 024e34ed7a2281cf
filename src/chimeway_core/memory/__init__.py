"""The in-memory backend: chimeway's embedded default queue.

Theory of operation
-------------------
:class:`MemoryBackend` is a thread-safe, in-process job queue that holds at
most one pending job per delivery (its job id is
:func:`~chimeway_core.jobs.job_id_for`). Enqueueing a delivery that already has
a pending job makes no second job, on any queue; if the new request is for an
earlier time, the pending job moves earlier, on the queue it is on. Jobs go to
named queues (``queue=``; :data:`DEFAULT_QUEUE` when none is given); each
queue's pending jobs sit in a heap ordered by run time, then by enqueue order.

A worker takes the earliest due job of the queues it serves (all of them by
default; given an order, the first of those queues that has a due job, as an
RQ worker does), calls ``performer.perform(delivery_id)`` and translates what
comes back, as :mod:`chimeway_core.jobs` prescribes:

- ``ACK`` — the job is done;
- ``RETRY`` / ``DEFER`` — the delivery is enqueued again for ``run_at``, on
  the result's ``queue``;
- :class:`~chimeway_core.errors.UnhandledOutcomeError` — recorded in
  :attr:`MemoryBackend.failures`, and enqueued again for its ``run_at`` (on
  its ``queue``) when the engine set one;
- any other exception — recorded, and enqueued again on the queue it came
  from after ``error_retry_delay``, as a real queue would retry a crashed
  job, so nothing is lost.

A delivery whose job is running is never handed to a second worker: a job
enqueued for it meanwhile waits until the running one finishes.

Two ways to run jobs: :meth:`MemoryBackend.run_until_idle` in the calling
thread (tests, scripts; with a :class:`~chimeway_core.clock.VirtualClock` it
advances virtual time to each delayed job instead of sleeping), and
:class:`MemoryWorker`, threads in real time (the demo,
``chimeway worker --backend memory``). Nothing survives the process: this is
the embedded default, not a durable queue; the database's outbox and rescuer
are what make a restart lose nothing.
"""

from __future__ import annotations

from chimeway_core.memory.backend import (
    DEFAULT_ERROR_RETRY_DELAY,
    DEFAULT_QUEUE,
    JobFailure,
    MaxJobsExceededError,
    MemoryBackend,
    QueuedJob,
    RunStats,
)
from chimeway_core.memory.worker import MemoryWorker

__all__ = [
    "DEFAULT_ERROR_RETRY_DELAY",
    "DEFAULT_QUEUE",
    "JobFailure",
    "MaxJobsExceededError",
    "MemoryBackend",
    "MemoryWorker",
    "QueuedJob",
    "RunStats",
]
