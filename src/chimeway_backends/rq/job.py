"""The RQ job: :func:`deliver`, and what makes a worker run it and nothing else.

:func:`deliver` runs one job through :func:`chimeway_core.worker.run_job`
and says the verdict in RQ's idiom: ``ACK`` returns a short string; a
retry or deferral returns a :class:`DeliveryRetry`, so RQ schedules *this
same job id* again after the job has ended, inside the worker's own
bookkeeping transaction (a running job cannot race its own hash that way);
an :class:`~chimeway_core.errors.UnhandledOutcomeError` schedules the job at
its ``run_at``, then fails it. :class:`ChimewayJob` resolves to
:func:`deliver` or to nothing (:class:`ForeignJobError`), so a job naming
other code or a callback never runs; :class:`ChimewayDeathPenalty` makes
RQ's job timeout a :class:`JobTimeLimitExceeded`.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any, assert_never

import rq
from rq.job import Job
from rq.serializers import JSONSerializer
from rq.timeouts import BaseTimeoutException, JobTimeoutException, UnixSignalDeathPenalty

from chimeway_backends.rq.backend import DELIVER, not_before
from chimeway_core.engine import Chimeway
from chimeway_core.errors import ChimewayError
from chimeway_core.worker import EngineSource, Verdict, run_job

__all__ = [
    "ENGINE",
    "ChimewayDeathPenalty",
    "ChimewayJSONSerializer",
    "ChimewayJob",
    "DeliveryRetry",
    "ForeignJobError",
    "JobTimeLimitExceeded",
    "current_engine",
    "deliver",
]

_log = logging.getLogger(__name__)

#: The engine jobs run on in this process: the one a worker installed, or
#: else the one ``CHIMEWAY_APP`` names, loaded on first use.
ENGINE = EngineSource(None)


def current_engine() -> Chimeway:
    """The engine jobs run on in this process.

    The one a worker was given, or else the one ``CHIMEWAY_APP`` names,
    loaded on first use and kept for the life of the process.
    """
    return ENGINE.get()


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
    verdict = run_job(ENGINE, args, kwargs)
    match verdict.verdict:
        case Verdict.ACK:
            return verdict.summary
        case Verdict.AGAIN:
            assert verdict.run_at is not None  # every verdict but ack has one
            return _retry_at(verdict.run_at, verdict.summary)
        case Verdict.FAIL:
            assert verdict.error is not None
            job = rq.get_current_job()
            if verdict.run_at is not None and job is not None:
                queue = rq.Queue(job.origin, connection=job.connection, serializer=job.serializer)
                queue.schedule_job(job, not_before(verdict.run_at))
            raise verdict.error
        case _:
            assert_never(verdict.verdict)


# Jobs name it by its public path (DELIVER), whether given the function or the string.
deliver.__module__ = DELIVER.rpartition(".")[0]


def _retry_at(run_at: datetime, summary: str) -> DeliveryRetry:
    now = time.time()
    target = run_at.timestamp()
    # RQ schedules at (its now + interval) truncated to the second: aim for the
    # whole second after run_at so the truncation never lands before it.
    interval = 0 if target <= now else math.ceil(math.ceil(target) - now)
    job = rq.get_current_job()
    retried = (job.number_of_retries or 0) if job is not None else 0
    return DeliveryRetry(max=retried + 1, interval=interval, summary=summary)


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
