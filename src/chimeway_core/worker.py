"""The worker half every backend shares: the engine, the job, the rescuer.

Theory of operation
-------------------
A backend's worker does three things besides talking to its queue, and
they are the same on every queue, so they live here and an adapter only
translates them into its queue's idiom:

- **One engine per process** (:class:`EngineSource`). The engine is given,
  or found from an import path (``module:attribute``, or ``CHIMEWAY_APP``;
  :func:`~chimeway_core.loading.load_engine`) on first use and kept for the
  life of the process. A process forked from the one that resolved it (a
  prefork child, an RQ work horse) inherits its pooled database
  connections: :meth:`EngineSource.after_fork` drops them without closing
  the sockets the parent still uses (``dispose(close=False)``, SQLAlchemy's
  "Using Connection Pools with Multiprocessing or os.fork()").
- **A job into a verdict** (:func:`run_job`). The job's arguments must be
  exactly one canonical delivery id (else
  :class:`~chimeway_core.errors.InvalidJobError`, before the engine is even
  looked for); ``perform()`` runs; what it returns or raises becomes a
  :class:`JobVerdict`: ``ACK`` (the job is done), ``AGAIN`` (run the
  delivery again at ``run_at``, on ``queue``) or ``FAIL`` (an
  :class:`~chimeway_core.errors.UnhandledOutcomeError`: schedule the next run
  at ``run_at`` when the engine set one, then let the error fail the job
  loudly). Any other exception is the adapter's to retry as its queue does.
- **The rescuer on a timer** (:func:`rescue`): one pass of
  ``engine.rescue()``, logged in one wording, never raising, so a worker's
  timer keeps ticking through a database outage.
"""

from __future__ import annotations

import enum
import logging
import os
import threading
from collections.abc import Sequence
from datetime import datetime
from typing import Final

import attrs

from chimeway_core._checks import seconds
from chimeway_core.engine import Chimeway, RescueReport
from chimeway_core.errors import InvalidJobError, UnhandledOutcomeError
from chimeway_core.jobs import JobKind, Performer, parse_delivery_id
from chimeway_core.loading import load_engine

__all__ = [
    "DEFAULT_RESCUE_INTERVAL",
    "RESCUE_INTERVAL_ENV",
    "EngineSource",
    "JobVerdict",
    "Verdict",
    "rescue",
    "rescue_interval",
    "run_job",
]

_log = logging.getLogger(__name__)

#: The environment variable a worker reads its rescue interval from (seconds).
RESCUE_INTERVAL_ENV: Final = "CHIMEWAY_RESCUE_INTERVAL"
#: How often a worker runs the engine's rescuer, in seconds.
DEFAULT_RESCUE_INTERVAL: Final = 30.0


class EngineSource:
    """The engine of this process: given, or resolved once from ``target``.

    ``target`` is what :func:`~chimeway_core.loading.load_engine` takes: an
    engine, its import path, or ``None`` for ``CHIMEWAY_APP``. Thread-safe.
    """

    def __init__(self, target: Chimeway | str | None = None) -> None:
        if target is not None and not isinstance(target, Chimeway | str):
            raise TypeError(
                f"engine must be a Chimeway, a 'module:attribute' str or None, "
                f"not {type(target).__name__}"
            )
        self.target = target
        self._engine = target if isinstance(target, Chimeway) else None
        self._pid = os.getpid()
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"EngineSource({self.target!r})"

    @property
    def current(self) -> Chimeway | None:
        """The engine if it is resolved already; ``None`` otherwise (nothing is loaded)."""
        return self._engine

    def get(self) -> Chimeway:
        """The engine, resolved on first use (:class:`EngineNotFoundError` if it cannot be)."""
        engine = self._engine
        if engine is None:
            with self._lock:
                if self._engine is None:
                    self._engine, self._pid = load_engine(self.target), os.getpid()
                engine = self._engine
        return engine

    def install(self, engine: Chimeway, *, replace: bool = True) -> None:
        """Perform this process's jobs with ``engine``.

        With ``replace=False`` another engine already in use is a
        :class:`ValueError`.
        """
        with self._lock:
            if not replace and self._engine is not None and self._engine is not engine:
                raise ValueError("this process already performs with another engine")
            self._engine, self._pid = engine, os.getpid()

    def forget(self) -> None:
        """Drop the engine: the next :meth:`get` resolves ``target`` again."""
        with self._lock:
            self._engine = None

    def after_fork(self) -> None:
        """In a process forked from the one that resolved the engine: drop the inherited pool.

        Nothing happens in the process that resolved it, or before it is resolved.
        """
        with self._lock:
            if self._engine is not None and self._pid != os.getpid():
                self._engine.store.engine.dispose(close=False)
                self._pid = os.getpid()


