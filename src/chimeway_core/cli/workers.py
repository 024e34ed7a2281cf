"""``chimeway worker``, ``relay`` and ``rescue``: running the application's own engine.

The engine comes from ``--app module:attribute`` (:mod:`chimeway_core.cli.app`);
the backends ``--backend`` names are the table of :mod:`chimeway_core.cli.backends`.
``--db``, ``--redis-url`` and ``--broker-url`` (or their environment
variables) are exported as ``CHIMEWAY_DATABASE_URL``, ``CHIMEWAY_REDIS_URL``
and ``CHIMEWAY_BROKER_URL`` before the application is imported, so an
application that reads its configuration from the environment sees what the
command line was given.
"""

from __future__ import annotations

import argparse
import os
from typing import Final

import attrs

from chimeway_backends.memory import MemoryBackend
from chimeway_core.cli.app import load_engine
from chimeway_core.cli.backends import BACKENDS, WorkerOptions, require
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
from chimeway_core.cli.output import echo, print_json
from chimeway_core.cli.parser import Subparsers, command
from chimeway_core.engine import Chimeway

__all__ = ["register", "run_relay", "run_rescue", "run_worker"]

_REDIS_SCHEMES: Final = ("redis", "rediss", "unix")
_BROKER_SCHEMES: Final = ("amqp", "amqps", "pyamqp", "redis", "rediss", "sqs", "memory")
_LOG_LEVELS: Final = ("debug", "info", "warning", "error")


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
        "(running jobs finish first), with the engine's rescuer every --tick-interval "
        "seconds. memory runs jobs on threads in this process; rq runs "
        "chimeway_backends.rq.run_worker (forking, with RQ's scheduler); celery runs "
        "chimeway_backends.celery.run_worker on the backend's queue.\n\n"
        "exit status: 0 stopped cleanly, 1 jobs were still running after --grace (or "
        "the Celery worker failed), 2 bad options, --app, backend or missing extra, "
        "3 database, Redis or broker unreachable."
    )
    worker.add_argument(
        "--backend",
        required=True,
        choices=list(BACKENDS),
        help="the queue backend: " + ", ".join(BACKENDS),
    )
    _add_app_options(worker)
    worker.add_argument(
        "--concurrency",
        type=int,
        metavar="N",
        help="jobs at a time: threads for memory (default 1), processes for celery "
        "(default: Celery's); rq runs one per worker",
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
        help="memory: how long running jobs may take to finish on stop (default: 30)",
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


def _export(args: argparse.Namespace) -> None:
    """Check the URLs (options or environment); export the options to the environment."""
    if args.db:
        database_url(args.db)  # fail on a malformed URL before importing anything
        os.environ[ENV_DATABASE_URL] = args.db
    check_service_url(from_env(args.redis_url, ENV_REDIS_URL), "--redis-url", _REDIS_SCHEMES)
    check_service_url(from_env(args.broker_url, ENV_BROKER_URL), "--broker-url", _BROKER_SCHEMES)
    if args.redis_url:
        os.environ[ENV_REDIS_URL] = args.redis_url
    if args.broker_url:
        os.environ[ENV_BROKER_URL] = args.broker_url


def _engine(args: argparse.Namespace) -> Chimeway:
    engine = load_engine(args.app)
    check_connection(engine.store.engine)
    return engine


def run_worker(args: argparse.Namespace) -> int:
    """Check the backend, load the engine, run the backend's worker."""
    backend = require(args.backend)
    if args.concurrency is not None and args.concurrency < 1:
        raise CliError(f"--concurrency must be at least 1, got {args.concurrency}")
    if not args.tick_interval > 0 or not args.grace >= 0:
        raise CliError("--tick-interval must be positive and --grace not negative")
    _export(args)
    engine = _engine(args)
    options = WorkerOptions(
        app=args.app,
        concurrency=args.concurrency,
        tick_interval=args.tick_interval,
        grace=args.grace,
        log_level=args.log_level,
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
