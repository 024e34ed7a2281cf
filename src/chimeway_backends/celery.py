"""The Celery backend: chimeway deliveries as tasks on the user's Celery app.

Theory of operation
-------------------
:class:`CeleryBackend` registers one task, ``chimeway.deliver``, on the
application's own :class:`celery.Celery` app. Its only argument is a delivery
id (a canonical UUID string); anything else (another type, a second
argument, a keyword) raises :class:`~chimeway_core.errors.InvalidJobError`
before the ledger is read, and the task fails without a retry.

The task is declared JSON-only, acknowledged late and rejected (requeued)
when its worker process dies, with no result stored and no retry limit of its
own. A worker calls :meth:`Chimeway.perform <chimeway_core.engine.Chimeway.perform>`
and translates what comes back, as :mod:`chimeway_core.jobs` prescribes:

- ``ACK``: the task returns; Celery records a success.
- ``RETRY`` / ``DEFER``: ``self.retry(eta=run_at)``, so Celery's events and
  monitors show a retry. Celery's retry counter never stops a delivery: the
  ledger owns the attempt number and the dispatch table decides when to stop.
- :class:`~chimeway_core.errors.UnhandledOutcomeError`: the next run is sent
  for the error's ``run_at`` (when the engine set one), then the error is
  raised so Celery records a failure carrying the whole shape.
- any other exception (the database is down, the worker lacks a channel):
  logged, and retried after ``error_retry_delay`` seconds.

Every send names its queue: the backend's ``queue``, or for a routed
channel (``Chimeway(routes=...)``) the route's, which the engine passes as
``queue=`` and carries on a retry's result and on ``UnhandledOutcomeError``.
A retry never relies on Celery to find the queue again (on Redis it sends
retries to the default queue: celery/celery#3622); a job whose ``perform()``
crashed goes back to the queue its message came from when that is one of
the engine's queues (by its routing key), else to the backend's ``queue``.

Every job of one delivery has the Celery task id
:func:`~chimeway_core.jobs.job_id_for`, retries included. Celery does not
deduplicate on task ids: a second enqueue of a pending delivery makes a
second message. That is harmless by construction: ``perform()`` acknowledges
a terminal, leased or not-yet-due delivery without side effect, and one job
at a time wins the claim. Results are never stored (``ignore_result``), so a
repeated id never collides in a result backend.

The engine is found from an import path (``module:attribute``, a
:class:`~chimeway_core.engine.Chimeway` or a zero-argument callable returning
one), given as ``engine=`` or through the ``CHIMEWAY_APP`` environment
variable, and resolved once per worker process. A prefork child inherits the
parent's engine with the parent's database connections: on
``worker_process_init`` the child drops them (``dispose(close=False)``).

A consumer bootstep, added to the app by the backend, runs in every worker
(``celery -A proj worker`` as well as :func:`run_worker`): at start it
resolves the engine and warns about risky settings
(:func:`check_configuration`); then it runs
:meth:`Chimeway.rescue <chimeway_core.engine.Chimeway.rescue>` every
``rescue_interval`` seconds on the worker's own timer.
"""

from __future__ import annotations

import logging
import os
import threading
import warnings
from collections.abc import Sequence
from datetime import datetime
from typing import Any, assert_never
from uuid import UUID

from chimeway_core._checks import queue_or, seconds
from chimeway_core.clock import ensure_aware
from chimeway_core.engine import Chimeway
from chimeway_core.errors import (
    InvalidJobError,
    MissingExtraError,
    UnhandledOutcomeError,
)
from chimeway_core.jobs import JobKind, job_id_for, parse_delivery_id
from chimeway_core.loading import APP_VARIABLE, load_engine

try:
    from celery import Celery, bootsteps, signals
    from celery.exceptions import SoftTimeLimitExceeded
except ImportError as _error:  # pragma: no cover - exercised by monkeypatching sys.modules
    raise MissingExtraError("celery", feature="the Celery backend") from _error

__all__ = [
    "CeleryBackend",
    "CeleryConfigurationWarning",
    "TASK_NAME",
    "check_configuration",
    "run_worker",
    "warn_configuration",
]

_log = logging.getLogger(__name__)

#: The name of the task every delivery job runs.
TASK_NAME = "chimeway.deliver"

#: The environment variable naming the engine when none is given.
ENGINE_ENV = APP_VARIABLE

_APP_ATTRIBUTE = "_chimeway_backend"
_PICKLE = frozenset({"pickle", "application/x-python-serialize"})
_KOMBU_REDIS_VISIBILITY_TIMEOUT = 3600.0


class CeleryConfigurationWarning(UserWarning):
    """A Celery setting weakens chimeway's delivery guarantees (see the message)."""


