"""Enqueueing deliveries as Celery tasks, and running them: :class:`CeleryBackend`.

The backend registers the task ``chimeway.deliver`` on the application's
own app; every send names its queue, and the task translates
:func:`chimeway_core.worker.run_job`'s verdict into Celery's idiom (see
:mod:`chimeway_backends.celery`).
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any, Final, assert_never
from uuid import UUID

from celery import Celery, signals
from celery.exceptions import SoftTimeLimitExceeded
from kombu.exceptions import OperationalError

from chimeway_backends.celery.beat import RELAY_TASK, RESCUE_TASK
from chimeway_backends.celery.hooks import DEFAULT_QUEUE, TASK_NAME
from chimeway_core._checks import queue_or, seconds
from chimeway_core.backend import Backend
from chimeway_core.engine import Chimeway
from chimeway_core.errors import InvalidJobError
from chimeway_core.jobs import job_id_for
from chimeway_core.worker import EngineSource, Verdict, rescue, run_job

__all__ = ["APP_ATTRIBUTE", "TASK_NAME", "CeleryBackend"]

_log = logging.getLogger(__name__)

#: Where an app keeps its backend.
APP_ATTRIBUTE: Final = "_chimeway_backend"
_BROKER_CONNECT_TIMEOUT: Final = 5.0


class CeleryBackend(Backend):
    """Chimeway's backend on a Celery app: a :class:`~chimeway_core.backend.Backend`.

    Registers the task ``chimeway.deliver`` (its jobs and their retries are
    sent to ``queue``, also called ``default_queue``), the tasks
    ``chimeway.relay`` and ``chimeway.rescue`` (no argument; what
    :func:`~chimeway_backends.celery.beat_schedule` sends) and a worker
    bootstep on ``app``; one backend per app. ``engine`` is what the worker performs
    with: a :class:`Chimeway`, its import path, or ``None`` for
    ``CHIMEWAY_APP``; it is resolved lazily, once per process, so the module
    that builds the engine with this backend can name itself.
    ``rescue_interval`` is how often (seconds) every worker runs the rescuer
    (``None``: never). ``error_retry_delay`` is how long (seconds) a job
    whose ``perform()`` crashed waits before it runs again.

    A soft time limit (``SoftTimeLimitExceeded``, raised inside the channel
    call) is one of its ``interrupts``: the attempt is left in flight and
    rescued as ``unknown``, never recorded as the channel's own failure.
    """

    name = "celery"
    #: Raised by Celery inside a running task to stop it; see :class:`Backend`.
    interrupts: tuple[type[BaseException], ...] = (SoftTimeLimitExceeded,)
    unavailable = (OperationalError, OSError)

    def __init__(
        self,
        app: Any,
        *,
        queue: str = DEFAULT_QUEUE,
        engine: Chimeway | str | None = None,
        rescue_interval: float | None = 30.0,
        error_retry_delay: float = 10.0,
        default_queue: str | None = None,
    ) -> None:
        if default_queue is not None:
            queue = default_queue
        if not isinstance(app, Celery):
            raise TypeError(f"app must be a celery.Celery, not {type(app).__name__}")
        if not isinstance(queue, str) or not queue:
            raise ValueError(f"queue must be a non-empty str, got {queue!r}")
        source = EngineSource(engine)
        if getattr(app, APP_ATTRIBUTE, None) is not None:
            raise ValueError(f"{app!r} already has a CeleryBackend; make one per app")
        if rescue_interval is not None:
            seconds("rescue_interval", rescue_interval, positive=True)
        seconds("error_retry_delay", error_retry_delay)
        self.app = app
        self.queue = queue
        self.rescue_interval = rescue_interval
        self.error_retry_delay = error_retry_delay
        self.source = source
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

        def relay(*args: object, **kwargs: object) -> str:
            return backend._relay(args, kwargs)

        def rescue(*args: object, **kwargs: object) -> str:
            return backend._rescue_now(args, kwargs)

        relay.__doc__ = "Relay chimeway's outbox (engine.relay()); takes no argument."
        rescue.__doc__ = "Run one chimeway rescue pass (engine.rescue()); takes no argument."
        upkeep = {
            "shared": False,
            "serializer": "json",
            "ignore_result": True,
            "max_retries": 0,  # the next tick is the retry
            "typing": False,  # arguments reach the body and raise InvalidJobError
        }
        self.relay_task: Any = app.task(name=RELAY_TASK, **upkeep)(relay)
        self.rescue_task: Any = app.task(name=RESCUE_TASK, **upkeep)(rescue)
        setattr(app, APP_ATTRIBUTE, self)
        # The bootstep lives with the worker side, which imports this module.
        from chimeway_backends.celery.worker import ChimewayStep  # noqa: PLC0415

        app.steps["consumer"].add(ChimewayStep)
        signals.worker_process_init.connect(self._after_fork, weak=True)

    def __repr__(self) -> str:
        return f"CeleryBackend(app={self.app.main!r}, queue={self.queue!r})"

    @property
    def default_queue(self) -> str:
        """The queue jobs go to without ``queue=``: ``queue``."""
        return self.queue

    # -- enqueueing ---------------------------------------------------------
    # The Celery task id is job_id_for(delivery_id); Celery does not
    # deduplicate on it (see the package docstring).

    def _enqueue(self, delivery_id: UUID, at: datetime | None, queue: str) -> None:
        self._send(delivery_id, at=at, producer=None, queue=queue)

    def _enqueue_many(self, delivery_ids: list[UUID], queue: str) -> None:
        with self.app.producer_or_acquire() as producer:  # one producer for them all
            for delivery_id in delivery_ids:
                self._send(delivery_id, at=None, producer=producer, queue=queue)

    def _send(self, delivery_id: UUID, *, at: datetime | None, producer: Any, queue: str) -> None:
        self.task.apply_async(
            (str(delivery_id),),
            task_id=job_id_for(delivery_id),
            eta=at,
            queue=queue,
            producer=producer,
        )

    def _ping(self) -> None:
        with self.app.connection_for_write() as connection:
            connection.ensure_connection(
                max_retries=1, interval_start=0, timeout=_BROKER_CONNECT_TIMEOUT
            )

    def _service(self) -> str:
        return f"the Celery broker at {self.broker_uri()}"

    def broker_uri(self) -> str:
        """The broker's URL as kombu shows it, the password masked (``**``)."""
        with self.app.connection_for_write() as connection:
            return str(connection.as_uri())

    # -- the worker side ----------------------------------------------------

    def bind(self, engine: Chimeway) -> None:
        """Perform this process's jobs with ``engine`` (built after, and with, this backend).

        The in-process alternative to an import path: ``backend =
        CeleryBackend(app); engine = Chimeway(store, backend, ...);
        backend.bind(engine)``. Raises :class:`ValueError` if another engine
        is already in use.
        """
        try:
            self.source.install(engine, replace=False)
        except ValueError:
            raise ValueError("this CeleryBackend already performs with another engine") from None

    def engine(self) -> Chimeway:
        """The engine this backend's tasks perform with, resolved once per process."""
        return self.source.get()

    def _deliver(self, task: Any, args: tuple[object, ...], kwargs: dict[str, object]) -> str:
        try:
            verdict = run_job(self.source, args, kwargs)
        except InvalidJobError:
            raise  # a job that is no delivery id fails for good
        except Exception as error:
            delivery = args[0] if args else None
            _log.exception(
                "chimeway job for delivery %s crashed; retrying in %ss",
                delivery,
                self.error_retry_delay,
            )
            engine = self.source.current
            queue = self.queue if engine is None else self._came_from(task, engine)
            raise task.retry(
                exc=error, countdown=self.error_retry_delay, max_retries=None, queue=queue
            ) from error
        match verdict.verdict:
            case Verdict.ACK:
                return verdict.summary
            case Verdict.AGAIN:
                queue = queue_or(verdict.queue, self.queue)
                raise task.retry(eta=verdict.run_at, max_retries=None, queue=queue)
            case Verdict.FAIL:
                assert verdict.error is not None
                if verdict.run_at is not None:
                    queue = queue_or(verdict.queue, self.queue)
                    task.retry(eta=verdict.run_at, max_retries=None, queue=queue, throw=False)
                raise verdict.error
            case _:
                assert_never(verdict.verdict)

    def _came_from(self, task: Any, engine: Chimeway) -> str:
        """The queue a running job's message came from, if it is one of the engine's."""
        info = getattr(task.request, "delivery_info", None) or {}
        key = info.get("routing_key")
        return key if isinstance(key, str) and key in engine.queues else self.queue

    def _after_fork(self, **_: object) -> None:
        # A prefork child inherits the parent's pooled connections; the solo
        # pool sends the same signal in the parent itself: nothing to do there.
        self.source.after_fork()

    def _rescue(self) -> None:
        rescue(self.source, self.rescue_interval)

    # -- the upkeep tasks (beat_schedule) -------------------------------------
    # Exceptions propagate: Celery records the task as failed, and the next
    # tick tries again. Both are safe on several workers at once.

    def _relay(self, args: tuple[object, ...], kwargs: dict[str, object]) -> str:
        _no_arguments(args, kwargs)
        return f"relayed {self.source.get().relay()} outbox rows"

    def _rescue_now(self, args: tuple[object, ...], kwargs: dict[str, object]) -> str:
        _no_arguments(args, kwargs)
        report = self.source.get().rescue()
        return (
            f"{report.resolved} lost attempts resolved, {report.requeued} deliveries requeued, "
            f"{report.pending} already pending, {report.relayed} relayed, {report.pruned} pruned"
        )


def _no_arguments(args: tuple[object, ...], kwargs: dict[str, object]) -> None:
    """Refuse a relay or rescue message that carries anything: chimeway never sends one."""
    if args or kwargs:
        raise InvalidJobError({"args": list(args), "kwargs": kwargs})
