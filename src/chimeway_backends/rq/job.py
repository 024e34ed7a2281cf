"""The RQ job: :func:`deliver`, and what makes a worker run it and nothing else.

:func:`deliver` runs one job through :func:`chimeway_core.worker.run_job`
and says the verdict in RQ's idiom: ``ACK`` returns a short string; a
retry or deferral returns a :class:`DeliveryRetry`, so RQ schedules *this
same job id* again after the job has ended, inside the worker's own
bookkeeping transaction (a running job cannot race its own hash that way);
an :class:`~chimeway_core.errors.UnhandledOutcomeError` schedules the job at
its ``run_at``, then fails it. :class:`ChimewayJob` resolves to
:func:`deliver` or to nothing (:class:`ForeignJobError`), so a job naming
other code or a callback never runs, and reads from a job hash only what
chimeway writes, never raising on a field (RQ's webhooks, retries, repeats
and the like are ignored). RQ's job timeout is
:mod:`chimeway_backends.rq.limits`'s.
"""

from __future__ import annotations

import json
import logging
import math
import time
import zlib
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, Final, assert_never

import rq
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer
from rq.utils import now, utcparse

from chimeway_backends.rq.backend import DELIVER, RQBackend, not_before
from chimeway_backends.rq.limits import ChimewayDeathPenalty, JobTimeLimitExceeded, job_limit
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

    Reading a job hash (:meth:`restore`) takes only what chimeway and RQ's
    own bookkeeping write (:data:`READ_FIELDS`) and never raises on what a
    field holds: bytes that do not decode or parse leave the attribute at
    its default. Every field that would make RQ act on its own
    (:data:`IGNORED_FIELDS`: webhooks, dependencies, RQ's retries and
    repeats, rate limits, ``ttl``, ``meta``, a group, callback timeouts,
    queueing at the front) is ignored, with a warning naming the job and the
    fields; ``timeout``, ``result_ttl`` and ``failure_ttl`` are those of
    the engine's :class:`~chimeway_backends.rq.RQBackend` whenever this
    process has one, whatever the hash says (the timeout per channel:
    :func:`~chimeway_backends.rq.limits.job_limit`).
    """

    def restore(self, raw_data: Mapping[bytes | str, bytes | str]) -> None:
        """Read the fields chimeway writes from a job hash; see the class docstring.

        Raises :class:`rq.exceptions.NoSuchJobError` when the hash has no
        ``data``, as RQ does; nothing else.
        """
        fields = _fields(raw_data)
        if "data" not in fields:
            raise NoSuchJobError(f"job {self.id}: its hash has no data field")
        _reset(self)
        try:
            self.data = zlib.decompress(fields["data"])
        except zlib.error:
            self.data = fields["data"]
        self.created_at = _date(fields.get("created_at")) or now()
        self.enqueued_at = _date(fields.get("enqueued_at"))
        self.started_at = _date(fields.get("started_at"))
        self.ended_at = _date(fields.get("ended_at"))
        self.last_heartbeat = _date(fields.get("last_heartbeat"))
        self.origin = _text(fields.get("origin")) or ""
        self.worker_name = _text(fields.get("worker_name"))
        self.description = _printable(fields.get("description"))
        self._status = _status(fields.get("status")) or JobStatus.CREATED
        self.number_of_retries = _whole(fields.get("number_of_retries"), minimum=0)
        self._success_callback_name = _named(fields.get("success_callback_name"))
        self._failure_callback_name = _named(fields.get("failure_callback_name"))
        self._stopped_callback_name = _named(fields.get("stopped_callback_name"))
        found = _engine_backend()
        if found is not None:
            engine, backend = found
            self.timeout = job_limit(engine, backend.job_timeout)
            self.result_ttl = backend.result_ttl
            self.failure_ttl = backend.failure_ttl
        else:
            self.timeout = _whole(fields.get("timeout"), minimum=1)
            self.result_ttl = _whole(fields.get("result_ttl"), minimum=-1)
            self.failure_ttl = _whole(fields.get("failure_ttl"), minimum=-1)
        ignored = sorted(name for name in IGNORED_FIELDS if fields.get(name))
        if ignored:
            _log.warning(
                "RQ job %s from queue %r: ignoring field(s) chimeway does not write: %s",
                self.id,
                self.origin,
                ", ".join(ignored),
            )

    def _fetch_status(self) -> JobStatus:
        """The stored status; ``created`` when it is not one RQ knows."""
        found = self.connection.hget(self.key, "status")
        if not found:
            raise InvalidJobOperation(f"Failed to retrieve status for job: {self.id}")
        return _status(found) or JobStatus.CREATED

    def _deserialize_data(self) -> None:
        """Read ``data`` as ``[name, instance, [args], {kwargs}]``; else mark it unreadable."""
        try:
            func_name, instance, args, kwargs = self.serializer.loads(self.data)
            # An instance (JSON: a string, a list ...) is refused by _foreign, by name.
            readable = (
                isinstance(func_name, str)
                and isinstance(args, list | tuple)
                and isinstance(kwargs, dict)
            )
        except Exception:  # any bytes at all: whatever the serializer raises
            readable = False
        if not readable:
            func_name, instance, args, kwargs = _UNREADABLE, None, (), {}
        self._func_name, self._instance, self._args, self._kwargs = (
            func_name,
            instance,
            args,
            kwargs,
        )

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
        if self.func_name == _UNREADABLE:
            return "no function: its data is not a JSON call"
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

    def send_webhooks(self, status: str | JobStatus, *, exc_string: str | None = None) -> None:
        """Send nothing: a chimeway job has no webhooks, whatever its hash says."""


#: The job hash fields a :class:`ChimewayJob` reads: what chimeway writes
#: (through RQ's ``enqueue_many`` / ``schedule_job``) and RQ's bookkeeping.
READ_FIELDS: Final = frozenset(
    {
        "data",
        "created_at",
        "enqueued_at",
        "started_at",
        "ended_at",
        "last_heartbeat",
        "origin",
        "worker_name",
        "description",
        "status",
        "number_of_retries",
        "success_callback_name",
        "failure_callback_name",
        "stopped_callback_name",
        "timeout",
        "result_ttl",
        "failure_ttl",
    }
)
#: The job hash fields RQ 3 acts on that chimeway never writes: a
#: :class:`ChimewayJob` ignores them (and warns when one holds anything).
IGNORED_FIELDS: Final = frozenset(
    {
        "webhooks",
        "dependency_id",
        "dependency_ids",
        "allow_dependency_failures",
        "enqueue_at_front",
        "enqueue_at_front_on_retry",
        "ttl",
        "meta",
        "retries_left",
        "retry_intervals",
        "repeats_left",
        "repeat_intervals",
        "rate_limit_key",
        "rate_limit_concurrency",
        "group_id",
        "success_callback_timeout",
        "failure_callback_timeout",
        "stopped_callback_timeout",
    }
)
#: The function name a job whose data does not read as a JSON call gets.
_UNREADABLE: Final = "<unreadable job data>"


def _reset(job: Job) -> None:
    """Every attribute RQ reads from an ignored field back at RQ's default (none)."""
    job.webhooks = []
    job._dependency_ids = []
    job.allow_dependency_failures = None
    job.enqueue_at_front = None
    job.enqueue_at_front_on_retry = False
    job.ttl = None
    job.meta = {}
    job._unreadable_meta = None
    job.retries_left = None
    job.retry_intervals = None
    job.repeats_left = None
    job.repeat_intervals = None
    job.rate_limit_key = None
    job.rate_limit_concurrency = None
    job.group_id = None
    job._success_callback_timeout = None
    job._failure_callback_timeout = None
    job._stopped_callback_timeout = None
    job._result = None
    job._exc_info = None