class CeleryBackend:
    """Chimeway's backend on a Celery app; satisfies :class:`~chimeway_core.jobs.Backend`.

    Registers the task ``chimeway.deliver`` (its jobs and their retries are
    sent to ``queue``) and a
    worker bootstep on ``app``; one backend per app. ``engine`` is what the
    worker performs with: a :class:`Chimeway`, its import path, or ``None``
    for ``CHIMEWAY_APP``; it is resolved lazily, once per process, so the
    module that builds the engine with this backend can name itself.
    ``rescue_interval`` is how often (seconds) every worker runs the rescuer
    (``None``: never). ``error_retry_delay`` is how long a job whose
    ``perform()`` crashed waits before it runs again.

    A soft time limit (``SoftTimeLimitExceeded``, raised inside the channel
    call) is one of its ``interrupts``: the attempt is left in flight and
    rescued as ``unknown``, never recorded as the channel's own failure.
    """

    #: Raised by Celery inside a running task to stop it; see the Backend protocol.
    interrupts: tuple[type[BaseException], ...] = (SoftTimeLimitExceeded,)

    def __init__(
        self,
        app: Any,
        *,
        queue: str = "chimeway",
        engine: Chimeway | str | None = None,
        rescue_interval: float | None = 30.0,
        error_retry_delay: float = 10.0,
    ) -> None:
        if not isinstance(app, Celery):
            raise TypeError(f"app must be a celery.Celery, not {type(app).__name__}")
        if not isinstance(queue, str) or not queue:
            raise ValueError(f"queue must be a non-empty str, got {queue!r}")
        if engine is not None and not isinstance(engine, Chimeway | str):
            raise TypeError(
                f"engine must be a Chimeway, a 'module:attribute' str or None, "
                f"not {type(engine).__name__}"
            )
        if getattr(app, _APP_ATTRIBUTE, None) is not None:
            raise ValueError(f"{app!r} already has a CeleryBackend; make one per app")
        if rescue_interval is not None:
            seconds("rescue_interval", rescue_interval, positive=True)
        seconds("error_retry_delay", error_retry_delay)
        self.app = app
        self.queue = queue
        self.rescue_interval = rescue_interval
        self.error_retry_delay = error_retry_delay
        self._target = engine
        self._engine = engine if isinstance(engine, Chimeway) else None
        self._engine_pid = os.getpid()
        self._engine_lock = threading.Lock()
        backend = self

        def deliver(task: Any, *args: object, **kwargs: object) -> str:
            return backend._deliver(task, args, kwargs)

        deliver.__doc__ = "Perform one chimeway delivery job: the only argument is its id."
        self.task: Any = app.task(
            name=TASK_NAME,
            bind=True,
            shared=False,  # never registered on other apps of the process
            serializer="json",
            acks_late=True,
            reject_on_worker_lost=True,
            ignore_result=True,
            max_retries=None,  # the ledger decides when a delivery stops
            typing=False,  # wrong arguments reach the body and raise InvalidJobError
        )(deliver)
        setattr(app, _APP_ATTRIBUTE, self)
        app.steps["consumer"].add(ChimewayStep)
        signals.worker_process_init.connect(self._after_fork, weak=True)

    def __repr__(self) -> str:
        return f"CeleryBackend(app={self.app.main!r}, queue={self.queue!r})"

    # -- enqueueing ---------------------------------------------------------

    def enqueue(
        self, delivery_id: UUID, *, at: datetime | None = None, queue: str | None = None
    ) -> None:
        """Send a job for ``delivery_id`` to ``queue`` (default: the backend's), now or at ``at``.

        ``at`` must be tz-aware. The Celery task id is
        ``job_id_for(delivery_id)``; Celery does not deduplicate on it (see
        the module docstring).
        """
        self._send(delivery_id, at=at, producer=None, queue=queue_or(queue, self.queue))

    def enqueue_many(self, delivery_ids: Sequence[UUID], *, queue: str | None = None) -> None:
        """Send jobs for several deliveries to ``queue``, due now, over one producer."""
        name = queue_or(queue, self.queue)
        if not delivery_ids:
            return
        with self.app.producer_or_acquire() as producer:
            for delivery_id in delivery_ids:
                self._send(delivery_id, at=None, producer=producer, queue=name)

    def _send(self, delivery_id: UUID, *, at: datetime | None, producer: Any, queue: str) -> None:
        if not isinstance(delivery_id, UUID):
            raise TypeError(f"delivery_id must be a UUID, not {type(delivery_id).__name__}")
        eta = None if at is None else ensure_aware(at, "at")
        self.task.apply_async(
            (str(delivery_id),),
            task_id=job_id_for(delivery_id),
            eta=eta,
            queue=queue,
            producer=producer,
        )

    # -- the worker side ----------------------------------------------------

    def bind(self, engine: Chimeway) -> None:
        """Perform this process's jobs with ``engine`` (built after, and with, this backend).

        The in-process alternative to an import path: ``backend =
        CeleryBackend(app); engine = Chimeway(store, backend, ...);
        backend.bind(engine)``. Raises :class:`ValueError` if another engine
        is already in use.
        """
        with self._engine_lock:
            if self._engine is not None and self._engine is not engine:
                raise ValueError("this CeleryBackend already performs with another engine")
            self._engine, self._engine_pid = engine, os.getpid()

    def engine(self) -> Chimeway:
        """The engine this backend's tasks perform with, resolved once per process."""
        engine = self._engine
        if engine is None:
            with self._engine_lock:
                if self._engine is None:
                    self._engine, self._engine_pid = load_engine(self._target), os.getpid()
                engine = self._engine
        return engine

    def _deliver(self, task: Any, args: tuple[object, ...], kwargs: dict[str, object]) -> str:
        if kwargs or len(args) != 1:
            raise InvalidJobError({"args": args, "kwargs": kwargs})
        delivery_id = parse_delivery_id(args[0])
        engine: Chimeway | None = None
        try:
            engine = self.engine()
            result = engine.perform(delivery_id)
        except UnhandledOutcomeError as error:
            if error.run_at is not None:
                queue = queue_or(error.queue, self.queue)
                task.retry(eta=error.run_at, max_retries=None, queue=queue, throw=False)
            raise
        except Exception as error:
            _log.exception(
                "chimeway job for delivery %s crashed; retrying in %ss",
                delivery_id,
                self.error_retry_delay,
            )
            queue = self.queue if engine is None else self._came_from(task, engine)
            raise task.retry(
                exc=error, countdown=self.error_retry_delay, max_retries=None, queue=queue
            ) from error
        match result.kind:
            case JobKind.ACK:
                return f"{result.kind.value}: {result.detail}"
            case JobKind.RETRY | JobKind.DEFER:
                queue = queue_or(result.queue, self.queue)
                raise task.retry(eta=result.run_at, max_retries=None, queue=queue)
            case _:
                assert_never(result.kind)

    def _came_from(self, task: Any, engine: Chimeway) -> str:
        """The queue a running job's message came from, if it is one of the engine's."""
        info = getattr(task.request, "delivery_info", None) or {}
        key = info.get("routing_key")
        return key if isinstance(key, str) and key in engine.queues else self.queue

    def _after_fork(self, **_: object) -> None:
        # A prefork child inherits the parent's pooled connections: forget
        # them without closing the sockets the parent still uses. The solo
        # pool sends the same signal in the parent itself: nothing to do.
        with self._engine_lock:
            if self._engine is not None and self._engine_pid != os.getpid():
                self._engine.store.engine.dispose(close=False)
                self._engine_pid = os.getpid()

    def _rescue(self) -> None:
        try:
            report = self.engine().rescue()
        except Exception:
            _log.exception("chimeway rescue pass failed; trying again in %ss", self.rescue_interval)
            return
        if not report.idle:
            _log.info(
                "chimeway rescue: resolved=%d requeued=%d relayed=%d pruned=%d",
                report.resolved,
                report.requeued,
                report.relayed,
                report.pruned,
            )


