"""The RQ backend: chimeway deliveries as RQ jobs on Redis.

Theory of operation
-------------------
One RQ job per delivery, always under the same job id,
:func:`~chimeway_core.jobs.job_id_for`, running :func:`deliver` with the
delivery id as its only argument, serialized as JSON (never pickle).

**Enqueueing** (:class:`RQBackend`). A delivery *has a pending job* when its
job is in the queue's ``ScheduledJobRegistry`` or its job hash says
``queued`` or ``started``. Enqueueing such a delivery makes no second job; a
scheduled job only moves earlier (``ZADD XX LT``), never later. Otherwise a
fresh job is written under the same id, over whatever finished or failed job
hash was left there. The check and the write are one optimistic transaction
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
``rescue_interval`` seconds from its main loop (between jobs and while idle),
and, in a forking worker, drops the SQLAlchemy pool it inherited in each work
horse (``dispose(close=False)``) so no database connection crosses a fork.

**Only deliver runs.** An RQ job names its function (and, optionally,
success, failure and stopped callbacks) by import path, and a plain RQ worker
imports and calls whatever a job on its queues names. A chimeway worker reads
jobs as :class:`ChimewayJob`, which resolves :func:`deliver` and nothing
else: a job naming any other function, a method of an instance, or any
callback fails with :class:`ForeignJobError` before anything is imported or
called, is logged as refused, is never retried by RQ, and ends in the
``FailedJobRegistry``. The check is on the job itself, so it holds wherever
the worker runs it: in a forked work horse or in its own process.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, ClassVar, Final
from uuid import UUID

from chimeway_core._checks import queue_or, seconds, whole
from chimeway_core.clock import ensure_aware
from chimeway_core.engine import Chimeway, RescueReport
from chimeway_core.errors import (
    ChimewayError,
    InvalidJobError,
    MissingExtraError,
    UnhandledOutcomeError,
)
from chimeway_core.jobs import JobKind, job_id_for, parse_delivery_id
from chimeway_core.loading import APP_VARIABLE, load_engine

try:
    import redis
    import rq
    from rq.exceptions import StopRequested
    from rq.job import Job, JobStatus
    from rq.serializers import JSONSerializer, resolve_serializer
    from rq.timeouts import BaseTimeoutException, JobTimeoutException, UnixSignalDeathPenalty
    from rq.worker import BaseWorker, WorkerStatus
except ImportError as error:  # pragma: no cover - exercised with rq hidden from sys.modules
    raise MissingExtraError("rq", feature="the RQ backend (chimeway_backends.rq)") from error

if not hasattr(BaseWorker, "handle_job_retry"):  # pragma: no cover - depends on the installed rq
    # Without it a returned Retry would be stored as a plain result: retries silently lost.
    raise MissingExtraError(
        "rq", feature=f"the RQ backend (rq {rq.__version__} cannot run jobs that return Retry)"
    )

__all__ = [
    "APP_ENV",
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

_log = logging.getLogger(__name__)

#: The queue chimeway uses unless told otherwise.
DEFAULT_QUEUE: Final = "chimeway"
#: The environment variable naming the engine: ``module:attribute``.
APP_ENV: Final = APP_VARIABLE
#: The environment variable a worker reads its rescue interval from (seconds).
RESCUE_INTERVAL_ENV: Final = "CHIMEWAY_RESCUE_INTERVAL"
#: How often a worker runs the engine's rescuer, in seconds.
DEFAULT_RESCUE_INTERVAL: Final = 30.0

# Per job, in the queue's scheduled registry: [status, score] for each job
# hash, "" for absent. Read-only; runs while the hashes are WATCHed.
_STATES_SCRIPT: Final = """
local out = {}
for i = 2, #KEYS do
  out[#out + 1] = redis.call('HGET', KEYS[i], 'status') or ''
  out[#out + 1] = redis.call('ZSCORE', KEYS[1], ARGV[i - 1]) or ''
end
return out
"""
_RUNNING: Final = frozenset({JobStatus.QUEUED.value, JobStatus.STARTED.value})
# Deliveries per WATCH/MULTI transaction: bounds the keys one transaction watches.
_BATCH: Final = 500


# ---------------------------------------------------------------------- backend


class RQBackend:
    """Queue delivery ids as RQ jobs; satisfies :class:`~chimeway_core.jobs.Backend`.

    ``job_timeout`` (seconds) is RQ's hard limit on one job: keep it above
    every channel's ``timeout`` and no longer than the shortest lease
    (``channel.timeout + engine.lease_margin``); the worker warns otherwise.
    ``result_ttl`` and ``failure_ttl`` (seconds; ``None``: RQ's defaults of
    500 s and one year) are how long finished and failed job hashes are kept.
    ``failure_ttl`` must outlast the longest retry delay, since a job whose
    attempt raised ``UnhandledOutcomeError`` waits for its next run in that
    hash.
    """

    def __init__(
        self,
        connection: redis.Redis,
        queue_name: str = DEFAULT_QUEUE,
        *,
        job_timeout: int = 60,
        result_ttl: int | None = None,
        failure_ttl: int | None = None,
    ) -> None:
        if not isinstance(connection, redis.Redis):
            raise TypeError(
                f"connection must be a redis.Redis (redis.Redis.from_url(url)), "
                f"not {type(connection).__name__}"
            )
        if not isinstance(queue_name, str) or not queue_name:
            raise ValueError(f"queue_name must be a non-empty str, got {queue_name!r}")
        whole("job_timeout", job_timeout, minimum=1)
        for name, ttl in (("result_ttl", result_ttl), ("failure_ttl", failure_ttl)):
            # RQ's own meaning: -1 keeps the hash forever, 0 not at all.
            if ttl is not None:
                whole(name, ttl, minimum=-1)
        self.connection = connection
        self.queue_name = queue_name
        self.job_timeout = job_timeout
        self.result_ttl = result_ttl
        self.failure_ttl = failure_ttl
        self.queue = rq.Queue(
            queue_name,
            connection=connection,
            serializer=JSONSerializer,
            default_timeout=job_timeout,
        )
        self._queues: dict[str, rq.Queue] = {}

    def __repr__(self) -> str:
        return f"RQBackend(queue={self.queue_name!r})"

    def enqueue(
        self, delivery_id: UUID, *, at: datetime | None = None, queue: str | None = None
    ) -> None:
        """Queue a job for ``delivery_id`` on ``queue`` (default: ``queue_name``), now or at ``at``.

        A delivery with a pending job (queued, started or scheduled) gets no
        second one; a scheduled job moves earlier when ``at`` is earlier.
        ``at`` must be tz-aware.
        """
        target = self._queue(queue)
        at = None if at is None else ensure_aware(at, "at")
        self._submit(target, [(_check_id(delivery_id), at)])

    def enqueue_many(self, delivery_ids: Sequence[UUID], *, queue: str | None = None) -> None:
        """Queue jobs for several deliveries on ``queue``, due now: three round trips per 500."""
        target = self._queue(queue)
        unique = dict.fromkeys(_check_id(delivery_id) for delivery_id in delivery_ids)
        if unique:
            self._submit(target, [(delivery_id, None) for delivery_id in unique])

    def _queue(self, name: str | None) -> rq.Queue:
        """The RQ queue called ``name`` on this backend's Redis (``None``: the default)."""
        name = queue_or(name, self.queue_name)
        if name == self.queue_name:
            return self.queue
        found = self._queues.get(name)
        if found is None:
            found = self._queues[name] = rq.Queue(
                name,
                connection=self.connection,
                serializer=JSONSerializer,
                default_timeout=self.job_timeout,
            )
        return found

    def _submit(self, queue: rq.Queue, items: list[tuple[UUID, datetime | None]]) -> None:
        for start in range(0, len(items), _BATCH):
            self._submit_batch(queue, items[start : start + _BATCH])

    def _submit_batch(self, queue: rq.Queue, items: list[tuple[UUID, datetime | None]]) -> None:
        job_ids = [job_id_for(delivery_id) for delivery_id, _ in items]
        job_keys = [queue.job_class.key_for(job_id) for job_id in job_ids]
        scheduled = queue.scheduled_job_registry.key
        with self.connection.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(*job_keys)  # type: ignore[no-untyped-call]  # redis-py leaves it untyped
                    flat = pipe.eval(
                        _STATES_SCRIPT, len(job_keys) + 1, scheduled, *job_keys, *job_ids
                    )
                    pipe.multi()
                    self._write(pipe, queue, items, job_ids, job_keys, flat)
                    pipe.execute()
                except redis.WatchError:
                    continue  # a job changed under us: decide again on fresh states
                return

    def _write(
        self,
        pipe: redis.client.Pipeline,
        queue: rq.Queue,
        items: list[tuple[UUID, datetime | None]],
        job_ids: list[str],
        job_keys: list[str],
        flat: list[bytes | str],
    ) -> None:
        now = time.time()
        due_now = []
        for index, ((delivery_id, at), job_id, key) in enumerate(
            zip(items, job_ids, job_keys, strict=True)
        ):
            status, score = _text(flat[2 * index]), _text(flat[2 * index + 1])
            when = None if at is None or at.timestamp() <= now else _not_before(at)
            if score and status:
                target = math.floor(now) if when is None else int(when.timestamp())
                pipe.zadd(queue.scheduled_job_registry.key, {job_id: target}, xx=True, lt=True)
                continue
            if status in _RUNNING:
                continue
            # What an ended run left under this id (fields, an expiry, a schedule whose
            # job hash expired) is not the new job's.
            pipe.delete(key)
            if score:
                pipe.zrem(queue.scheduled_job_registry.key, job_id)
            if when is None:
                due_now.append(
                    queue.prepare_data(
                        deliver, args=[str(delivery_id)], job_id=job_id, **self._options()
                    )
                )
            else:
                job = queue.create_job(
                    deliver, args=[str(delivery_id)], job_id=job_id, **self._options()
                )
                queue.schedule_job(job, when, pipeline=pipe)
        if due_now:
            queue.enqueue_many(due_now, pipeline=pipe)

    def _options(self) -> dict[str, Any]:
        return {
            "timeout": self.job_timeout,
            "result_ttl": self.result_ttl,
            "failure_ttl": self.failure_ttl,
        }


def _check_id(delivery_id: object) -> UUID:
    if not isinstance(delivery_id, UUID):
        raise TypeError(f"delivery_id must be a UUID, not {type(delivery_id).__name__}")
    return delivery_id


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _not_before(at: datetime) -> datetime:
    """``at`` rounded up to the whole second: RQ's scheduler truncates to seconds."""
    return datetime.fromtimestamp(math.ceil(at.timestamp()), UTC)


# ---------------------------------------------------------------------- the job


class _Installed:
    """The engine of this process, installed by a worker or loaded from ``CHIMEWAY_APP``."""

    engine: Chimeway | None = None


def current_engine() -> Chimeway:
    """The engine jobs run on in this process.

    The one a worker was given, or else the one ``CHIMEWAY_APP`` names,
    loaded on first use and kept for the life of the process.
    """
    if _Installed.engine is None:
        _Installed.engine = load_engine(None)
    return _Installed.engine


class DeliveryRetry(rq.Retry):
    """RQ's :class:`rq.Retry`, carrying the line the job's stored result shows for it."""

    def __init__(self, max: int, interval: int, *, summary: str) -> None:
        super().__init__(max=max, interval=interval)
        self.summary = summary


def _summary(value: object) -> str:
    if isinstance(value, DeliveryRetry):
        return value.summary
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


class ChimewayJSONSerializer(JSONSerializer):
    """RQ's JSON serializer, writing a :class:`DeliveryRetry` as its summary.

    Jobs and every other value come out byte for byte as RQ's
    ``JSONSerializer`` writes them, so either reads what the other wrote.
    """

    @staticmethod
    def dumps(*args: Any, **kwargs: Any) -> bytes:
        """JSON as UTF-8 bytes; a :class:`DeliveryRetry` becomes its summary string."""
        kwargs.setdefault("default", _summary)
        return json.dumps(*args, **kwargs).encode("utf-8")


def deliver(*args: object, **kwargs: object) -> str | rq.Retry:
    """The RQ job: run one job for the delivery id in ``args``; see the module docstring.

    Exactly one positional argument, a canonical delivery id string, is
    accepted; anything else raises :class:`InvalidJobError` before the
    engine is touched.
    """
    if len(args) != 1 or kwargs:
        raise InvalidJobError({"args": list(args), "kwargs": kwargs})
    delivery_id = parse_delivery_id(args[0])
    try:
        result = current_engine().perform(delivery_id)
    except UnhandledOutcomeError as error:
        job = rq.get_current_job()
        if error.run_at is not None and job is not None:
            queue = rq.Queue(job.origin, connection=job.connection, serializer=job.serializer)
            queue.schedule_job(job, _not_before(error.run_at))
        raise
    if result.kind is JobKind.ACK:
        return f"ack: {result.detail}"
    assert result.run_at is not None  # guaranteed by JobResult for RETRY and DEFER
    summary = f"{result.kind.value}: {result.detail}, at {result.run_at.isoformat()}"
    return _retry_at(result.run_at, summary)


#: The one function a chimeway worker runs, by the import path jobs name it with.
DELIVER: Final = f"{deliver.__module__}.{deliver.__qualname__}"


def _retry_at(run_at: datetime, summary: str) -> DeliveryRetry:
    now = time.time()
    target = run_at.timestamp()
    # RQ schedules at (its now + interval) truncated to the second: aim for the
    # whole second after run_at so the truncation never lands before it.
    interval = 0 if target <= now else math.ceil(math.ceil(target) - now)
    job = rq.get_current_job()
    retried = (job.number_of_retries or 0) if job is not None else 0
    return DeliveryRetry(max=retried + 1, interval=interval, summary=summary)


# ---------------------------------------------------------------------- workers


class ForeignJobError(ChimewayError):
    """A job on a chimeway worker's queue names code other than :func:`deliver`.

    Raised before anything the job names is imported or called; the job
    fails into the ``FailedJobRegistry``. ``job_id`` and ``names`` (the
    foreign import path, shortened) identify it for the operator.
    """

    def __init__(self, job_id: str, names: str) -> None:
        self.job_id = job_id
        self.names = names
        super().__init__(
            f"job {job_id} names {names}, not {DELIVER}: a chimeway worker runs nothing else"
        )


class ChimewayJob(Job):
    """An RQ job that resolves to :func:`deliver` or to nothing: see the module docstring.

    Its function is :func:`deliver` when the job names exactly
    ``chimeway_backends.rq.deliver``, with no instance and no callback;
    otherwise resolving it raises :class:`ForeignJobError` (and the job is not
    retried). Its callbacks are always none, so failing a foreign job runs
    nothing either.
    """

    @property
    def func(self) -> Callable[..., object]:
        """:func:`deliver`, after checking the job names it and nothing else."""
        names = self._foreign()
        if names is not None:
            self.retries_left = None  # a refused job fails for good, whatever it asked for
            _log.error(
                "refused RQ job %s from queue %r: it names %s, not %s; failed without running",
                self.id,
                self.origin,
                names,
                DELIVER,
            )
            raise ForeignJobError(self.id, names)
        return deliver

    def _foreign(self) -> str | None:
        if self.func_name != DELIVER:
            return f"function {_shorten(self.func_name)}"
        if self.instance is not None:
            return f"a method of a {type(self.instance).__name__} instance"
        for kind, name in [
            ("success", self._success_callback_name),
            ("failure", self._failure_callback_name),
            ("stopped", self._stopped_callback_name),
        ]:
            if name:
                return f"{kind} callback {_shorten(name)}"
        return None

    @property
    def success_callback(self) -> None:
        """None: a chimeway job has no callbacks (one that names any is refused)."""
        return None

    @property
    def failure_callback(self) -> None:
        """None: a chimeway job has no callbacks (one that names any is refused)."""
        return None

    @property
    def stopped_callback(self) -> None:
        """None: a chimeway job has no callbacks (one that names any is refused)."""
        return None


def _shorten(name: object) -> str:
    text = repr(name)
    return text if len(text) <= 120 else f"{text[:117]}..."


class JobTimeLimitExceeded(BaseException):
    """RQ's ``job_timeout`` cut a chimeway job short.

    A :class:`BaseException`, like a worker dying, so the engine does not take
    it for the channel's own failure: a call cut off mid-flight may have
    reached the provider. The attempt stays in flight until its lease expires
    and the rescuer resolves it as outcome ``unknown`` (retried with the same
    idempotency key, or cancelled, as the channel's guarantee says). RQ records
    the job in its ``FailedJobRegistry``.
    """


class ChimewayDeathPenalty(UnixSignalDeathPenalty):
    """RQ's SIGALRM job timeout, raising :class:`JobTimeLimitExceeded` for jobs.

    Other timeouts RQ arms with the same class (callbacks, the work-horse
    monitor) keep their own exceptions.
    """

    def __init__(
        self,
        timeout: int,
        exception: type[BaseException] = BaseTimeoutException,
        **kwargs: Any,
    ) -> None:
        if exception is JobTimeoutException:
            exception = JobTimeLimitExceeded
        super().__init__(timeout, exception, **kwargs)  # type: ignore[no-untyped-call]  # rq untyped


def _rescue_interval_from_env() -> float:
    text = os.environ.get(RESCUE_INTERVAL_ENV)
    if text is None:
        return DEFAULT_RESCUE_INTERVAL
    try:
        return seconds(RESCUE_INTERVAL_ENV, float(text), positive=True)
    except ValueError:
        raise ValueError(
            f"{RESCUE_INTERVAL_ENV}={text!r} must be a finite number of seconds > 0"
        ) from None


_JSON_SERIALIZERS: Final = (JSONSerializer, ChimewayJSONSerializer)


class ChimewayWorkerMixin(BaseWorker):
    """What makes an RQ worker a chimeway worker; mix it in before an RQ worker class.

    Takes two keyword arguments on top of RQ's: ``engine`` (default: the
    engine ``CHIMEWAY_APP`` names) and ``rescue_interval`` (seconds; default
    ``CHIMEWAY_RESCUE_INTERVAL`` or 30). Jobs are always deserialized as JSON,
    whatever serializer was asked for, as :class:`ChimewayJob` whatever job
    class was asked for, so only :func:`deliver` ever runs. RQ's job timeout
    raises :class:`JobTimeLimitExceeded`.
    """

    death_penalty_class = ChimewayDeathPenalty
    #: How long the listener on RQ's command channel blocks in one read.
    #: RQ's own 60 s makes a shutdown (or a burst's end) hang up to that long
    #: now and then: unsubscribe() gives the listener 1 s to stop, then closes
    #: the connection it may still be reading, which waits for the read.
    command_listen_seconds: ClassVar[float] = 0.5
    job_class = ChimewayJob

    def __init__(
        self,
        queues: Any,
        *args: Any,
        engine: Chimeway | None = None,
        rescue_interval: float | None = None,
        **kwargs: Any,
    ) -> None:
        if rescue_interval is None:
            rescue_interval = _rescue_interval_from_env()
        # Set before RQ's __init__, which reads dequeue_timeout.
        self.rescue_interval = seconds("rescue_interval", rescue_interval, positive=True)
        self._next_rescue = time.monotonic()
        requested = kwargs.get("serializer")
        if requested is not None and resolve_serializer(requested) not in _JSON_SERIALIZERS:
            _log.warning(
                "chimeway workers read jobs as JSON only; ignoring serializer %s", requested
            )
        kwargs["serializer"] = ChimewayJSONSerializer
        job_class = kwargs.get("job_class")
        if not (isinstance(job_class, type) and issubclass(job_class, ChimewayJob)):
            if job_class not in {None, Job, "rq.job.Job"}:  # RQ's default says nothing
                _log.warning("chimeway workers run chimeway jobs only; ignoring %s", job_class)
            kwargs["job_class"] = ChimewayJob
        names = [
            queue.name if isinstance(queue, rq.Queue) else queue
            for queue in ([queues] if isinstance(queues, str | rq.Queue) else queues)
        ]
        super().__init__(names, *args, **kwargs)
        if engine is not None:
            _Installed.engine = engine
        self.engine = current_engine()
        if not isinstance(self.engine.backend, RQBackend):
            raise TypeError(
                f"a chimeway RQ worker needs an engine whose backend is an RQBackend, "
                f"not {type(self.engine.backend).__qualname__}"
            )
        _check_timeouts(self.engine, self.engine.backend)
        if self.engine.backend.queue_name not in self.queue_names():
            _log.warning(
                "this worker does not listen on %r, where its engine queues deliveries",
                self.engine.backend.queue_name,
            )

    def subscribe(self) -> None:
        """Listen on RQ's command channel (stop, kill) as RQ does, with short reads."""
        self.log.info("Worker %s: subscribing to channel %s", self.name, self.pubsub_channel_name)
        self.pubsub = self.connection.pubsub()
        self.pubsub.subscribe(**{self.pubsub_channel_name: self.handle_payload})
        self.pubsub_thread = self.pubsub.run_in_thread(  # type: ignore[assignment]  # rq types it None
            sleep_time=self.command_listen_seconds,
            daemon=True,
            # RQ 3's reconnecting handler; older RQ versions have none.
            exception_handler=getattr(self, "_pubsub_exception_handler", None),
        )

    @property
    def dequeue_timeout(self) -> int:
        """RQ's blocking wait for a job, capped so an idle worker still rescues on time."""
        return max(1, min(super().dequeue_timeout, math.ceil(self.rescue_interval)))

    @property
    def should_run_maintenance_tasks(self) -> bool:
        """RQ's maintenance is due, or the rescuer is."""
        return super().should_run_maintenance_tasks or time.monotonic() >= self._next_rescue

    def run_maintenance_tasks(self) -> None:
        """RQ's maintenance when due, then the rescuer when due."""
        if super().should_run_maintenance_tasks:
            super().run_maintenance_tasks()  # type: ignore[no-untyped-call]  # rq leaves it untyped
        if time.monotonic() >= self._next_rescue:
            self.run_rescue()

    def run_rescue(self) -> RescueReport | None:
        """Fail RQ jobs whose worker died, then run the engine's rescuer; log, never raise.

        Abandoned ``started`` jobs would otherwise count as pending and keep
        the rescuer's enqueues from creating their next job. The worker counts
        as busy meanwhile, so a warm shutdown (SIGTERM) waits for the rescue
        to end instead of interrupting it.
        """
        self._next_rescue = time.monotonic() + self.rescue_interval
        state = self.get_state()
        self.set_state(WorkerStatus.BUSY)
        try:
            for queue in self.queues:
                queue.started_job_registry.cleanup()
            report = self.engine.rescue()
        except Exception:
            _log.exception("chimeway rescue failed; trying again in %s s", self.rescue_interval)
            report = None
        finally:
            self.set_state(state)
        if self._stop_requested:
            raise StopRequested
        if report is not None and not report.idle:
            _log.info(
                "chimeway rescue: %d lost attempts resolved, %d deliveries requeued, "
                "%d relayed, %d pruned",
                report.resolved,
                report.requeued,
                report.relayed,
                report.pruned,
            )
        return report

    def main_work_horse(self, job: rq.job.Job, queue: rq.Queue) -> None:
        """In a forked work horse: drop the inherited database pool, then run the job.

        ``close=False`` leaves the parent's connections open for the parent;
        the horse opens its own (SQLAlchemy, "Using Connection Pools with
        Multiprocessing or os.fork()").
        """
        self.engine.store.engine.dispose(close=False)
        super().main_work_horse(job, queue)


class ChimewayWorker(ChimewayWorkerMixin, rq.Worker):
    """A forking chimeway worker: each job runs in a fresh work horse (``rq.Worker``)."""


class ChimewaySimpleWorker(ChimewayWorkerMixin, rq.SimpleWorker):
    """A chimeway worker that runs jobs in its own process (``rq.SimpleWorker``)."""


_CHIMEWAY_CLASSES: Final[dict[type[BaseWorker], type[ChimewayWorkerMixin]]] = {
    rq.Worker: ChimewayWorker,
    rq.SimpleWorker: ChimewaySimpleWorker,
}


def _check_timeouts(engine: Chimeway, backend: RQBackend) -> None:
    for name, channel in sorted(engine.channels.items()):
        lease = channel.timeout + engine.lease_margin
        if not channel.timeout < backend.job_timeout <= lease:
            _log.warning(
                "channel %r: RQ job_timeout=%s s should be above the channel timeout (%s s) "
                "and at most its lease (%s s = timeout + lease_margin)",
                name,
                backend.job_timeout,
                channel.timeout,
                lease,
            )


def run_worker(
    engine: Chimeway | None = None,
    connection: redis.Redis | None = None,
    queues: Sequence[str] | None = None,
    *,
    burst: bool = False,
    with_scheduler: bool = True,
    worker_class: type[BaseWorker] = ChimewayWorker,
    rescue_interval: float | None = None,
    name: str | None = None,
    logging_level: str = "INFO",
) -> bool:
    """Run a chimeway RQ worker until it is stopped (or, with ``burst``, the queues are empty).

    ``engine`` defaults to the one ``CHIMEWAY_APP`` names; ``connection`` to
    its backend's; ``queues`` (served in that order) to the backend's queue
    then every queue the engine's ``routes`` name (``engine.worker_queues``).
    ``with_scheduler`` runs RQ's scheduler (in burst mode: once, at start),
    which retries and deferrals need.
    ``worker_class`` is :class:`ChimewayWorker` (forking) or
    :class:`ChimewaySimpleWorker`; ``rq.Worker`` and ``rq.SimpleWorker`` mean
    those. Returns whether any job was run.
    """
    if engine is not None:
        _Installed.engine = engine
    engine = current_engine()
    backend = engine.backend
    if not isinstance(backend, RQBackend):
        raise TypeError(f"the engine's backend is {type(backend).__qualname__}, not an RQBackend")
    cls = _CHIMEWAY_CLASSES.get(worker_class, worker_class)
    if not issubclass(cls, ChimewayWorkerMixin):
        raise TypeError(f"{worker_class.__qualname__} is not a chimeway worker class")
    worker = cls(
        list(queues) if queues is not None else engine.worker_queues(backend.queue_name),
        connection=connection if connection is not None else backend.connection,
        engine=engine,
        rescue_interval=rescue_interval,
        name=name,
    )
    return bool(
        worker.work(burst=burst, with_scheduler=with_scheduler, logging_level=logging_level)
    )
