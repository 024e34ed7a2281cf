"""The worker backends ``chimeway worker --backend`` knows, found through entry points.

A backend plugs into the command line by naming a :class:`WorkerBackend` in
the ``chimeway.backends`` entry-point group (in its ``pyproject.toml``:
``[project.entry-points."chimeway.backends"]``, ``rq =
"chimeway_backends.rq.cli:WORKER"``): the class an engine's backend must be for
it, the function that runs its worker, and whether that worker has a burst
mode. A new backend needs no edit here. The names are listed without
importing anything (:func:`backend_names`); :func:`require` imports the one
asked for, before the application is, so a missing extra
(:class:`~chimeway_core.errors.MissingExtraError` from the adapter) is
reported first and in one line. The memory backend is the core's own:
always there, whatever is installed.

Each runner checks that the application's engine really queues on its
backend and that the queue's service answers (exit 3 otherwise), then runs
the adapter's own worker until SIGINT or SIGTERM. The one-off ``relay`` and
``rescue`` make the same check with :func:`check_queue`, and run inside
:func:`queue_failures`. A service that does not answer is always a
:class:`~chimeway_core.errors.BackendUnavailableError` from the backend
itself: the command line imports no broker client.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import logging
import sys
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Final

import attrs

from chimeway_core.backend import Backend, as_backend
from chimeway_core.cli.errors import CliError, ExitCode
from chimeway_core.cli.output import counted, echo, printable, warn
from chimeway_core.cli.signals import stop_on_signals
from chimeway_core.engine import Chimeway
from chimeway_core.errors import BackendUnavailableError, MissingExtraError
from chimeway_core.memory import MemoryBackend, MemoryWorker
from chimeway_core.memory.harness import open_memory_harness
from chimeway_core.telemetry import LoggingSubscriber

if TYPE_CHECKING:
    from chimeway_core.testing.deployment import OpenHarness

__all__ = [
    "BACKEND_OPTIONS",
    "GROUP",
    "MEMORY",
    "RunWorker",
    "WorkerBackend",
    "WorkerOptions",
    "backend_names",
    "check_queue",
    "named",
    "prepare",
    "queue_failures",
    "reach",
    "require",
    "run_memory",
    "served_queues",
    "start_logging",
]

#: The entry-point group backends register their :class:`WorkerBackend` in.
GROUP: Final = "chimeway.backends"


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
    hostname: str | None = None
    """The worker's node name, ``name@host`` (``None``: the backend's default)."""
    gossip: bool = True
    """Celery: take part in worker gossip (``--without-gossip`` turns it off)."""
    mingle: bool = True
    """Celery: synchronize with the other workers at start (``--without-mingle``)."""
    heartbeat: bool = True
    """Celery: send worker heartbeat events (``--without-heartbeat``)."""
    remote_control: bool = True
    """Celery: answer ``celery inspect`` and ``control`` (``--without-remote-control``)."""
    worker_class: str | None = None
    """``--worker-class``: how the backend's worker runs jobs (``None``: its default)."""
    maintenance_interval: int | None = None
    """``--maintenance-interval``: seconds between the queue's own upkeep (``None``: default)."""


#: The options only some backends take, as ``--help`` spells them.
BACKEND_OPTIONS: Final = ("--worker-class", "--maintenance-interval")
#: The longest --hostname: the node name goes into AMQP queue names (255 bytes at most).
MAX_HOSTNAME: Final = 200


#: How a backend's worker runs: the engine and the options in, the exit code out.
RunWorker = Callable[[Chimeway, WorkerOptions], int]


@attrs.frozen
class WorkerBackend:
    """What a backend registers in the ``chimeway.backends`` entry-point group."""

    backend: type[Backend]
    """The class an engine's backend must be an instance of."""
    shown: str
    """That class as an error message names it (its public import path)."""
    run: RunWorker
    """Runs the worker until it is stopped; returns the exit code."""
    burst: bool
    """Whether its worker can run in burst mode (``--burst``)."""
    nodes: bool = False
    """Whether its worker is a Celery-style node: ``--hostname`` and the ``--without-*``."""
    options: frozenset[str] = frozenset()
    """Which of :data:`BACKEND_OPTIONS` its worker takes; the others are refused."""
    harness: OpenHarness | None = None
    """How ``chimeway selftest --app`` runs chimeway's suites on it (``None``: it cannot)."""

    def check_options(self, name: str, args: argparse.Namespace) -> None:
        """Refuse, before the application loads, the options this backend's worker lacks.

        Also a ``--hostname`` no Celery node could use: it goes into queue
        names on the broker.
        """
        given = {
            "--worker-class": args.worker_class is not None,
            "--maintenance-interval": args.maintenance_interval is not None,
        }
        refused = [option for option, set_ in given.items() if set_ and option not in self.options]
        if refused:
            raise CliError(f"{', '.join(refused)}: not an option of a {name} worker")
        hostname = args.hostname
        if hostname is not None and not (
            hostname.isprintable()
            and not any(c.isspace() for c in hostname)
            and 0 < len(hostname.encode()) <= MAX_HOSTNAME
        ):
            raise CliError(
                f"--hostname must be 1 to {MAX_HOSTNAME} bytes of printable characters and no "
                f"spaces, like worker1@%h; got '{printable(hostname[:60])}'"
            )
        nodes = [
            option
            for option, set_ in (
                ("--hostname", hostname is not None),
                ("--without-gossip", not args.gossip),
                ("--without-mingle", not args.mingle),
                ("--without-heartbeat", not args.heartbeat),
                ("--without-remote-control", not args.remote_control),
            )
            if set_
        ]
        if nodes and not self.nodes:
            these = "this option is" if len(nodes) == 1 else "these options are"
            raise CliError(
                f"{', '.join(nodes)}: a {name} worker is not a Celery node; "
                f"{these} for --backend celery"
            )

    def start(self, name: str, engine: Chimeway, options: WorkerOptions) -> int:
        """Check the engine queues on this backend, then :attr:`run` its worker."""
        if not isinstance(engine.backend, self.backend):
            raise CliError(
                f"--backend {name}: the engine of {options.app} queues on a "
                f"{type(engine.backend).__qualname__}, not a {self.shown}"
            )
        return self.run(engine, options)


