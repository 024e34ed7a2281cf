"""The RQ backend: chimeway deliveries as RQ jobs on Redis.

A package of what is specific to RQ: enqueueing (:mod:`.backend`), the job
and what makes a worker run only it (:mod:`.job`), each job's time limit,
per channel (:mod:`.limits`), reading queues and
scheduled jobs so no bytes stop a worker (:mod:`.reading`), the worker classes
(:mod:`.worker`) and the command line's entry (:mod:`.cli`, loaded only by
the command line). The worker
half every backend shares — engine per process, after-fork, job → verdict,
rescue — is :mod:`chimeway_core.worker`. Every public name is importable
from here, as from the module this package replaces.

Theory of operation
-------------------
One RQ job per delivery, always under the same job id,
:func:`~chimeway_core.jobs.job_id_for`, naming :func:`deliver` with the
delivery id as its only argument, serialized as JSON (never pickle).

**Enqueueing** (:class:`RQBackend`). A delivery *has a pending job* when its
job is in the queue's ``ScheduledJobRegistry`` or its job hash says
``queued`` or ``started``. Enqueueing such a delivery makes no second job; a
scheduled job only moves earlier (``ZADD XX LT``), never later, and one that
is due (asked for now, or left past its time) goes on the queue at once,
rewritten, without waiting for RQ's scheduler. Otherwise a
fresh job is written under the same id, over whatever finished or failed job
hash was left there. Each enqueue says what it did
(:class:`~chimeway_core.backend.Enqueued`). The check and the write are one optimistic transaction
(``WATCH`` on the job hashes, then ``MULTI``/``EXEC`` with RQ's own
``enqueue_many`` / ``schedule_job``), so concurrent enqueuers cannot double a
job. Every RQ transition of a job rewrites its hash, which is why watching
the hashes is enough.

**Queues.** Jobs go to the backend's queue (``queue_name``) or, with
``queue=`` (the engine's ``routes``), to another queue on the same Redis; a
worker serves the queues it is given, in order. The check above is per job
id, so a delivery whose job is queued or running on one queue gets no
second job on another: it runs where it is. One scheduled on another queue
(a route changed) is not seen there and gets a job on the queue asked for;
the old schedule, if a worker of its queue ever fires it, finds the
delivery handled.

**Running** (:func:`deliver`, in any RQ worker). The job calls
``engine.perform(id)`` and translates the :class:`~chimeway_core.jobs.JobResult`
into RQ's idiom:

- ``ACK`` — return a short string; the job finishes.
- ``RETRY`` / ``DEFER`` — return a :class:`DeliveryRetry` (an :class:`rq.Retry`
  whose stored result reads ``retry: <why>, at <run_at>``, through
  :class:`ChimewayJSONSerializer`, where RQ's JSON would store
  "Unserializable return value"). RQ itself then schedules
  *this same job id* again, after the job has ended and inside the worker's
  own bookkeeping transaction: that is how a running job re-enqueues itself
  without racing its own hash. The interval is rounded up to whole seconds
  (the scheduler's resolution) so the job never runs before ``run_at``. The
  ledger owns the attempt number; ``Retry.max`` is always one more than RQ's
  retry count, so RQ never gives up on its own.
- :class:`~chimeway_core.errors.UnhandledOutcomeError` — the job schedules
  itself at ``run_at`` (when the engine set one), then re-raises: RQ records
  the failure, with the shape in the message, in the ``FailedJobRegistry``,
  and the scheduled registry still holds the next run.
- :class:`~chimeway_core.errors.InvalidJobError` (the arguments are not one
  canonical delivery id) and any other exception — the job fails into the
  ``FailedJobRegistry`` and is not retried by RQ. A live delivery whose job
  failed this way is requeued by the engine's rescuer after
  ``requeue_after``.

**Workers** (:class:`ChimewayWorker`, :class:`ChimewaySimpleWorker`,
:func:`run_worker`). The worker finds the engine from the ``engine`` it was
given or from ``CHIMEWAY_APP=module:attribute`` (read once per process), always
deserializes jobs as JSON, runs the engine's ``rescue()`` every
``rescue_interval`` seconds from its main loop (between jobs and while idle)
— each pass also asks for a free scheduler lock and puts jobs RQ's scheduler
left overdue on their queue (:meth:`RQBackend.release_overdue`) —
and, in a forking worker, drops the SQLAlchemy pool it inherited in each work
horse (``dispose(close=False)``) so no database connection crosses a fork.
Unless the backend sets one ``job_timeout``, a job is stopped at its own
channel's limit, brought forward once it has claimed its delivery
(:mod:`.limits`).

**Only deliver runs.** An RQ job names its function (and, optionally,
success, failure and stopped callbacks) by import path, and a plain RQ worker
imports and calls whatever a job on its queues names. A chimeway worker reads
jobs as :class:`ChimewayJob`, which resolves :func:`deliver` and nothing
else: a job naming any other function, a method of an instance, or any
callback fails with :class:`ForeignJobError` before anything is imported or
called, is logged as refused, is never retried by RQ, and ends in the
``FailedJobRegistry``. The check is on the job itself, so it holds wherever
the worker runs it: in a forked work horse or in its own process.
:class:`ChimewayJob` reads only the fields chimeway writes and never raises
on one: RQ's webhooks, dependencies, retries, repeats, rate limits and the
like are ignored, and the job's timeout and TTLs are the backend's. A job
the worker cannot read at all is skipped, and neither the worker nor RQ's
scheduler stops on it (:mod:`.reading`).
"""

