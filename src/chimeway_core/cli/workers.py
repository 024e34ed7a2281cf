"""``chimeway worker``, ``relay``, ``rescue``, ``prune``, ``resend``: the application's engine.

The engine comes from ``--app module:attribute`` (or ``CHIMEWAY_APP``;
:mod:`chimeway_core.cli.app`); the backends ``--backend`` names are the table
of :mod:`chimeway_core.cli.backends`. Before anything runs, the engine's
database must hold chimeway's tables (a SQLite file is never created) and the
queue's service must answer.
``--db``, ``--redis-url`` and ``--broker-url`` (or their environment
variables) are exported as ``CHIMEWAY_DATABASE_URL``, ``CHIMEWAY_REDIS_URL``
and ``CHIMEWAY_BROKER_URL`` before the application is imported, so an
application that reads its configuration from the environment sees what the
command line was given.
"""

from __future__ import annotations

import argparse
import math
import os
import threading
from typing import Final
from uuid import UUID

import attrs
from sqlalchemy import URL

from chimeway_core.cli.app import load_engine
from chimeway_core.cli.backends import (
    WorkerOptions,
    backend_names,
    check_queue,
    queue_failures,
    require,
)
from chimeway_core.cli.config import (
    ENV_BROKER_URL,
    ENV_DATABASE_URL,
    ENV_REDIS_URL,
    check_connection,
    check_service_url,
    check_tables,
    database_url,
    from_env,
    shown,
    sqlite_path,
)
from chimeway_core.cli.errors import CliError, ExitCode
from chimeway_core.cli.output import counted, echo, print_json, warn
from chimeway_core.cli.parser import Subparsers, age, ago, command, delivery_id
from chimeway_core.engine import Chimeway
from chimeway_core.errors import (
    DeliveryNotFoundError,
    NotResendableError,
    UnknownChannelError,
    WorkerCrashedError,
)
from chimeway_core.loading import APP_VARIABLE
from chimeway_core.memory import MemoryBackend
from chimeway_core.records import Resent

__all__ = ["register", "run_prune", "run_relay", "run_rescue", "run_resend", "run_worker"]

_REDIS_SCHEMES: Final = ("redis", "rediss", "unix")
_BROKER_SCHEMES: Final = ("amqp", "amqps", "pyamqp", "redis", "rediss", "sqs", "memory")
_LOG_LEVELS: Final = ("debug", "info", "warning", "error")
#: The most jobs a worker runs at once (threads for memory, processes for Celery).
MAX_CONCURRENCY: Final = 256
#: The longest --tick-interval or --grace: a year, or less where threads
#: cannot wait that long (threading.TIMEOUT_MAX); larger values overflow a
#: wait or a timedelta far from the option that gave them.
MAX_SECONDS: Final = min(365 * 24 * 3600.0, threading.TIMEOUT_MAX)


def _add_app_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--app",
        metavar="MODULE:ATTRIBUTE",
        help="the application's engine: a Chimeway instance, or a zero-argument callable "
        f"returning one (like myapp.notify:engine; default: ${APP_VARIABLE})",
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


def _add_node_options(worker: argparse.ArgumentParser) -> None:
    """celery's node options: Celery's own spellings, Celery's defaults (all on)."""
    worker.add_argument(
        "--hostname",
        metavar="NAME",
        help="celery: the worker's node name, name@host, %%h the host name (default: "
        "Celery's, celery@%%h); give each worker on a host its own",
    )
    for option, what in (
        ("gossip", "no gossip: ignore the other workers' events"),
        ("mingle", "no synchronization with the other workers at start"),
        ("heartbeat", "send no heartbeat events"),
        (
            "remote-control",
            "no remote control: no celery.pidbox queue; celery inspect and control do "
            "not reach the worker",
        ),
    ):
        worker.add_argument(
            f"--without-{option}",
            dest=option.replace("-", "_"),
            action="store_false",
            help=f"celery: {what}",
        )


