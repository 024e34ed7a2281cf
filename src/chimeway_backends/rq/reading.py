"""What a chimeway RQ worker reads from Redis, read so that no bytes stop it.

A queue, RQ's intermediate list and the scheduled registry hold job ids,
and each id a job hash, that anyone with the Redis URL may have written.
RQ's own readers raise on an id or a hash they cannot decode, and the
exception ends RQ's worker loop (the worker exits) or its scheduler process
(scheduled jobs stall). Here every id is read on its own:

- :class:`ChimewayQueue` dequeues as RQ does; a job it cannot read (an id
  that is not RQ's form, a key that is not a hash) is *skipped*: taken off
  the intermediate list and added to the queue's ``FailedJobRegistry``,
  with an error log line naming it, and the worker goes on to the next job.
- :class:`ChimewayIntermediateQueue` is RQ's intermediate-list cleanup with
  the same skip, so a poison left there by an earlier worker cannot stop
  the next one at its first maintenance.
- :class:`ChimewayScheduler` is RQ's scheduler reading scheduled jobs as
  :class:`~chimeway_backends.rq.job.ChimewayJob` (whose hash reading never
  raises on a field), skipping what it cannot read, and logging (not
  dying of) any other failure of one pass.

Job hashes themselves are read by :class:`~chimeway_backends.rq.job.ChimewayJob`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Final

import redis
import rq
from rq.defaults import DEFAULT_FAILURE_TTL
from rq.exceptions import NoSuchJobError
from rq.intermediate_queue import IntermediateQueue
from rq.job import JOB_ID_PATTERN, Job
from rq.registry import ScheduledJobRegistry
from rq.scheduler import RQScheduler
from rq.utils import current_timestamp, get_version

from chimeway_backends.rq.job import ChimewayJob

if TYPE_CHECKING:
    from rq.serializers import Serializer
    from rq.timeouts import BaseDeathPenalty
    from rq.worker import BaseWorker

__all__ = ["ChimewayIntermediateQueue", "ChimewayQueue", "ChimewayScheduler", "skip_job"]

_log = logging.getLogger(__name__)

#: Errors that mean Redis is away, not that a job is bad: RQ waits and tries again.
_UNREACHABLE: Final = (redis.ConnectionError, redis.TimeoutError)


def _job_id(raw: bytes | str) -> str | None:
    """``raw`` as a job id in RQ's form (letters, digits, ``_``, ``-``), or None."""
    try:
        text = raw.decode("ascii") if isinstance(raw, bytes) else raw
    except UnicodeDecodeError:
        return None
    return text if JOB_ID_PATTERN.fullmatch(text) else None


def _shown(raw: bytes | str) -> str:
    """An id as a log line may print it: RQ's form as it is, anything else as a short repr."""
    job_id = _job_id(raw)
    if job_id is not None and len(job_id) <= 100:
        return job_id
    text = repr(raw)
    return text if len(text) <= 100 else f"{text[:97]}..."


def skip_job(
    queue: rq.Queue, raw_id: bytes | str, problem: str, *, held_in: str | None = None
) -> None:
    """Take a job that cannot be read out of the way, into the ``FailedJobRegistry``; log it.

    The id leaves the intermediate list (or ``held_in``, a sorted set, when
    given) and, when it is in RQ's form, goes to the queue's
    ``FailedJobRegistry`` (an operator finds it with ``rq info`` and deletes
    it); an id that is not is only removed.
    """
    job_id = _job_id(raw_id)
    with queue.connection.pipeline() as pipe:
        if held_in is None:
            pipe.lrem(queue.intermediate_queue_key, 1, raw_id)  # type: ignore[arg-type]  # bytes too
        else:
            pipe.zrem(held_in, raw_id)
        if job_id is not None:
            pipe.zadd(
                queue.failed_job_registry.key, {job_id: current_timestamp() + DEFAULT_FAILURE_TTL}
            )
        pipe.execute()
    _log.error(
        "skipped RQ job %s from queue %r: %s; %s",
        _shown(raw_id),
        queue.name,
        problem,
        "moved to its FailedJobRegistry" if job_id is not None else "removed",
    )


def _problem(error: Exception) -> str:
    return f"it cannot be read ({type(error).__name__}: {error})"


