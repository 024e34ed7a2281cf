"""RQ workers that run chimeway jobs: :class:`ChimewayWorker`, :func:`run_worker`.

A chimeway worker is an RQ worker (:class:`ChimewayWorkerMixin` mixed into
``rq.Worker`` or ``rq.SimpleWorker``) that finds its engine once per process
(:data:`chimeway_backends.rq.job.ENGINE`), reads jobs as JSON and as
:class:`~chimeway_backends.rq.job.ChimewayJob` only, skips what it cannot
read instead of stopping (:mod:`chimeway_backends.rq.reading`, for its queues,
their intermediate lists and RQ's scheduler), runs the engine's rescuer
every ``rescue_interval`` seconds from its main loop (between jobs and
while idle; :func:`chimeway_core.worker.rescue`), and in a forking worker
drops the inherited database pool in each work horse
(:meth:`~chimeway_core.worker.EngineSource.after_fork`).

Each rescue pass also keeps scheduled jobs moving when RQ's scheduler does
not: a worker whose scheduler is not running tries to take over the
scheduler lock (RQ itself tries only in its maintenance, every
``maintenance_interval`` seconds), and jobs left scheduled past due by more
than :data:`~chimeway_backends.rq.backend.OVERDUE_AFTER` seconds are put on
their queue (:meth:`~chimeway_backends.rq.RQBackend.release_overdue`): a
killed scheduler holds its lock for a minute after its death.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from typing import Any, ClassVar, Final

import redis
import rq
from rq.exceptions import StopRequested
from rq.job import Job
from rq.serializers import JSONSerializer, resolve_serializer
from rq.utils import now
from rq.worker import BaseWorker, WorkerStatus

from chimeway_backends.rq.backend import OVERDUE_AFTER, RQBackend
from chimeway_backends.rq.job import ENGINE, ChimewayJob, ChimewayJSONSerializer
from chimeway_backends.rq.limits import ChimewayDeathPenalty, check_timeouts
from chimeway_backends.rq.reading import ChimewayQueue, ChimewayScheduler
from chimeway_core._checks import whole
from chimeway_core.engine import Chimeway, RescueReport
from chimeway_core.errors import WorkerCrashedError
from chimeway_core.worker import rescue
from chimeway_core.worker import rescue_interval as rescue_interval_or_env

__all__ = [
    "DEFAULT_MAINTENANCE_INTERVAL",
    "ChimewaySimpleWorker",
    "ChimewayWorker",
    "ChimewayWorkerMixin",
    "run_worker",
]

#: Seconds between RQ's maintenance passes in a chimeway worker (RQ's own: 600).
#: RQ cleans its registries then, and takes over a dead scheduler's lock.
DEFAULT_MAINTENANCE_INTERVAL: Final = 60

_log = logging.getLogger(__name__)

_JSON_SERIALIZERS: Final = (JSONSerializer, ChimewayJSONSerializer)


class ChimewayWorkerMixin(BaseWorker):
    """What makes an RQ worker a chimeway worker; mix it in before an RQ worker class.

    Takes two keyword arguments on top of RQ's: ``engine`` (default: the
    engine ``CHIMEWAY_APP`` names) and ``rescue_interval`` (seconds; default
    ``CHIMEWAY_RESCUE_INTERVAL`` or 30); RQ's ``maintenance_interval``
    defaults to :data:`DEFAULT_MAINTENANCE_INTERVAL`. Jobs are always deserialized as JSON,
    whatever serializer was asked for, as :class:`ChimewayJob` whatever job
    class was asked for, so only :func:`deliver` ever runs. RQ's job timeout
    raises :class:`JobTimeLimitExceeded`, at each channel's own limit unless
    the backend sets one ``job_timeout`` (:mod:`~chimeway_backends.rq.limits`);
    the worker warns at start where a limit cannot fit. Its queues are
    :class:`~chimeway_backends.rq.reading.ChimewayQueue` and its scheduler a
    :class:`~chimeway_backends.rq.reading.ChimewayScheduler`, so no job id
    or hash on its queues stops it; a failing registry cleanup is logged.
    """

    death_penalty_class = ChimewayDeathPenalty
    #: How long the listener on RQ's command channel blocks in one read.
    #: RQ's own 60 s makes a shutdown (or a burst's end) hang up to that long
    #: now and then: unsubscribe() gives the listener 1 s to stop, then closes
    #: the connection it may still be reading, which waits for the read.
    command_listen_seconds: ClassVar[float] = 0.5
    job_class = ChimewayJob
    queue_class = ChimewayQueue

    def __init__(
        self,
        queues: Any,
        *args: Any,
        engine: Chimeway | None = None,
        rescue_interval: float | None = None,
        **kwargs: Any,
    ) -> None:
        # Set before RQ's __init__, which reads dequeue_timeout.
        self.rescue_interval = rescue_interval_or_env(rescue_interval)
        self._next_rescue = time.monotonic()
        self._burst = False
        interval = kwargs.get("maintenance_interval")
        kwargs["maintenance_interval"] = (
            DEFAULT_MAINTENANCE_INTERVAL
            if interval is None
            else whole("maintenance_interval", interval, minimum=1)
        )
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
        queue_class = kwargs.get("queue_class")
        if not (isinstance(queue_class, type) and issubclass(queue_class, ChimewayQueue)):
            if queue_class not in {None, rq.Queue, "rq.Queue", "rq.queue.Queue"}:
                _log.warning("chimeway workers read chimeway queues only; ignoring %s", queue_class)
            kwargs["queue_class"] = ChimewayQueue
        # Set by every way the loop may end that is not a crash (see _crashed).
        self._ended_cleanly = False
        names = [
            queue.name if isinstance(queue, rq.Queue) else queue
            for queue in ([queues] if isinstance(queues, str | rq.Queue) else queues)
        ]
        super().__init__(names, *args, **kwargs)
        if engine is not None:
            ENGINE.install(engine)
        self.engine = ENGINE.get()
        if not isinstance(self.engine.backend, RQBackend):
            raise TypeError(
                f"a chimeway RQ worker needs an engine whose backend is an RQBackend, "
                f"not {type(self.engine.backend).__qualname__}"
            )
        check_timeouts(
            self.engine,
            self.engine.backend.job_timeout,
            per_channel=issubclass(self.death_penalty_class, ChimewayDeathPenalty),
        )
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

    def work(self, burst: bool = False, *args: Any, **kwargs: Any) -> bool:
        """RQ's work loop; remembers ``burst`` (when no scheduler may be started).

        See :meth:`_crashed` for how it ended.
        """
        self._burst = burst
        self._ended_cleanly = False
        return bool(super().work(burst, *args, **kwargs))

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
            self._keep_schedules_moving()
            report = rescue(self.engine, self.rescue_interval)
        except Exception:
            _log.exception("chimeway rescue failed; trying again in %s s", self.rescue_interval)
            report = None
        finally:
            self.set_state(state)
        if self._stop_requested:
            raise StopRequested
        return report

    def _keep_schedules_moving(self) -> None:
        """Take over a free scheduler lock; put jobs the scheduler left overdue on their queues.

        Logs, never raises: the engine's rescue runs after it whatever happens here.
        """
        try:
            self._take_over_scheduling()
        except Exception:
            _log.exception("keeping RQ's scheduled jobs moving failed; trying again next pass")

    def _take_over_scheduling(self) -> None:
        scheduler = self.scheduler
        process: Any = getattr(scheduler, "_process", None)  # what RQ's maintenance checks
        if (
            scheduler is not None
            and not self._burst
            and (process is None or not process.is_alive())
        ):
            # What RQ's maintenance does, on the rescuer's interval: a killed scheduler's lock
            # expires a minute after its death, and the next worker to ask takes it over.
            scheduler.acquire_locks(auto_start=True)  # type: ignore[no-untyped-call]  # rq untyped
        backend = self.engine.backend
        assert isinstance(backend, RQBackend)  # checked in __init__
        for queue in self.queues:
            released = backend.release_overdue(queue.name)
            if released:
                _log.warning(
                    "put %d jobs overdue by more than %g s on queue %r: is RQ's scheduler running?",
                    released,
                    OVERDUE_AFTER,
                    queue.name,
                )

    def _crashed(self) -> bool:
        """Whether the last :meth:`work` ended on an error.

        RQ's loop logs any exception as "found an unhandled exception,
        quitting..." and returns as it does when asked to stop; the other
        ways out (a stop request or signal, an empty queue in burst mode or
        an idle timeout, a suspension in burst mode) mark it clean.
        """
        return not (self._ended_cleanly or self._stop_requested)

    def request_stop(self, signum: int, frame: Any) -> None:
        """RQ's warm shutdown (SIGINT, SIGTERM, RQ's shutdown command)."""
        self._ended_cleanly = True
        super().request_stop(signum, frame)  # type: ignore[no-untyped-call]  # rq untyped

    def check_for_suspension(self, burst: bool) -> None:
        """RQ's suspension check; a suspended burst worker ends cleanly."""
        try:
            super().check_for_suspension(burst)
        except StopRequested:
            self._ended_cleanly = True
            raise

    def dequeue_job_and_maintain_ttl(
        self, timeout: int | None, max_idle_time: int | None = None
    ) -> tuple[Job, rq.Queue] | None:
        """RQ's dequeue; the job's origin is the queue it came from, whatever its hash says."""
        result = super().dequeue_job_and_maintain_ttl(timeout, max_idle_time)
        if result is None:
            self._ended_cleanly = True  # burst: the queues are empty; or idle long enough
            return None
        job, queue = result
        job.origin = queue.name
        return job, queue

    def clean_registries(self) -> None:
        """RQ's registry cleanup; a failure is logged, and tried again at the next maintenance."""
        try:
            super().clean_registries()  # type: ignore[no-untyped-call]  # rq untyped
        except Exception:
            self.last_cleaned_at = now()  # type: ignore[assignment]  # rq types it None
            _log.exception("RQ registry cleanup failed; the worker goes on")

    def clean_group_registries(self) -> None:
        """RQ's group registry cleanup; a failure is logged."""
        try:
            super().clean_group_registries()  # type: ignore[no-untyped-call]  # rq untyped
        except Exception:
            _log.exception("RQ group registry cleanup failed; the worker goes on")

    def _start_scheduler(
        self,
        burst: bool = False,
        logging_level: str | None = "INFO",
        date_format: str = rq.defaults.DEFAULT_LOGGING_DATE_FORMAT,
        log_format: str = rq.defaults.DEFAULT_LOGGING_FORMAT,
    ) -> None:
        """RQ's, with a :class:`~chimeway_backends.rq.reading.ChimewayScheduler`."""
        self.scheduler = ChimewayScheduler(
            self.queues,
            connection=self.connection,
            logging_level=logging_level if logging_level is not None else self.log.level,
            date_format=date_format,
            log_format=log_format,
            serializer=self.serializer,
        )
        self.scheduler.acquire_locks()  # type: ignore[no-untyped-call]  # rq untyped
        if self.scheduler.acquired_locks:
            if burst:
                try:
                    self.scheduler.register_birth()
                    self.scheduler.enqueue_scheduled_jobs()
                finally:
                    self.scheduler.release_locks()  # type: ignore[no-untyped-call]  # rq untyped
                    self.scheduler.register_death()
            else:
                self.scheduler.start()  # type: ignore[no-untyped-call]  # rq untyped

    def main_work_horse(self, job: rq.job.Job, queue: rq.Queue) -> None:
        """In a forked work horse: drop the inherited database pool, then run the job.

        ``close=False`` leaves the parent's connections open for the parent;
        the horse opens its own (SQLAlchemy, "Using Connection Pools with
        Multiprocessing or os.fork()").
        """
        ENGINE.after_fork()
        super().main_work_horse(job, queue)