def _backend_of(app: Any) -> CeleryBackend:
    backend = getattr(app, _APP_ATTRIBUTE, None)
    if not isinstance(backend, CeleryBackend):
        raise TypeError(f"{app!r} has no CeleryBackend")
    return backend


class ChimewayStep(bootsteps.StartStopStep):  # type: ignore[misc]  # celery is untyped
    """The worker-side bootstep: checks the configuration, then runs the rescuer.

    Added to the app's consumer blueprint by :class:`CeleryBackend`, so every
    worker of the app has it. At start it resolves the engine in the main
    process (a wrong import path stops the worker at once) and warns about
    risky settings; then it calls ``rescue()`` every ``rescue_interval``
    seconds on the worker's timer.
    """

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, c: Any, **kwargs: Any) -> None:
        self.tref: Any = None
        super().__init__(c, **kwargs)

    def start(self, c: Any) -> None:
        """Resolve the engine, warn about settings, start the rescue timer."""
        backend = _backend_of(c.app)
        warn_configuration(c.app, longest_delay=_longest_delay(backend.engine()))
        if backend.rescue_interval is not None:
            self.tref = c.timer.call_repeatedly(backend.rescue_interval, backend._rescue)

    def stop(self, c: Any) -> None:  # noqa: ARG002 - the bootstep protocol's shape
        """Stop the rescue timer."""
        if self.tref is not None:
            self.tref.cancel()
            self.tref = None

    shutdown = stop


def _longest_delay(engine: Chimeway) -> float:
    return max(policy.max_delay for policy in (engine.retry, *engine.channel_retry.values()))