from __future__ import annotations

from typing import Final

from chimeway_core.errors import MissingExtraError
from chimeway_core.loading import APP_VARIABLE
from chimeway_core.worker import DEFAULT_RESCUE_INTERVAL, RESCUE_INTERVAL_ENV

try:
    import redis  # noqa: F401 - checked here so a missing extra is one clear error
    import rq
    from rq.worker import BaseWorker
except ImportError as error:  # pragma: no cover - exercised with rq hidden from sys.modules
    raise MissingExtraError("rq", feature="the RQ backend (chimeway_backends.rq)") from error

if not hasattr(BaseWorker, "handle_job_retry"):  # pragma: no cover - depends on the installed rq
    # Without it a returned Retry would be stored as a plain result: retries silently lost.
    raise MissingExtraError(
        "rq", feature=f"the RQ backend (rq {rq.__version__} cannot run jobs that return Retry)"
    )

from chimeway_backends.rq.backend import DEFAULT_QUEUE, DELIVER, RQBackend
from chimeway_backends.rq.job import (
    ChimewayDeathPenalty,
    ChimewayJob,
    ChimewayJSONSerializer,
    DeliveryRetry,
    ForeignJobError,
    JobTimeLimitExceeded,
    current_engine,
    deliver,
)
from chimeway_backends.rq.worker import (
    DEFAULT_MAINTENANCE_INTERVAL,
    ChimewaySimpleWorker,
    ChimewayWorker,
    ChimewayWorkerMixin,
    run_worker,
)

__all__ = [
    "APP_ENV",
    "DEFAULT_MAINTENANCE_INTERVAL",
    "DEFAULT_QUEUE",
    "DEFAULT_RESCUE_INTERVAL",
    "RESCUE_INTERVAL_ENV",
    "DELIVER",
    "DeliveryRetry",
    "ForeignJobError",
    "JobTimeLimitExceeded",
    "ChimewayDeathPenalty",
    "ChimewayJSONSerializer",
    "ChimewayJob",
    "ChimewaySimpleWorker",
    "ChimewayWorker",
    "ChimewayWorkerMixin",
    "RQBackend",
    "current_engine",
    "deliver",
    "run_worker",
]

#: The environment variable naming the engine: ``module:attribute``.
APP_ENV: Final = APP_VARIABLE