class ChimewayWorker(ChimewayWorkerMixin, rq.Worker):
    """A forking chimeway worker: each job runs in a fresh work horse (``rq.Worker``)."""


class ChimewaySimpleWorker(ChimewayWorkerMixin, rq.SimpleWorker):
    """A chimeway worker that runs jobs in its own process (``rq.SimpleWorker``)."""


_CHIMEWAY_CLASSES: Final[dict[type[BaseWorker], type[ChimewayWorkerMixin]]] = {
    rq.Worker: ChimewayWorker,
    rq.SimpleWorker: ChimewaySimpleWorker,
}


def run_worker(
    engine: Chimeway | None = None,
    connection: redis.Redis | None = None,
    queues: Sequence[str] | None = None,
    *,
    burst: bool = False,
    with_scheduler: bool = True,
    worker_class: type[BaseWorker] = ChimewayWorker,
    rescue_interval: float | None = None,
    maintenance_interval: int | None = None,
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
    those. ``maintenance_interval`` (whole seconds, default
    :data:`DEFAULT_MAINTENANCE_INTERVAL`) is RQ's: how often it cleans its
    registries. Returns whether any job was run; raises
    :class:`~chimeway_core.errors.WorkerCrashedError` when the worker's loop
    ended on an error (logged by RQ) rather than on a stop request or, in
    burst mode, an empty queue.
    """
    if engine is not None:
        ENGINE.install(engine)
    engine = ENGINE.get()
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
        maintenance_interval=maintenance_interval,
        name=name,
    )
    worked = worker.work(burst=burst, with_scheduler=with_scheduler, logging_level=logging_level)
    if worker._crashed():
        raise WorkerCrashedError("rq", worker.name)
    return worked
