"""The worker backends ``chimeway worker --backend`` knows: one table, one runner each.

:data:`BACKENDS` maps a name to a :class:`WorkerBackend`: the adapter module
that must import (it raises :class:`~chimeway_core.errors.MissingExtraError`
naming its extra when the queue's client library is missing), the extra
itself, and the function that runs the worker. :func:`require` checks the
adapter before the application is imported, so a missing extra is reported
first and in one line. A new backend plugs in with one entry.

Each runner checks that the application's engine really queues on its
backend and that the queue's service answers (exit 3 otherwise), then runs
the adapter's own worker until SIGINT or SIGTERM; RQ and Celery handle those
signals themselves (a warm shutdown: running jobs finish). The one-off
``relay`` and ``rescue`` make the same check with :func:`check_queue`, and
run inside :func:`queue_failures`.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from types import MappingProxyType, ModuleType
from typing import TYPE_CHECKING, Final

import attrs

from chimeway_core.cli.errors import CliError, ExitCode
from chimeway_core.cli.output import counted, echo, warn
from chimeway_core.cli.signals import stop_on_signals
from chimeway_core.engine import Chimeway
from chimeway_core.errors import MissingExtraError
from chimeway_core.memory import DEFAULT_QUEUE, MemoryBackend, MemoryWorker
from chimeway_core.telemetry import LoggingSubscriber

if TYPE_CHECKING:
    from chimeway_backends.celery import CeleryBackend
    from chimeway_backends.rq import RQBackend

__all__ = [
    "BACKENDS",
    "RunWorker",
    "WorkerBackend",
    "WorkerOptions",
    "check_queue",
    "queue_failures",
    "require",
    "run_celery",
    "run_memory",
    "run_rq",
]

_BROKER_CONNECT_TIMEOUT: Final = 5.0


@attrs.frozen(kw_only=True)
class WorkerOptions:
    """What ``chimeway worker`` was asked, beyond the engine."""

    app: str
    concurrency: int | None
    """Jobs at a time (``None``: the backend's default)."""
    tick_interval: float
    """Seconds between rescue passes."""
    grace: float
    """Seconds running jobs get to finish on stop (memory backend)."""
    log_level: str
    burst: bool = False
    """Run what is due, then exit, instead of waiting for more."""
    queues: tuple[str, ...] | None = None
    """The queues to serve, in order (``None``: the backend's and every routed one)."""


#: How a backend's worker runs: the engine and the options in, the exit code out.
RunWorker = Callable[[Chimeway, WorkerOptions], int]


@attrs.frozen
class WorkerBackend:
    """One entry of :data:`BACKENDS`."""

    adapter: str
    """The module that must import for this backend."""
    extra: str | None
    """The chimeway extra that installs its dependencies (``None``: none needed)."""
    run: RunWorker
    """Runs the worker until it is stopped; returns the exit code."""
    burst: bool
    """Whether its worker can run in burst mode (``--burst``)."""


def _start_logging(engine: Chimeway, options: WorkerOptions) -> None:
    """Log to stderr at ``--log-level``, delivery events included; once the checks passed."""
    logging.basicConfig(
        level=options.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    engine.telemetry.subscribe(LoggingSubscriber())


def _wrong_backend(name: str, options: WorkerOptions, engine: Chimeway, expected: str) -> CliError:
    return CliError(
        f"--backend {name}: the engine of {options.app} queues on a "
        f"{type(engine.backend).__qualname__}, not a {expected}"
    )


def _served(engine: Chimeway, options: WorkerOptions, default: str) -> list[str]:
    """The queues this worker serves: ``--queue``'s, each one the engine uses, or all of them."""
    used = engine.worker_queues(default)
    if options.queues is None:
        return used
    unknown = [queue for queue in options.queues if queue not in used]
    if unknown:
        raise CliError(
            f"--queue {', '.join(unknown)}: the engine of {options.app} sends no job there; "
            f"its queues are {', '.join(used)}"
        )
    return list(options.queues)


def _named(queues: list[str]) -> str:
    return ("queue " if len(queues) == 1 else "queues ") + ", ".join(map(repr, queues))


def run_memory(engine: Chimeway, options: WorkerOptions) -> int:
    """Run :class:`~chimeway_core.memory.MemoryWorker` until SIGINT or SIGTERM.

    A rescue pass runs first (outbox rows and lost attempts left by a
    previous process), then every ``tick_interval`` seconds. On a signal no
    new job is taken and running ones get ``grace`` seconds to finish. With
    ``burst`` the first pass catches up (this process's queue starts empty:
    every due delivery is queued, the outbox relayed without its grace), and
    the worker stops as soon as no job is running and none is due; jobs
    scheduled for later (retries, deferrals) die with the process, and their
    deliveries wait in the ledger for a later worker.
    """
    backend = engine.backend
    if not isinstance(backend, MemoryBackend):
        raise _wrong_backend("memory", options, engine, "chimeway_backends.memory.MemoryBackend")
    if options.queues is not None:
        # Its rescuer and relay queue every channel's jobs in this process's memory:
        # serving some would leave the others' there until the process ends.
        raise CliError(
            "--backend memory: a memory worker serves every queue of its process, so "
            "--queue is for rq and celery; in one process, MemoryWorker(queues=...) gives "
            "a queue threads of its own"
        )
    queues = _served(engine, options, DEFAULT_QUEUE)
    threads = options.concurrency or 1
    _start_logging(engine, options)
    first = engine.rescue(catch_up=options.burst)
    worker = MemoryWorker(
        backend,
        engine,
        concurrency=threads,
        tick=None if options.burst else engine.rescue,
        tick_interval=options.tick_interval,
        queues=queues,
    )
    stop = threading.Event()
    with stop_on_signals(stop):
        worker.start()
        until = (
            "runs what is due, then exits"
            if options.burst
            else f"rescue every {options.tick_interval:g} s"
        )
        echo(
            f"chimeway worker: memory backend, {_named(queues)}, {counted(threads, 'thread')}, "
            f"app {options.app}; {until}; Ctrl-C or SIGTERM stops",
            f"chimeway worker: first rescue pass: {first.relayed} relayed, "
            f"{first.requeued} requeued, {counted(first.resolved, 'lost attempt')} resolved, "
            f"{first.pruned} pruned",
        )
        try:
            while not stop.wait(0.05 if options.burst else 0.2):
                if options.burst and backend.idle(queues=queues):
                    break
        finally:
            ended = worker.stop(timeout=options.grace)
    stats = backend.stats
    how = "stopped" if stop.is_set() or not options.burst else "burst done"
    echo(
        f"chimeway worker: {how} after {counted(stats.jobs_run, 'job')} ({stats.acks} acked, "
        f"{stats.retries} retried, {stats.defers} deferred, {stats.failures} raised)"
    )
    if options.burst:
        _report_left(backend, queues)
    if not ended:
        warn(
            f"chimeway worker: jobs still running after {options.grace:g} s were abandoned; "
            "the rescuer resolves their attempts"
        )
        return ExitCode.PROBLEM
    return ExitCode.OK


def _report_left(backend: MemoryBackend, queues: list[str]) -> None:
    """Say what a burst leaves on its queues: jobs due (it was stopped) and jobs for later."""
    now = backend.clock.now()
    pending = [job for job in backend.pending() if job.queue in queues]
    due = sum(job.run_at <= now for job in pending)
    later = len(pending) - due
    if due:
        were = "was" if due == 1 else "were"
        echo(
            f"chimeway worker: {counted(due, 'due job')} {were} not run (stopped before their turn)"
        )
    if later:
        were = "was" if later == 1 else "were"
        echo(
            f"chimeway worker: {counted(later, 'job')} scheduled for later {were} not run; their "
            "deliveries stay in the ledger, and a later worker queues them again"
        )


def _reach_redis(backend: RQBackend) -> None:
    import redis  # noqa: PLC0415 -- optional: the "rq" extra

    try:
        backend.connection.ping()
    except redis.RedisError as error:
        raise CliError(f"cannot reach Redis: {error}", ExitCode.UNREACHABLE) from None


def _reach_broker(backend: CeleryBackend) -> None:
    from kombu.exceptions import OperationalError  # noqa: PLC0415 -- optional: "celery"

    try:
        with backend.app.connection_for_write() as connection:
            connection.ensure_connection(
                max_retries=1, interval_start=0, timeout=_BROKER_CONNECT_TIMEOUT
            )
    except (OperationalError, OSError) as error:
        raise CliError(
            f"cannot reach the Celery broker at {_broker_uri(backend)}: {error}",
            ExitCode.UNREACHABLE,
        ) from None


def _broker_uri(backend: CeleryBackend) -> str:
    """The broker's URL as kombu shows it, the password masked (``**``)."""
    with backend.app.connection_for_write() as connection:
        return str(connection.as_uri())


def _adapter(name: str) -> ModuleType | None:
    # An engine on an RQ or Celery backend has imported its adapter already:
    # looking in sys.modules imports no optional dependency.
    return sys.modules.get(f"chimeway_backends.{name}")


def check_queue(engine: Chimeway) -> None:
    """Raise :class:`CliError` (unreachable) unless the service ``engine`` queues on answers.

    Redis for an RQ backend, the broker for a Celery one; other backends
    are not checked.
    """
    rq, celery = _adapter("rq"), _adapter("celery")
    if rq is not None and isinstance(engine.backend, rq.RQBackend):
        _reach_redis(engine.backend)
    elif celery is not None and isinstance(engine.backend, celery.CeleryBackend):
        _reach_broker(engine.backend)


@contextlib.contextmanager
def queue_failures(engine: Chimeway) -> Iterator[None]:
    """Report Redis or the Celery broker failing inside the block as unreachable (exit 3).

    :func:`check_queue` found the service up; it can still go away before
    the last job is handed over.
    """
    rq, celery = _adapter("rq"), _adapter("celery")
    errors: tuple[type[BaseException], ...] = ()
    service = ""
    broker: CeleryBackend | None = None
    if rq is not None and isinstance(engine.backend, rq.RQBackend):
        import redis  # noqa: PLC0415 -- optional: the "rq" extra

        errors, service = (redis.RedisError,), "Redis"
    elif celery is not None and isinstance(engine.backend, celery.CeleryBackend):
        from kombu.exceptions import OperationalError  # noqa: PLC0415 -- optional: "celery"

        errors, service, broker = (OperationalError,), "the Celery broker", engine.backend
    try:
        yield
    except errors as error:
        # The broker's URL is only worth building for the error that names it.
        where = "" if broker is None else f" at {_broker_uri(broker)}"
        raise CliError(f"cannot reach {service}{where}: {error}", ExitCode.UNREACHABLE) from None


def run_rq(engine: Chimeway, options: WorkerOptions) -> int:
    """Run :func:`chimeway_backends.rq.run_worker` (forking, with RQ's scheduler)."""
    from chimeway_backends import rq as adapter  # noqa: PLC0415 -- optional: the "rq" extra

    backend = engine.backend
    if not isinstance(backend, adapter.RQBackend):
        raise _wrong_backend("rq", options, engine, "chimeway_backends.rq.RQBackend")
    if options.concurrency not in {None, 1}:
        raise CliError(
            "--backend rq: an RQ worker runs one job at a time; start more workers "
            "instead of --concurrency"
        )
    queues = _served(engine, options, backend.queue_name)
    _reach_redis(backend)
    _start_logging(engine, options)
    until = (
        "runs what is queued, then exits"
        if options.burst
        else f"rescue every {options.tick_interval:g} s"
    )
    echo(
        f"chimeway worker: rq backend, {_named(queues)}, app {options.app}; "
        f"{until}; Ctrl-C or SIGTERM stops"
    )
    ran = adapter.run_worker(
        engine,
        queues=queues,
        burst=options.burst,
        rescue_interval=options.tick_interval,
        logging_level=options.log_level.upper(),
    )
    if options.burst:
        echo(f"chimeway worker: burst done ({'jobs run' if ran else 'no job to run'})")
    else:
        echo("chimeway worker: stopped")
    return ExitCode.OK


def run_celery(engine: Chimeway, options: WorkerOptions) -> int:
    """Run :func:`chimeway_backends.celery.run_worker` on the backend's queue."""
    from chimeway_backends import celery as adapter  # noqa: PLC0415 -- optional: "celery"

    backend = engine.backend
    if not isinstance(backend, adapter.CeleryBackend):
        raise _wrong_backend("celery", options, engine, "chimeway_backends.celery.CeleryBackend")
    queues = _served(engine, options, backend.queue)
    _reach_broker(backend)
    _start_logging(engine, options)
    echo(
        f"chimeway worker: celery backend, {_named(queues)} on "
        f"{_broker_uri(backend)}, app {options.app}; rescue every "
        f"{options.tick_interval:g} s; Ctrl-C or SIGTERM stops"
    )
    stdout, stderr = sys.stdout, sys.stderr
    code = adapter.run_worker(
        engine,
        queues=queues,
        concurrency=options.concurrency,
        loglevel=options.log_level.upper(),
        rescue_interval=options.tick_interval,
    )
    # Celery's worker redirects both to its logger and leaves them so.
    sys.stdout, sys.stderr = stdout, stderr
    echo(f"chimeway worker: stopped (Celery's exit status {code})")
    return ExitCode.OK if code == 0 else ExitCode.PROBLEM


#: The worker backends by name; ``--backend`` accepts exactly these.
BACKENDS: Final[Mapping[str, WorkerBackend]] = MappingProxyType(
    {
        "memory": WorkerBackend("chimeway_backends.memory", None, run_memory, burst=True),
        "rq": WorkerBackend("chimeway_backends.rq", "rq", run_rq, burst=True),
        # A Celery worker has no way to tell an empty queue from a slow broker.
        "celery": WorkerBackend("chimeway_backends.celery", "celery", run_celery, burst=False),
    }
)


def require(name: str) -> WorkerBackend:
    """The backend ``name``, its adapter imported; :class:`CliError` when it cannot be."""
    backend = BACKENDS[name]
    try:
        importlib.import_module(backend.adapter)
    except MissingExtraError:
        raise CliError(
            f"--backend {name} needs the {backend.extra!r} extra: "
            f'pip install "chimeway[{backend.extra}]"'
        ) from None
    except ModuleNotFoundError as error:
        if error.name != backend.adapter:
            raise
        extra = f' (pip install "chimeway[{backend.extra}]")' if backend.extra else ""
        raise CliError(
            f"--backend {name}: its adapter {backend.adapter} is not installed{extra}"
        ) from None
    return backend