class ChimewayIntermediateQueue(IntermediateQueue):
    """RQ's intermediate list, whose cleanup skips a job it cannot read instead of raising."""

    def cleanup(self, worker: BaseWorker, queue: rq.Queue) -> None:
        """RQ's cleanup (fail what was stuck here over a minute), one id at a time."""
        for raw in self.connection.lrange(self.key, 0, -1):
            job_id = _job_id(raw)
            if job_id is None:
                skip_job(queue, raw, "its id is not an RQ job id")
                continue
            try:
                job = queue.fetch_job(job_id)
                if job_id in queue.started_job_registry:
                    continue
                if job is None:
                    self.remove(job_id)
                elif not self.set_first_seen(job_id) and self.should_be_cleaned_up(job_id):
                    worker.handle_job_failure(
                        job, queue, exc_string="Job was stuck in intermediate queue."
                    )
                    self.remove(job_id)
            except _UNREACHABLE:
                raise
            except Exception as error:  # any bytes the key holds
                skip_job(queue, raw, _problem(error))


class ChimewayQueue(rq.Queue):
    """An RQ queue whose dequeue skips what it cannot read: see the module docstring."""

    @property
    def intermediate_queue(self) -> ChimewayIntermediateQueue:
        """This queue's intermediate list, cleaned up one id at a time."""
        return ChimewayIntermediateQueue(self.key, connection=self.connection)

    @classmethod
    def dequeue_any(
        cls,
        queues: Iterable[rq.Queue],
        timeout: int | None,
        connection: redis.Redis,
        job_class: type[Job] | None = None,
        serializer: Serializer | str | None = None,
        death_penalty_class: type[BaseDeathPenalty] | None = None,
    ) -> tuple[Job, rq.Queue] | None:
        """RQ's ``dequeue_any``; a job it cannot read is skipped (:func:`skip_job`)."""
        queue_keys = [queue.key for queue in queues]
        while True:
            # As RQ: one queue moves the id to its intermediate list atomically.
            if len(queue_keys) == 1 and get_version(connection) >= (6, 2, 0):
                result = cls.lmove(connection, queue_keys[0], timeout)
            else:
                result = cls.lpop(queue_keys, timeout, connection=connection)
            if result is None:
                return None
            raw_key, raw_id = result
            queue_key = raw_key.decode() if isinstance(raw_key, bytes) else raw_key  # ours
            queue = cls.from_queue_key(
                queue_key,
                connection=connection,
                job_class=job_class,
                serializer=serializer,
                death_penalty_class=death_penalty_class,
            )
            job_id = _job_id(raw_id)
            if job_id is None:
                skip_job(queue, raw_id, "its id is not an RQ job id")
                continue
            try:
                found = cls._fetch_dequeued_job(
                    connection,
                    queue_key,
                    job_id,
                    job_class=job_class,
                    serializer=serializer,
                    death_penalty_class=death_penalty_class,
                )
            except _UNREACHABLE:
                raise
            except Exception as error:  # any bytes the key holds
                skip_job(queue, raw_id, _problem(error))
                continue
            if found is not None:
                return found


class ChimewayScheduler(RQScheduler):
    """RQ's scheduler, reading scheduled jobs as chimeway jobs and surviving any one of them."""

    def enqueue_scheduled_jobs(self) -> None:
        """Queue every due scheduled job; log (and go on past) what fails in one queue."""
        self._status = self.Status.WORKING
        if not self._scheduled_job_registries and self._acquired_locks:
            self.prepare_registries()
        for registry in self._scheduled_job_registries:
            try:
                self._enqueue_due(registry)
            except _UNREACHABLE:
                raise
            except Exception:
                _log.exception(
                    "RQ scheduler: queueing the due jobs of %r failed; trying again in %s s",
                    registry.name,
                    self.interval,
                )
        self._status = self.Status.STARTED

    def _enqueue_due(self, registry: ScheduledJobRegistry) -> None:
        due: list[Any] = self.connection.zrangebyscore(
            registry.key, 0, current_timestamp(), start=0, num=1000
        )
        if not due:
            return
        queue = ChimewayQueue(
            registry.name,
            connection=self.connection,
            serializer=self.serializer,
            job_class=ChimewayJob,
        )
        jobs, gone = [], []
        for raw in due:
            job_id = _job_id(raw)
            if job_id is None:
                skip_job(queue, raw, "its id is not an RQ job id", held_in=registry.key)
                continue
            try:
                jobs.append(
                    ChimewayJob.fetch(
                        job_id, connection=self.connection, serializer=self.serializer
                    )
                )
            except NoSuchJobError:
                gone.append(job_id)  # as RQ: a schedule whose hash expired is dropped
            except _UNREACHABLE:
                raise
            except Exception as error:  # any bytes the key holds
                skip_job(queue, raw, _problem(error), held_in=registry.key)
        with self.connection.pipeline() as pipe:
            for job in jobs:
                queue._enqueue_job(job, pipeline=pipe, at_front=False)
                registry.remove(job.id, pipeline=pipe)
            for job_id in gone:
                registry.remove(job_id, pipeline=pipe)
            pipe.execute()
