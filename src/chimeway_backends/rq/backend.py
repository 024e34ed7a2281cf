"""Enqueueing deliveries as RQ jobs: :class:`RQBackend`.

One RQ job per delivery, always under the same job id,
:func:`~chimeway_core.jobs.job_id_for`, naming :data:`DELIVER` with the
delivery id as its only argument, serialized as JSON. A delivery *has a
pending job* when its job is in the queue's ``ScheduledJobRegistry`` or its
job hash says ``queued`` or ``started``; enqueueing such a delivery makes no
second job, and a scheduled job only moves earlier (``ZADD XX LT``). The
check and the write are one optimistic transaction (``WATCH`` on the job
hashes, then ``MULTI``/``EXEC`` with RQ's own ``enqueue_many`` /
``schedule_job``): every RQ transition of a job rewrites its hash, so
watching the hashes is enough. See :mod:`chimeway_backends.rq` for queues.
"""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime
from typing import Any, Final
from uuid import UUID

import redis
import rq
from rq.job import JobStatus
from rq.serializers import JSONSerializer

from chimeway_core._checks import whole
from chimeway_core.backend import Backend
from chimeway_core.jobs import job_id_for

__all__ = ["DEFAULT_QUEUE", "DELIVER", "RQBackend", "not_before"]

#: The queue chimeway uses unless told otherwise.
DEFAULT_QUEUE: Final = "chimeway"
#: The one function a chimeway worker runs, by the import path jobs name it with.
DELIVER: Final = "chimeway_backends.rq.deliver"

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


class RQBackend(Backend):
    """Queue delivery ids as RQ jobs: a :class:`~chimeway_core.backend.Backend`.

    ``job_timeout`` (seconds) is RQ's hard limit on one job: keep it above
    every channel's ``timeout`` and no longer than the shortest lease
    (``channel.timeout + engine.lease_margin``); the worker warns otherwise.
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
        job_timeout: int = 60,
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

    def _enqueue(self, delivery_id: UUID, at: datetime | None, queue: str) -> None:
        # A delivery with a pending job (queued, started or scheduled) gets no
        # second one; a scheduled job moves earlier when ``at`` is earlier.
        self._submit(self._queue(queue), [(delivery_id, at)])

    def _enqueue_many(self, delivery_ids: list[UUID], queue: str) -> None:
        # Three round trips per 500 deliveries.
        unique = dict.fromkeys(delivery_ids)
        self._submit(self._queue(queue), [(delivery_id, None) for delivery_id in unique])

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
            when = None if at is None or at.timestamp() <= now else not_before(at)
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
                        DELIVER, args=[str(delivery_id)], job_id=job_id, **self._options()
                    )
                )
            else:
                job = queue.create_job(
                    DELIVER, args=[str(delivery_id)], job_id=job_id, **self._options()
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


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def not_before(at: datetime) -> datetime:
    """``at`` rounded up to the whole second: RQ's scheduler truncates to seconds."""
    return datetime.fromtimestamp(math.ceil(at.timestamp()), UTC)