def register(subparsers: Subparsers) -> None:
    """Add ``chimeway worker``, ``relay``, ``rescue``, ``prune`` and ``resend``."""
    worker = command(subparsers, "worker", run_worker, "Run a worker for the application's engine.")
    worker.description = (
        "Run the worker of a backend for the engine --app names, until SIGINT or SIGTERM "
        "(running jobs finish first), with the engine's rescuer every --tick-interval "
        "seconds. memory runs jobs on threads in this process; rq runs "
        "chimeway_backends.rq.run_worker (forking unless --worker-class simple, with "
        "RQ's scheduler); celery runs "
        "chimeway_backends.celery.run_worker, a Celery node with Celery's defaults that "
        "--hostname and the --without options change (an app that would let chimeway's "
        "task take pickle is refused). The worker serves the backend's queue and "
        "every queue the engine's routes name, or only the --queue ones. With --burst "
        "(memory and rq) the worker runs the first rescue pass and what is due, then "
        "exits.\n\n"
        "exit status: 0 stopped cleanly or a burst done, 1 jobs were still running after "
        "--grace (or the Celery worker failed, or the RQ worker stopped on an error), 2 bad "
        "options (--burst on celery, --queue "
        "on memory or naming a queue the engine does not use, --hostname or a --without "
        "option on memory or rq, --worker-class or --maintenance-interval on memory or "
        "celery), --app, a Celery app that accepts pickle, "
        "backend or missing extra, a database without chimeway's tables, 3 database, Redis "
        "or broker unreachable."
    )
    worker.add_argument(
        "--backend",
        required=True,
        choices=backend_names(),
        help="the queue backend: " + ", ".join(backend_names()),
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
        "--queue",
        dest="queues",
        action="append",
        metavar="NAME",
        help="rq, celery: serve this queue (repeat for more; rq takes jobs from the first "
        "that has one); default: the backend's queue and every routed one",
    )
    worker.add_argument(
        "--worker-class",
        choices=("forking", "simple"),
        help="rq: 'forking' runs each job in a forked work horse (the default), 'simple' in "
        "the worker's own process (no fork; database connections are reused)",
    )
    worker.add_argument(
        "--maintenance-interval",
        type=int,
        metavar="SECONDS",
        help="rq: how often RQ cleans its registries (default: 60; RQ's own is 600)",
    )
    worker.add_argument(
        "--burst",
        action="store_true",
        help="memory, rq: run what is due, then exit (jobs scheduled for later wait for "
        "a later worker)",
    )
    _add_node_options(worker)
    worker.add_argument(
        "--log-level",
        choices=_LOG_LEVELS,
        default="warning",
        help="'info' logs every delivery event (default: warning)",
    )

    relay = command(subparsers, "relay", run_relay, "Hand committed outbox rows to the queue.")
    relay.description = (
        "Run one relay pass of the engine --app names: outbox rows older than the grace "
        "period, of deliveries due for that long, go to its backend.\n\nexit status: 0 "
        "done, 2 bad options or --app, a database without chimeway's tables, 3 database, "
        "Redis or broker unreachable."
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
        "exit status: 0 done, 2 bad options or --app, a database without chimeway's "
        "tables, 3 database, Redis or broker unreachable."
    )
    _add_app_options(rescue)
    rescue.add_argument("--json", action="store_true", help="print the result as JSON")

    prune = command(
        subparsers, "prune", run_prune, "Delete deliveries that have been terminal long enough."
    )
    prune.description = (
        "Delete the succeeded, cancelled and suppressed deliveries of the engine --app names "
        "that were created and last written more than --older-than ago, with their "
        "attempts and journal, --batch-size per transaction. Live deliveries are never "
        "deleted. A deleted delivery's idempotency key can be used again. --older-than may "
        "not be shorter than the engine's min_retention (its longest lease or rate-limit "
        "window).\n\n"
        "exit status: 0 done, 2 bad options or --app, an age below min_retention, a "
        "database without chimeway's tables, 3 database unreachable."
    )
    _add_app_options(prune)
    prune.add_argument(
        "--older-than",
        type=age,
        required=True,
        metavar="AGE",
        help="how long a delivery must have been terminal: seconds, or a number with "
        "s, m, h or d (like 30d)",
    )
    prune.add_argument(
        "--batch-size",
        type=int,
        default=1000,
        metavar="N",
        help="deliveries deleted per transaction (default: 1000)",
    )
    prune.add_argument(
        "--dry-run", action="store_true", help="count what would be deleted, delete nothing"
    )
    prune.add_argument("--json", action="store_true", help="print the result as JSON")

    resend = command(
        subparsers, "resend", run_resend, "Send deliveries that ended unsent again, as copies."
    )
    resend.description = (
        "Resend cancelled or suppressed deliveries of the engine --app names: each gets one "
        "copy (the same channel, recipient, payload and settings, due now), queued on the "
        "engine's backend; the original stays as it is, with a journal entry naming its "
        "copy. Name the deliveries by ID, or select them with --since (what ended in the "
        "last AGE), narrowed by --channel and --reason; a selection leaves copies out, so "
        "running it again resends nothing twice. A delivery already resent keeps its copy.\n\n"
        "exit status: 0 done, 1 an ID unknown, live or succeeded (the others are resent), 2 "
        "bad options or --app, an engine on the in-memory backend, 3 database, Redis or "
        "broker unreachable."
    )
    resend.add_argument(
        "ids", nargs="*", type=delivery_id, metavar="ID", help="the deliveries' ids"
    )
    _add_app_options(resend)
    resend.add_argument(
        "--since",
        type=age,
        metavar="AGE",
        help="select what was cancelled or suppressed in the last AGE: seconds, or a number "
        "with s, m, h or d (like 2h)",
    )
    resend.add_argument("--channel", metavar="NAME", help="select only this channel's")
    resend.add_argument(
        "--reason", metavar="REASON", help="select only this reason's (like permanent_failure)"
    )
    resend.add_argument("--limit", type=int, metavar="N", help="select at most N, the oldest first")
    resend.add_argument(
        "--dry-run", action="store_true", help="list what --since selects, resend nothing"
    )
    resend.add_argument("--json", action="store_true", help="print the result as JSON")