class Verdict(enum.Enum):
    """What the queue does with a job that ran."""

    ACK = "ack"
    """The job is done."""
    AGAIN = "again"
    """Run the delivery again at ``run_at`` (a retry or a deferral)."""
    FAIL = "fail"
    """Schedule the next run at ``run_at`` if set, then fail the job with ``error``."""


@attrs.frozen(kw_only=True)
class JobVerdict:
    """What :func:`run_job` concluded, for the adapter to say in its queue's idiom."""

    verdict: Verdict
    summary: str
    """One line for the queue's record: ``ack: <why>``, ``retry: <why>, at <when>``."""
    run_at: datetime | None = None
    queue: str | None = None
    """The queue the next run belongs on (``None``: the backend's default)."""
    error: UnhandledOutcomeError | None = None


def delivery_id_of(args: Sequence[object], kwargs: dict[str, object]) -> object:
    """The one positional argument of a job, or :class:`InvalidJobError` for any other shape."""
    if kwargs or len(args) != 1:
        raise InvalidJobError({"args": list(args), "kwargs": kwargs})
    return args[0]


def run_job(
    performer: Performer | EngineSource, args: Sequence[object], kwargs: dict[str, object]
) -> JobVerdict:
    """Run one job whose arguments are ``args`` and ``kwargs``; see the module docstring.

    ``performer`` is an engine, or an :class:`EngineSource` resolved only
    once the arguments are known to be one delivery id. Exceptions other
    than :class:`UnhandledOutcomeError` propagate.
    """
    delivery_id = parse_delivery_id(delivery_id_of(args, kwargs))
    engine = performer.get() if isinstance(performer, EngineSource) else performer
    try:
        result = engine.perform(delivery_id)
    except UnhandledOutcomeError as error:
        return JobVerdict(
            verdict=Verdict.FAIL,
            summary=str(error),
            run_at=error.run_at,
            queue=error.queue,
            error=error,
        )
    if result.kind is JobKind.ACK:
        return JobVerdict(verdict=Verdict.ACK, summary=f"ack: {result.detail}")
    assert result.run_at is not None  # guaranteed by JobResult for RETRY and DEFER
    return JobVerdict(
        verdict=Verdict.AGAIN,
        summary=f"{result.kind.value}: {result.detail}, at {result.run_at.isoformat()}",
        run_at=result.run_at,
        queue=result.queue,
    )


def rescue_interval(value: float | None) -> float:
    """``value`` in seconds (> 0), or ``CHIMEWAY_RESCUE_INTERVAL``'s, or 30 s, for ``None``."""
    if value is not None:
        return seconds("rescue_interval", value, positive=True)
    text = os.environ.get(RESCUE_INTERVAL_ENV)
    if text is None:
        return DEFAULT_RESCUE_INTERVAL
    try:
        return seconds(RESCUE_INTERVAL_ENV, float(text), positive=True)
    except ValueError:
        raise ValueError(
            f"{RESCUE_INTERVAL_ENV}={text!r} must be a finite number of seconds > 0"
        ) from None


def rescue(engine: Chimeway | EngineSource, interval: float | None) -> RescueReport | None:
    """Run one pass of ``engine.rescue()``; log what it did, or why it failed; never raise.

    ``engine`` may be an :class:`EngineSource`, resolved inside the pass (a
    path that does not load is logged like any failed pass). ``interval``
    (seconds) is when the next pass comes, for the log line. Returns the
    report, or ``None`` when the pass failed.
    """
    try:
        report = (engine.get() if isinstance(engine, EngineSource) else engine).rescue()
    except Exception:
        _log.exception("chimeway rescue failed; trying again in %s s", interval)
        return None
    if not report.idle:
        _log.info(
            "chimeway rescue: %d lost attempts resolved, %d deliveries requeued, "
            "%d already pending, %d relayed, %d pruned",
            report.resolved,
            report.requeued,
            report.pending,
            report.relayed,
            report.pruned,
        )
    return report
