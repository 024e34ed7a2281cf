"""Enqueueing deliveries as RQ jobs: :class:`RQBackend`.

One RQ job per delivery, always under the same job id,
:func:`~chimeway_core.jobs.job_id_for`, naming :data:`DELIVER` with the
delivery id as its only argument, serialized as JSON. A delivery *has a
pending job* when its job is in the queue's ``ScheduledJobRegistry`` or its
job hash says ``queued`` or ``started``; enqueueing such a delivery makes no
second job, and a scheduled job only moves earlier (``ZADD XX LT``). A
scheduled job that is due by then (asked for now, or left overdue) is put on
the queue by the enqueue itself, as RQ's scheduler would, rewritten from
chimeway's own values: the enqueue does not wait for a scheduler that may be
dead, and a scheduled hash no worker could read is replaced. The check and
the write are one optimistic transaction (``WATCH`` on the job hashes, then
``MULTI``/``EXEC`` with RQ's own ``enqueue_many`` / ``schedule_job``): every
RQ transition of a job rewrites its hash, so watching the hashes is enough.
Each enqueue says what it did (:class:`~chimeway_core.backend.Enqueued`).
:meth:`RQBackend.release_overdue` is the scheduler's fallback a worker's
rescue pass runs. See :mod:`chimeway_backends.rq` for queues.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Final
from uuid import UUID

import redis
import rq
from rq.job import JobStatus
from rq.serializers import JSONSerializer

from chimeway_backends.rq.limits import ChimewayDeathPenalty, call_limit
from chimeway_core._checks import queue_or, whole
from chimeway_core.backend import Backend, Enqueued
from chimeway_core.jobs import job_id_for

__all__ = ["DEFAULT_QUEUE", "DELIVER", "OVERDUE_AFTER", "RQBackend", "not_before"]

#: The queue chimeway uses unless told otherwise.
DEFAULT_QUEUE: Final = "chimeway"
#: The one function a chimeway worker runs, by the import path jobs name it with.
DELIVER: Final = "chimeway_backends.rq.deliver"

# Per job: [status, hash, score]: its hash's status ("" for none), "1" when the
# hash exists at all ("" when not), its score in the queue's scheduled registry
# ("" for none). One HGETALL answers both of the hash's questions, so a new job
# (no hash) needs no DEL. Read-only; runs while the hashes are WATCHed.
_STATES_SCRIPT: Final = """
local out = {}
for i = 2, #KEYS do
  local fields = redis.call('HGETALL', KEYS[i])
  local status = ''
  for f = 1, #fields, 2 do
    if fields[f] == 'status' then status = fields[f + 1] end
  end
  out[#out + 1] = status
  out[#out + 1] = #fields > 0 and '1' or ''
  out[#out + 1] = redis.call('ZSCORE', KEYS[1], ARGV[i - 1]) or ''
end
return out
"""
_STATE_WIDTH: Final = 3
_RUNNING: Final = frozenset({JobStatus.QUEUED.value, JobStatus.STARTED.value})
# Deliveries per WATCH/MULTI transaction: bounds the keys one transaction watches.
_BATCH: Final = 500
#: Seconds a scheduled job may be past due before :meth:`RQBackend.release_overdue`
#: takes it for stuck: RQ's scheduler moves a due job within about a second.
OVERDUE_AFTER: Final = 5.0
_DELIVERY_ID_LENGTH: Final = 36


class RQBackend(Backend):
    """Queue delivery ids as RQ jobs: a :class:`~chimeway_core.backend.Backend`.

    ``job_timeout`` (whole seconds) is RQ's hard limit on one job. Left
    ``None`` (the default), each job gets its own channel's: a chimeway
    worker stops a call halfway between the channel's ``timeout`` and its
    lease (``channel.timeout + engine.lease_margin``), so channels with
    different timeouts share one backend (:mod:`chimeway_backends.rq.limits`).
    A number is one limit for every job: keep it above every channel's
    ``timeout`` and no longer than the shortest lease; the worker warns
    otherwise.
    ``result_ttl`` and ``failure_ttl`` (seconds; ``None``: RQ's defaults of
    500 s and one year) are how long finished and failed job hashes are kept.
    ``failure_ttl`` must outlast the longest retry delay, since a job whose
    attempt raised ``UnhandledOutcomeError`` waits for its next run in that
    hash. ``default_queue`` is another name for ``queue_name``.
    """

    name = "rq"
    unavailable = (redis.RedisError,)

    def __init__(
        self,
        connection: redis.Redis,
        queue_name: str = DEFAULT_QUEUE,
        *,
        job_timeout: int | None = None,
        result_ttl: int | None = None,
        failure_ttl: int | None = None,
        default_queue: str | None = None,
    ) -> None:
        if default_queue is not None:
            queue_name = default_queue
        if not isinstance(connection, redis.Redis):
            raise TypeError(
                f"connection must be a redis.Redis (redis.Redis.from_url(url)), "
                f"not {type(connection).__name__}"
            )
        if not isinstance(queue_name, str) or not queue_name:
            raise ValueError(f"queue_name must be a non-empty str, got {queue_name!r}")
        if job_timeout is not None:
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

    @property
    def default_queue(self) -> str:
        """The queue jobs go to without ``queue=``: ``queue_name``."""
        return self.queue_name

    def _enqueue(self, delivery_id: UUID, at: datetime | None, queue: str) -> Enqueued:
        # A delivery with a pending job (queued, started or scheduled) gets no
        # second one; a scheduled job moves earlier when ``at`` is earlier.
        return self._submit(self._queue(queue), [(delivery_id, at)])[delivery_id]

    def _enqueue_many(self, delivery_ids: list[UUID], queue: str) -> list[Enqueued]:
        # Three round trips per 500 deliveries.
        unique = dict.fromkeys(delivery_ids)
        done = self._submit(self._queue(queue), [(delivery_id, None) for delivery_id in unique])
        return [done[delivery_id] for delivery_id in delivery_ids]

    def release_overdue(self, queue: str | None = None, *, overdue: float = OVERDUE_AFTER) -> int:
        """Put the jobs scheduled on ``queue`` more than ``overdue`` seconds ago on it; how many.

        RQ's scheduler moves a due job onto its queue within a second or so.
        One still scheduled long after is stuck: no scheduler runs for the
        queue (a killed one keeps its lock for a minute, and RQ's workers try
        to take it over only in their maintenance), or the scheduler cannot
        read the job. This does what the scheduler would, for chimeway's jobs
        only (any other id is left to RQ), each rewritten from chimeway's own
        values in the same transaction that checks it is still scheduled and
        not running. A worker's rescue pass runs it
        (:class:`~chimeway_backends.rq.ChimewayWorkerMixin`). Should a
        scheduler move a job at the same moment, the job runs twice; the
        second run finds the delivery leased or done and acknowledges.
        """
        rq_queue = self._queue(queue_or(queue, self.queue_name))
        before = math.floor(time.time() - overdue)
        registry = rq_queue.scheduled_job_registry
        released = 0
        while True:
            job_ids = registry.get_jobs_to_schedule(before, chunk_size=_BATCH)
            items = [(found, None) for found in map(_delivery_id, job_ids) if found is not None]
            done = self._submit(rq_queue, items, only_scheduled=True)
            moved = sum(outcome is Enqueued.QUEUED for outcome in done.values())
            released += moved
            if len(job_ids) < _BATCH or not moved:
                return released

    def before_call(self, channel: str, timeout: float, lease: float) -> None:
        """In an RQ job without a fixed ``job_timeout``: stop it at the channel's own limit.

        The job's alarm is brought forward to
        :func:`~chimeway_backends.rq.limits.call_limit` from now; outside an
        RQ job nothing is armed and nothing happens.
        """
        if self.job_timeout is None:
            limit = call_limit(timeout, lease)
            ChimewayDeathPenalty.shorten(limit, f"{limit:g} seconds, channel {channel!r}")

    def _ping(self) -> None:
        self.connection.ping()

    def _service(self) -> str:
        return "Redis"

    def _queue(self, name: str) -> rq.Queue:
        """The RQ queue called ``name`` on this backend's Redis."""
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

    def _submit(
        self,
        queue: rq.Queue,
        items: Sequence[tuple[UUID, datetime | None]],
        *,
        only_scheduled: bool = False,
    ) -> dict[UUID, Enqueued]:
        done: dict[UUID, Enqueued] = {}
        for start in range(0, len(items), _BATCH):
            done |= self._submit_batch(queue, items[start : start + _BATCH], only_scheduled)
        return done

    def _submit_batch(
        self, queue: rq.Queue, items: Sequence[tuple[UUID, datetime | None]], only_scheduled: bool
    ) -> dict[UUID, Enqueued]:
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
                    done = self._write(pipe, queue, items, flat, only_scheduled=only_scheduled)
                    pipe.execute()
                except redis.WatchError:
                    continue  # a job changed under us: decide again on fresh states
                return done

    def _write(
        self,
        pipe: redis.client.Pipeline,
        queue: rq.Queue,
        items: Sequence[tuple[UUID, datetime | None]],
        flat: list[bytes | str],
        *,
        only_scheduled: bool = False,
    ) -> dict[UUID, Enqueued]:
        now = time.time()
        registry = queue.scheduled_job_registry.key
        due_now = []
        done: dict[UUID, Enqueued] = {}
        for index, (delivery_id, at) in enumerate(items):
            job_id = job_id_for(delivery_id)
            at_index = _STATE_WIDTH * index
            status, has_hash = _text(flat[at_index]), bool(flat[at_index + 1])
            raw_score = _text(flat[at_index + 2])
            score = float(raw_score) if raw_score else None
            when = None if at is None or at.timestamp() <= now else not_before(at)
            # A job in the scheduled registry, with a hash, due by now: RQ's scheduler
            # should have moved it already (unless it is running, below).
            overdue = score is not None and bool(status) and score <= now
            if status in _RUNNING or (only_scheduled and not overdue):
                # Queued or running (even if it scheduled its next run already): that job
                # runs; a schedule it holds only moves earlier.
                if score is not None and when is not None:
                    pipe.zadd(registry, {job_id: int(when.timestamp())}, xx=True, lt=True)
                done[delivery_id] = Enqueued.PENDING
                continue
            if score is not None and status and not overdue and when is not None:
                # Scheduled for later, not running: only ever moved earlier.
                target = int(when.timestamp())
                pipe.zadd(registry, {job_id: target}, xx=True, lt=True)
                done[delivery_id] = Enqueued.SCHEDULED if target < score else Enqueued.PENDING
                continue
            # No job, an ended one, or a scheduled one due by now that nothing runs (its
            # scheduler may be dead, its hash unreadable): what is under this id (fields,
            # an expiry, the schedule) is not the new job's, which is written whole.
            if has_hash:
                pipe.delete(queue.job_class.key_for(job_id))
            if score is not None:
                pipe.zrem(registry, job_id)
            if when is None or overdue:
                due_now.append(
                    queue.prepare_data(
                        DELIVER, args=[str(delivery_id)], job_id=job_id, **self._options()
                    )
                )
                done[delivery_id] = Enqueued.QUEUED
            else:
                job = queue.create_job(
                    DELIVER, args=[str(delivery_id)], job_id=job_id, **self._options()
                )
                queue.schedule_job(job, when, pipeline=pipe)
                done[delivery_id] = Enqueued.SCHEDULED
        if due_now:
            queue.enqueue_many(due_now, pipeline=pipe)
        return done

    def _options(self) -> dict[str, Any]:
        return {
            "timeout": self.job_timeout,
            "result_ttl": self.result_ttl,
            "failure_ttl": self.failure_ttl,
        }


def _text(value: bytes | str) -> str:
    # A status no one can read names no state: the job is taken for ended.
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def _delivery_id(job_id: str) -> UUID | None:
    """The delivery whose job id ``job_id`` is, or ``None`` for a job that is not chimeway's."""
    try:
        found = UUID(job_id[-_DELIVERY_ID_LENGTH:])
    except ValueError:
        return None
    return found if job_id_for(found) == job_id else None


def not_before(at: datetime) -> datetime:
    """``at`` rounded up to the whole second: RQ's scheduler truncates to seconds."""
    return datetime.fromtimestamp(math.ceil(at.timestamp()), UTC)