def start_logging(engine: Chimeway, options: WorkerOptions) -> None:
    """Log to stderr at ``--log-level``, delivery events included; once the checks passed."""
    logging.basicConfig(
        level=options.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    engine.telemetry.subscribe(LoggingSubscriber())


def served_queues(engine: Chimeway, options: WorkerOptions, default: str) -> list[str]:
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


def named(queues: list[str]) -> str:
    """``queue 'a'`` or ``queues 'a', 'b'``."""
    return ("queue " if len(queues) == 1 else "queues ") + ", ".join(map(repr, queues))


def reach(backend: Backend) -> None:
    """Raise :class:`CliError` (unreachable) unless ``backend``'s service answers."""
    try:
        backend.ping()
    except BackendUnavailableError as error:
        raise CliError(str(error), ExitCode.UNREACHABLE) from None


def prepare(engine: Chimeway, options: WorkerOptions) -> list[str]:
    """Before a worker runs: the queues it serves, its service reached, logging started.

    The queues are ``--queue``'s, checked, or the backend's default queue and
    every routed one; a service that does not answer is a :class:`CliError`
    (exit 3). Logging starts only once both checks passed.
    """
    backend = as_backend(engine.backend)
    queues = served_queues(engine, options, backend.default_queue)
    reach(backend)
    start_logging(engine, options)
    return queues


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
    assert isinstance(backend, MemoryBackend)  # checked by WorkerBackend.start
    if options.queues is not None:
        # Its rescuer and relay queue every channel's jobs in this process's memory:
        # serving some would leave the others' there until the process ends.
        raise CliError(
            "--backend memory: a memory worker serves every queue of its process, so "
            "--queue is for rq and celery; in one process, MemoryWorker(queues=...) gives "
            "a queue threads of its own"
        )
    queues = prepare(engine, options)
    threads = options.concurrency or 1
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
            f"chimeway worker: memory backend, {named(queues)}, {counted(threads, 'thread')}, "
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


#: The core's own backend: jobs on threads of the worker's process.
MEMORY: Final = WorkerBackend(
    MemoryBackend,
    "chimeway_backends.memory.MemoryBackend",
    run_memory,
    burst=True,
    harness=open_memory_harness,
)


def _entry_points() -> dict[str, importlib.metadata.EntryPoint]:
    return {point.name: point for point in importlib.metadata.entry_points(group=GROUP)}


#: The order ``--help`` has always listed the bundled backends in; any other
#: registered backend follows them, by name. Listing is not registering.
_SHOWN_FIRST: Final = ("memory", "rq", "celery")


def backend_names() -> list[str]:
    """The names ``--backend`` accepts: ``memory`` and every registered one."""
    names = {"memory", *_entry_points()}
    return [name for name in _SHOWN_FIRST if name in names] + sorted(names - {*_SHOWN_FIRST})


def require(name: str) -> WorkerBackend:
    """The backend ``name``, its adapter imported; :class:`CliError` when it cannot be."""
    point = _entry_points().get(name)
    if point is None:
        if name == "memory":
            return MEMORY
        raise CliError(f"--backend {name}: no such backend; known: {', '.join(backend_names())}")
    try:
        # Its package first, which checks the extra, even where only the package
        # was dropped from sys.modules and the entry's own module was not.
        importlib.import_module(point.module.rpartition(".")[0] or point.module)
        found = point.load()
    except MissingExtraError as error:
        raise CliError(
            f"--backend {name} needs the {error.extra!r} extra: "
            f'pip install "chimeway[{error.extra}]"'
        ) from None
    except ModuleNotFoundError as error:
        missing = error.name or ""
        if not (point.module == missing or point.module.startswith(f"{missing}.")):
            raise
        raise CliError(
            f"--backend {name}: its adapter {missing} is not installed{_install(point)}"
        ) from None
    if not isinstance(found, WorkerBackend):
        raise CliError(
            f"--backend {name}: {point.value} is a {type(found).__qualname__}, "
            "not a chimeway_core.cli.backends.WorkerBackend"
        )
    return found


def _install(point: importlib.metadata.EntryPoint) -> str:
    """`` (pip install "chimeway[rq]")`` when the backend's name is an extra of its package."""
    dist = point.dist
    extras = (dist.metadata.get_all("Provides-Extra") or []) if dist is not None else []
    if dist is None or point.name not in extras:
        return ""
    return f' (pip install "{dist.metadata["Name"]}[{point.name}]")'


def check_queue(engine: Chimeway) -> None:
    """Raise :class:`CliError` (unreachable) unless the service ``engine`` queues on answers.

    Redis for an RQ backend, the broker for a Celery one: whatever the
    backend's :meth:`~chimeway_core.backend.Backend.ping` asks; an
    in-process queue always answers.
    """
    reach(as_backend(engine.backend))


@contextlib.contextmanager
def queue_failures(engine: Chimeway) -> Iterator[None]:  # noqa: ARG001 - one shape for every backend
    """Report the queue's service failing inside the block as unreachable (exit 3).

    :func:`check_queue` found the service up; it can still go away before
    the last job is handed over.
    """
    try:
        yield
    except BackendUnavailableError as error:
        raise CliError(str(error), ExitCode.UNREACHABLE) from None
