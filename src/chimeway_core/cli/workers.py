"""``chimeway worker``, ``relay`` and ``rescue``: running the application's own engine.

The engine comes from ``--app module:attribute`` (:mod:`chimeway_core.cli.app`).
``--db``, ``--redis-url`` and ``--broker-url`` (or their environment
variables) are exported as ``CHIMEWAY_DATABASE_URL``, ``CHIMEWAY_REDIS_URL``
and ``CHIMEWAY_BROKER_URL`` before the application is imported, so an
application that reads its configuration from the environment sees what the
command line was given.

:data:`BACKENDS` is the one table of worker backends: a name, the adapter
module that must be importable, the extra that installs its dependencies, and
the function that runs the worker. A new backend plugs in with one entry.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from types import FrameType, MappingProxyType
from typing import Final

import attrs

from chimeway_backends.memory import MemoryBackend, MemoryWorker
from chimeway_core.cli.app import load_engine
from chimeway_core.cli.config import (
    ENV_BROKER_URL,
    ENV_DATABASE_URL,
    ENV_REDIS_URL,
    check_connection,
    check_service_url,
    database_url,
    from_env,
)
from chimeway_core.cli.errors import CliError, ExitCode
from chimeway_core.cli.output import echo, print_json, warn
from chimeway_core.cli.parser import Subparsers, command
from chimeway_core.engine import Chimeway
from chimeway_core.telemetry import LoggingSubscriber

__all__ = [
    "BACKENDS",
    "RunWorker",
    "WorkerBackend",
    "WorkerOptions",
    "register",
    "run_memory",
    "run_relay",
    "run_rescue",
    "run_worker",
]

_REDIS_SCHEMES: Final = ("redis", "rediss", "unix")
_BROKER_SCHEMES: Final = ("amqp", "amqps", "pyamqp", "redis", "rediss", "sqs", "memory")
_LOG_LEVELS: Final = ("debug", "info", "warning", "error")


@attrs.frozen(kw_only=True)
class WorkerOptions:
    """What ``chimeway worker`` was asked, beyond the engine."""

    app: str
    concurrency: int
    tick_interval: float
    grace: float
    redis_url: str | None
    broker_url: str | None


#: How a backend's worker runs: the engine and the options in, the exit code out.
RunWorker = Callable[[Chimeway, WorkerOptions], int]


@attrs.frozen
class WorkerBackend:
    """One entry of :data:`BACKENDS`."""

    adapter: str
    """The module that must be importable for this backend."""
    extra: str | None
    """The chimeway extra that installs its dependencies (``None``: none needed)."""
    run: RunWorker
    """Runs the worker until it is stopped; returns the exit code."""


@contextlib.contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """Set ``stop`` on SIGINT or SIGTERM inside the block (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handle(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run_memory(engine: Chimeway, options: WorkerOptions) -> int:
    """Run :class:`~chimeway_backends.memory.MemoryWorker` until SIGINT or SIGTERM.

    A rescue pass runs first (outbox rows and lost attempts left by a
    previous process), then every ``tick_interval`` seconds. On a signal no
    new job is taken and running ones get ``grace`` seconds to finish.
    """
    backend = engine.backend
    if not isinstance(backend, MemoryBackend):
        raise CliError(
            f"--backend memory: the engine of {options.app} queues on a "
            f"{type(backend).__qualname__}, not a chimeway_backends.memory.MemoryBackend"
        )
    first = engine.rescue()
    worker = MemoryWorker(
        backend,
        engine,
        concurrency=options.concurrency,
        tick=engine.rescue,
        tick_interval=options.tick_interval,
    )
    stop = threading.Event()
    with _stop_on_signals(stop):
        worker.start()
        echo(
            f"chimeway worker: memory backend, {options.concurrency} thread(s), app "
            f"{options.app}; rescue every {options.tick_interval:g} s; Ctrl-C or SIGTERM stops"
        )
        echo(
            f"chimeway worker: first rescue pass: {first.relayed} relayed, "
            f"{first.requeued} requeued, {first.resolved} lost attempts resolved"
        )
        try:
            while not stop.wait(0.2):
                pass
        finally:
            ended = worker.stop(timeout=options.grace)
    stats = backend.stats
    echo(
        f"chimeway worker: stopped after {stats.jobs_run} jobs ({stats.acks} acked, "
        f"{stats.retries} retried, {stats.defers} deferred, {stats.failures} raised)"
    )
    if not ended:
        warn(
            f"chimeway worker: jobs still running after {options.grace:g} s were abandoned; "
            "the rescuer resolves their attempts"
        )
        return ExitCode.PROBLEM
    return ExitCode.OK


def _not_wired(name: str) -> RunWorker:
    def run(engine: Chimeway, options: WorkerOptions) -> int:  # noqa: ARG001 -- the RunWorker shape
        raise CliError(
            f"--backend {name}: chimeway_backends.{name} is installed but `chimeway worker` "
            "cannot drive it yet; start its worker as its documentation says"
        )

    return run


#: The worker backends by name; ``--backend`` accepts exactly these.
BACKENDS: Final[Mapping[str, WorkerBackend]] = MappingProxyType(
    {
        "memory": WorkerBackend("chimeway_backends.memory", None, run_memory),
        "rq": WorkerBackend("chimeway_backends.rq", "rq", _not_wired("rq")),
        "celery": WorkerBackend("chimeway_backends.celery", "celery", _not_wired("celery")),
    }
)


def _add_app_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--app",
        required=True,
        metavar="MODULE:ATTRIBUTE",
        help="the application's engine: a Chimeway instance, or a zero-argument callable "
        "returning one (like myapp.notify:engine)",
    )
    parser.add_argument(
        "--db", metavar="URL", help=f"exported to the application as ${ENV_DATABASE_URL}"
    )
    parser.add_argument(
        "--redis-url", metavar="URL", help=f"exported to the application as ${ENV_REDIS_URL}"
    )
    parser.add_argument(
        "--broker-url", metavar="URL", help=f"exported to the application as ${ENV_BROKER_URL}"
    )


def register(subparsers: Subparsers) -> None:
    """Add ``chimeway worker``, ``relay`` and ``rescue``."""
    worker = command(subparsers, "worker", run_worker, "Run a worker for the application's engine.")
    worker.description = (
        "Run the worker of a backend for the engine --app names, until SIGINT or SIGTERM "
        "(running jobs finish first). The memory backend runs jobs on threads in this "
        "process and runs the engine's rescuer every --tick-interval seconds.\n\n"
        "exit status: 0 stopped cleanly, 1 jobs were still running after --grace, "
        "2 bad options, --app or backend, 3 database unreachable."
    )
    worker.add_argument(
        "--backend",
        required=True,
        choices=list(BACKENDS),
        help="the queue backend: " + ", ".join(BACKENDS),
    )
    _add_app_options(worker)
    worker.add_argument(
        "--concurrency", type=int, default=1, metavar="N", help="worker threads (default: 1)"
    )
    worker.add_argument(
        "--tick-interval",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="how often the rescuer runs (default: 10)",
    )
    worker.add_argument(
        "--grace",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="how long running jobs may take to finish on stop (default: 30)",
    )
    worker.add_argument(
        "--log-level",
        choices=_LOG_LEVELS,
        default="warning",
        help="'info' logs every delivery event (default: warning)",
    )

    relay = command(subparsers, "relay", run_relay, "Hand committed outbox rows to the queue.")
    relay.description = (
        "Run one relay pass of the engine --app names: outbox rows older than the grace "
        "period go to its backend.\n\nexit status: 0 done, 2 bad options or --app, "
        "3 database unreachable."
    )
    _add_app_options(relay)
    relay.add_argument(
        "--grace",
        type=float,
        metavar="SECONDS",
        help="relay rows older than this (default: the engine's relay_grace)",
    )
    relay.add_argument("--json", action="store_true", help="print the result as JSON")

    rescue = command(subparsers, "rescue", run_rescue, "Run one pass of the rescuer.")
    rescue.description = (
        "Run one rescue pass of the engine --app names: resolve attempts left in flight by "
        "dead workers, queue stranded deliveries again, relay the outbox.\n\n"
        "exit status: 0 done, 2 bad options or --app, 3 database unreachable."
    )
    _add_app_options(rescue)
    rescue.add_argument("--json", action="store_true", help="print the result as JSON")


def _export(args: argparse.Namespace) -> tuple[str | None, str | None]:
    """Check the URLs, export the options to the environment; return redis and broker URLs."""
    if args.db:
        database_url(args.db)  # fail on a malformed URL before importing anything
        os.environ[ENV_DATABASE_URL] = args.db
    redis_url = check_service_url(
        from_env(args.redis_url, ENV_REDIS_URL), "--redis-url", _REDIS_SCHEMES
    )
    broker_url = check_service_url(
        from_env(args.broker_url, ENV_BROKER_URL), "--broker-url", _BROKER_SCHEMES
    )
    if args.redis_url:
        os.environ[ENV_REDIS_URL] = args.redis_url
    if args.broker_url:
        os.environ[ENV_BROKER_URL] = args.broker_url
    return redis_url, broker_url


def _engine(args: argparse.Namespace) -> Chimeway:
    engine = load_engine(args.app)
    check_connection(engine.store.engine)
    return engine


def run_worker(args: argparse.Namespace) -> int:
    """Check the backend, load the engine, run the backend's worker."""
    name: str = args.backend
    backend = BACKENDS[name]
    if importlib.util.find_spec(backend.adapter) is None:
        extra = f' with pip install "chimeway[{backend.extra}]"' if backend.extra else ""
        raise CliError(
            f"--backend {name}: its adapter ({backend.adapter}) is not installed yet; "
            f"it will ship{extra}"
        )
    if args.concurrency < 1:
        raise CliError(f"--concurrency must be at least 1, got {args.concurrency}")
    if not args.tick_interval > 0 or not args.grace >= 0:
        raise CliError("--tick-interval must be positive and --grace not negative")
    redis_url, broker_url = _export(args)
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    engine = _engine(args)
    engine.telemetry.subscribe(LoggingSubscriber())
    options = WorkerOptions(
        app=args.app,
        concurrency=args.concurrency,
        tick_interval=args.tick_interval,
        grace=args.grace,
        redis_url=redis_url,
        broker_url=broker_url,
    )
    return backend.run(engine, options)


def _one_pass_engine(args: argparse.Namespace, what: str) -> Chimeway:
    _export(args)
    engine = _engine(args)
    if isinstance(engine.backend, MemoryBackend):
        raise CliError(
            f"the engine of {args.app} queues in memory: the jobs a one-off {what} hands over "
            "would end with this process; `chimeway worker --backend memory` relays and "
            "rescues as it works"
        )
    return engine


def run_relay(args: argparse.Namespace) -> int:
    """Run one relay pass and print how many rows it handed over."""
    if args.grace is not None and not args.grace >= 0:
        raise CliError(f"--grace must not be negative, got {args.grace}")
    engine = _one_pass_engine(args, "relay")
    relayed = engine.relay(grace=args.grace)
    if args.json:
        print_json({"relayed": relayed})
    else:
        echo(f"relayed {relayed} outbox rows to {type(engine.backend).__qualname__}")
    return ExitCode.OK


def run_rescue(args: argparse.Namespace) -> int:
    """Run one rescue pass and print what it did."""
    engine = _one_pass_engine(args, "rescue")
    report = engine.rescue()
    if args.json:
        print_json(attrs.asdict(report))
    else:
        echo(
            f"rescue: {report.resolved} lost attempts resolved, {report.requeued} stranded "
            f"deliveries queued again, {report.relayed} outbox rows relayed"
        )
    return ExitCode.OK