def _seconds(option: str, value: float, *, positive: bool = False) -> float:
    """``value`` if finite, >= 0 (> 0 if ``positive``) and at most :data:`MAX_SECONDS`."""
    above = value > 0 if positive else value >= 0
    if not (math.isfinite(value) and above and value <= MAX_SECONDS):
        low = "> 0" if positive else ">= 0"
        raise CliError(
            f"{option} must be a finite number of seconds {low} and at most {MAX_SECONDS:.0f}, "
            f"got {value:g}"
        )
    return value


def _app(args: argparse.Namespace) -> str:
    """``--app``, else ``$CHIMEWAY_APP``; a :class:`CliError` when neither is given."""
    app = from_env(args.app, APP_VARIABLE)
    if app is None:
        raise CliError(f"no engine: pass --app MODULE:ATTRIBUTE or set {APP_VARIABLE}")
    return app


def _service_url(option: str, variable: str, value: str | None, schemes: tuple[str, ...]) -> None:
    text = from_env(value, variable)
    check_service_url(text, option if value is not None else variable, schemes)


def _export(args: argparse.Namespace) -> None:
    """Check the URLs (options or environment); export the options to the environment."""
    if args.db is not None:
        database_url(args.db)  # fail on a malformed URL before importing anything
        os.environ[ENV_DATABASE_URL] = args.db
    _service_url("--redis-url", ENV_REDIS_URL, args.redis_url, _REDIS_SCHEMES)
    _service_url("--broker-url", ENV_BROKER_URL, args.broker_url, _BROKER_SCHEMES)
    if args.redis_url is not None:
        os.environ[ENV_REDIS_URL] = args.redis_url
    if args.broker_url is not None:
        os.environ[ENV_BROKER_URL] = args.broker_url


def _engine(app: str, db: str | None) -> Chimeway:
    """The engine ``app`` names, its database checked: ``--db``'s, reachable, with the tables."""
    engine = load_engine(app)
    database = engine.store.engine
    if db is not None and not _same_database(database_url(db), database.url):
        # An application that builds its store from a fixed URL never reads the
        # exported variable: going on would act on a database nobody named.
        raise CliError(
            f"--db names {shown(database_url(db))} but the engine of {app} uses "
            f"{shown(database.url)}: the application does not read ${ENV_DATABASE_URL}; "
            "drop --db, or build the store from that variable"
        )
    path = sqlite_path(database.url)
    if path is not None and not path.is_file():
        # Connecting would create an empty file in its place.
        raise CliError(
            f"no SQLite database at {str(path)!r} ({shown(database.url)}); create it with: "
            "chimeway db upgrade --db URL"
        )
    check_connection(database)
    check_tables(database)
    return engine