def check_configuration(app: Any, *, longest_delay: float) -> list[str]:
    """What in ``app``'s configuration weakens chimeway's guarantees; one line per problem.

    ``longest_delay`` is the longest retry delay chimeway may schedule, in
    seconds (``RetryPolicy.max_delay``). Checked: the Redis visibility
    timeout against it (an unacknowledged eta task is redelivered when it
    runs out), late acknowledgement and reject-on-worker-lost on the
    chimeway task, pickle in ``accept_content``, the prefetch multiplier,
    eager mode and ``worker_deduplicate_successful_tasks``. An empty list
    means nothing to report.
    """
    conf = app.conf
    problems: list[str] = []
    with app.connection_for_write() as connection:
        driver = connection.transport.driver_type
    if driver == "redis":
        options = conf.broker_transport_options or {}
        timeout = float(options.get("visibility_timeout", _KOMBU_REDIS_VISIBILITY_TIMEOUT))
        if timeout < longest_delay:
            problems.append(
                f"broker_transport_options['visibility_timeout'] is {timeout:g} s, shorter "
                f"than the longest retry delay ({longest_delay:g} s): Redis redelivers an "
                "eta task that long unacknowledged, so jobs are duplicated; raise it above "
                "RetryPolicy.max_delay"
            )
    task = getattr(app, _APP_ATTRIBUTE, None)
    task = task.task if isinstance(task, CeleryBackend) else None
    acks_late = task.acks_late if task is not None else conf.task_acks_late
    reject = task.reject_on_worker_lost if task is not None else conf.task_reject_on_worker_lost
    if not acks_late:
        problems.append(
            "late acknowledgement is off (task_acks_late): a job acknowledged before it "
            "runs is lost when its worker dies"
        )
    if not reject:
        problems.append(
            "task_reject_on_worker_lost is off: the job of a worker process that died "
            "mid-call is not requeued"
        )
    accepted = {str(item) for item in conf.accept_content or ()}
    if accepted & _PICKLE:
        problems.append(
            "accept_content allows pickle: a message on the queue can run code in the "
            "worker; chimeway's jobs are JSON, accept ['json'] only"
        )
    if conf.worker_prefetch_multiplier != 1:
        problems.append(
            f"worker_prefetch_multiplier is {conf.worker_prefetch_multiplier}; 1 is "
            "recommended so a busy or dying worker holds no more jobs than it runs"
        )
    if conf.task_always_eager:
        problems.append(
            "task_always_eager is on: retries run at once, ignoring their eta; use a "
            "worker (or chimeway's memory backend in tests)"
        )
    if conf.worker_deduplicate_successful_tasks:
        problems.append(
            "worker_deduplicate_successful_tasks is on: a delivery's jobs share one task "
            "id, so a redelivered job can be skipped as a duplicate of an earlier one"
        )
    return problems


def warn_configuration(app: Any, *, longest_delay: float) -> None:
    """Issue a :class:`CeleryConfigurationWarning` per :func:`check_configuration` problem."""
    for problem in check_configuration(app, longest_delay=longest_delay):
        warnings.warn(problem, CeleryConfigurationWarning, stacklevel=2)


def run_worker(
    engine: Chimeway | str | None = None,
    *,
    pool: str = "prefork",
    concurrency: int | None = None,
    loglevel: str = "INFO",
    rescue_interval: float | None = 30.0,
    hostname: str | None = None,
    queues: Sequence[str] | None = None,
) -> int:
    """Run a Celery worker for ``engine``'s deliveries until it is shut down; return its exit code.

    ``engine`` is resolved by :func:`chimeway_core.loading.load_engine`; its backend must be a
    :class:`CeleryBackend`. The worker consumes ``queues`` (default: the
    backend's queue, then every queue the engine's ``routes`` name) with the
    given ``pool`` (``"prefork"``, ``"solo"``, ``"threads"`` ...) and
    ``concurrency`` (Celery's default: the number of CPUs), a prefetch
    multiplier of 1, and runs the rescuer every ``rescue_interval`` seconds
    (``None``: not in this worker). Same as ``celery -A <app> worker -Q <queue>
    --prefetch-multiplier 1``, with the engine resolved before it starts.
    """
    resolved = load_engine(engine)
    backend = resolved.backend
    if not isinstance(backend, CeleryBackend):
        raise TypeError(f"the engine's backend is {type(backend).__name__}, not a CeleryBackend")
    if backend._engine is None:
        backend.bind(resolved)
    backend.rescue_interval = rescue_interval
    worker = backend.app.Worker(
        pool_cls=pool,
        concurrency=concurrency,
        queues=list(queues) if queues is not None else resolved.worker_queues(backend.queue),
        loglevel=loglevel,
        prefetch_multiplier=1,
        hostname=hostname,
    )
    worker.start()
    return int(worker.exitcode or 0)