def _fields(raw: Mapping[bytes | str, bytes | str]) -> dict[str, bytes]:
    """The hash's fields chimeway reads or warns about, as bytes; any other is dropped."""
    fields = {}
    for key, value in raw.items():
        name = _text(key)
        if name in READ_FIELDS or name in IGNORED_FIELDS:
            fields[name] = value.encode() if isinstance(value, str) else value
    return fields


def _text(value: bytes | str | None) -> str | None:
    """UTF-8 text, or None for nothing or for bytes that do not decode."""
    if isinstance(value, str) or value is None:
        return value
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _printable(value: bytes | None) -> str | None:
    """Text a log line may show as it is: printable (no terminal escapes), at most 200 chars."""
    text = _text(value)
    return text if text and text.isprintable() and len(text) <= 200 else None


def _date(value: bytes | None) -> datetime | None:
    text = _text(value)
    if not text:
        return None
    try:
        return utcparse(text)
    except ValueError:
        return None


def _whole(value: bytes | None, *, minimum: int) -> int | None:
    text = _text(value)
    if not text or len(text) > 20:
        return None
    try:
        number = int(text)
    except ValueError:
        return None
    return number if number >= minimum else None


def _status(value: bytes | str | None) -> JobStatus | None:
    try:
        return JobStatus(_text(value))
    except ValueError:
        return None


def _named(value: bytes | None) -> str | None:
    """A callback name as text; undecodable bytes as their repr (the job is refused either way)."""
    if not value:
        return None
    return _text(value) or repr(value)


def _engine_backend() -> tuple[Chimeway, RQBackend] | None:
    engine = ENGINE.current
    if engine is not None and isinstance(engine.backend, RQBackend):
        return engine, engine.backend
    return None


def _shorten(name: object) -> str:
    text = repr(name)
    return text if len(text) <= 120 else f"{text[:117]}..."