def _same_database(given: URL, used: URL) -> bool:
    """Whether two URLs name one database, whatever driver each picks."""
    if given.get_backend_name() != used.get_backend_name():
        return False
    if given.get_backend_name() == "sqlite":
        given_file, used_file = sqlite_path(given), sqlite_path(used)
        return (
            given_file is not None
            and used_file is not None
            and given_file.resolve() == used_file.resolve()
        )
    return (given.username, given.host, given.port, given.database) == (
        used.username,
        used.host,
        used.port,
        used.database,
    )


def run_worker(args: argparse.Namespace) -> int:
    """Check the backend, load the engine, run the backend's worker."""
    backend = require(args.backend)
    if args.burst and not backend.burst:
        raise CliError(
            f"--burst: a {args.backend} worker has no burst mode; run it without --burst "
            "and stop it with SIGTERM (running jobs finish first)"
        )
    if args.concurrency is not None and not 1 <= args.concurrency <= MAX_CONCURRENCY:
        # Past the bound a typo (10000) would start as many threads or processes.
        raise CliError(f"--concurrency must be from 1 to {MAX_CONCURRENCY}, got {args.concurrency}")
    _seconds("--tick-interval", args.tick_interval, positive=True)
    _seconds("--grace", args.grace)
    backend.check_options(args.backend, args)
    if args.maintenance_interval is not None:
        _seconds("--maintenance-interval", args.maintenance_interval, positive=True)
    app = _app(args)
    _export(args)
    engine = _engine(app, args.db)
    options = WorkerOptions(
        app=app,
        concurrency=args.concurrency,
        tick_interval=args.tick_interval,
        grace=args.grace,
        log_level=args.log_level,
        burst=args.burst,
        queues=None if args.queues is None else tuple(dict.fromkeys(args.queues)),
        hostname=args.hostname,
        gossip=args.gossip,
        mingle=args.mingle,
        heartbeat=args.heartbeat,
        remote_control=args.remote_control,
        worker_class=args.worker_class,
        maintenance_interval=args.maintenance_interval,
    )
    try:
        return backend.start(args.backend, engine, options)
    except WorkerCrashedError as error:
        raise CliError(str(error), ExitCode.PROBLEM, prog="chimeway worker") from error


def _one_pass_engine(args: argparse.Namespace, what: str) -> Chimeway:
    app = _app(args)
    _export(args)
    engine = _engine(app, args.db)
    if isinstance(engine.backend, MemoryBackend):
        raise CliError(
            f"the engine of {app} queues in memory: the jobs a one-off {what} hands over "
            "would end with this process; `chimeway worker --backend memory` relays and "
            "rescues as it works"
        )
    check_queue(engine)
    return engine


def run_relay(args: argparse.Namespace) -> int:
    """Run one relay pass and print how many rows it handed over."""
    if args.grace is not None:
        _seconds("--grace", args.grace)
    engine = _one_pass_engine(args, "relay")
    with queue_failures(engine):
        relayed = engine.relay(grace=args.grace)
    if args.json:
        print_json({"relayed": relayed})
    else:
        echo(f"relayed {counted(relayed, 'outbox row')} to {type(engine.backend).__qualname__}")
    return ExitCode.OK


def run_prune(args: argparse.Namespace) -> int:
    """Delete (or, with --dry-run, count) the deliveries terminal for longer than --older-than."""
    if args.batch_size < 1:
        raise CliError(f"--batch-size must be at least 1, got {args.batch_size}")
    _export(args)
    engine = _engine(_app(args), args.db)
    try:
        if args.dry_run:
            count = engine.count_prunable(args.older_than)
        else:
            count = engine.prune(args.older_than, batch_size=args.batch_size)
    except ValueError as error:  # an age below min_retention, or before the year 1
        raise CliError(f"--older-than: {error}") from None
    if args.json:
        print_json({"dry_run": args.dry_run, "deliveries": count})
    elif args.dry_run:
        echo(
            f"prune would delete {counted(count, 'delivery', 'deliveries')} "
            "(dry run: nothing deleted)"
        )
    else:
        echo(f"pruned {counted(count, 'delivery', 'deliveries')}")
    return ExitCode.OK


def run_rescue(args: argparse.Namespace) -> int:
    """Run one rescue pass and print what it did."""
    engine = _one_pass_engine(args, "rescue")
    with queue_failures(engine):
        report = engine.rescue()
    if args.json:
        print_json(attrs.asdict(report))
    else:
        echo(
            f"rescue: {counted(report.resolved, 'lost attempt')} resolved, "
            f"{counted(report.requeued, 'stranded delivery', 'stranded deliveries')} queued "
            f"again ({report.pending} already pending), "
            f"{counted(report.relayed, 'outbox row')} relayed, "
            f"{counted(report.pruned, 'terminal delivery', 'terminal deliveries')} pruned"
        )
    return ExitCode.OK


def _selection(args: argparse.Namespace) -> bool:
    """Whether the deliveries are selected (--since), not named; refuse a mix of both."""
    filters = [
        option
        for option, value in (
            ("--channel", args.channel),
            ("--reason", args.reason),
            ("--limit", args.limit),
        )
        if value is not None
    ] + (["--dry-run"] if args.dry_run else [])
    if args.ids:
        if args.since is not None or filters:
            given = ", ".join(["--since"] * (args.since is not None) + filters)
            raise CliError(f"name deliveries by ID or select them with --since, not both ({given})")
        return False
    if args.since is None:
        raise CliError("give the deliveries' IDs, or select them with --since AGE")
    if args.limit is not None and args.limit < 1:
        raise CliError(f"--limit must be at least 1, got {args.limit}")
    return True


def run_resend(args: argparse.Namespace) -> int:
    """Resend the named or selected deliveries; print each copy, and what was refused."""
    selecting = _selection(args)
    engine = _one_pass_engine(args, "resend")
    if not selecting:
        ids = list(dict.fromkeys(args.ids))
    else:
        ids = _selected(engine, args)
        if args.dry_run:
            if args.json:
                print_json({"dry_run": True, "deliveries": [str(i) for i in ids]})
            else:
                for delivery_id in ids:
                    echo(str(delivery_id))
                echo(
                    f"resend would make {counted(len(ids), 'copy', 'copies')} "
                    "(dry run: nothing resent)"
                )
            return ExitCode.OK
    done: list[Resent] = []
    refused: list[tuple[UUID, str]] = []
    with queue_failures(engine):
        for delivery_id in ids:
            try:
                done.append(engine.resend(delivery_id))
            except (DeliveryNotFoundError, NotResendableError, UnknownChannelError) as error:
                refused.append((delivery_id, str(error)))
    _print_resends(args, done, refused)
    return ExitCode.PROBLEM if refused else ExitCode.OK


def _selected(engine: Chimeway, args: argparse.Namespace) -> list[UUID]:
    """The ids --since, --channel, --reason and --limit select, on the engine's clock."""
    since = ago(engine.clock.now(), args.since, "--since")
    return engine.store.resendable(
        since=since, channel=args.channel, reason=args.reason, limit=args.limit
    )


def _print_resends(
    args: argparse.Namespace, done: list[Resent], refused: list[tuple[UUID, str]]
) -> None:
    if args.json:
        print_json(
            {
                "dry_run": False,
                "resent": [
                    {
                        "id": str(r.original.id),
                        "copy": str(r.copy.id),
                        "created": r.created,
                        "status": r.copy.status.value,
                        "reason": r.copy.reason,
                    }
                    for r in done
                ],
                "refused": [{"id": str(i), "error": error} for i, error in refused],
            }
        )
        return
    for resent in done:
        how = "resent" if resent.created else "already resent"
        reason = f" ({resent.copy.reason})" if resent.copy.reason else ""
        echo(f"{how} {resent.original.id} as {resent.copy.id}: {resent.copy.status.value}{reason}")
    for _, error in refused:
        warn(f"chimeway resend: {error}")
    made = sum(resent.created for resent in done)
    echo(
        f"resend: {counted(made, 'copy', 'copies')} made, {len(done) - made} already resent, "
        f"{len(refused)} refused"
    )
