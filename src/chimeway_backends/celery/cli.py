"""``chimeway worker --backend celery``: what the Celery backend plugs into the command line."""

from __future__ import annotations

import sys

from chimeway_backends.celery.backend import CeleryBackend
from chimeway_backends.celery.harness import open_harness
from chimeway_backends.celery.settings import UnsafeSerializerError, refuse_pickle
from chimeway_backends.celery.worker import run_worker
from chimeway_core.cli import backends as cli
from chimeway_core.cli.errors import CliError, ExitCode
from chimeway_core.cli.output import echo
from chimeway_core.engine import Chimeway

__all__ = ["WORKER", "run_celery"]


def run_celery(engine: Chimeway, options: cli.WorkerOptions) -> int:
    """Run :func:`chimeway_backends.celery.run_worker` on the backend's queue.

    An app that would let chimeway's task take pickle is refused first (exit
    2), before the broker is reached.
    """
    backend = engine.backend
    assert isinstance(backend, CeleryBackend)  # checked by WorkerBackend.start
    try:
        refuse_pickle(backend.app)
    except UnsafeSerializerError as error:
        raise CliError(str(error)) from None
    queues = cli.prepare(engine, options)
    echo(
        f"chimeway worker: celery backend, {cli.named(queues)} on "
        f"{backend.broker_uri()}, app {options.app}; rescue every "
        f"{options.tick_interval:g} s; Ctrl-C or SIGTERM stops"
    )
    stdout, stderr = sys.stdout, sys.stderr
    code = run_worker(
        engine,
        queues=queues,
        concurrency=options.concurrency,
        loglevel=options.log_level.upper(),
        rescue_interval=options.tick_interval,
        hostname=options.hostname,
        gossip=options.gossip,
        mingle=options.mingle,
        heartbeat=options.heartbeat,
        remote_control=options.remote_control,
    )
    # Celery's worker redirects both to its logger and leaves them so.
    sys.stdout, sys.stderr = stdout, stderr
    echo(f"chimeway worker: stopped (Celery's exit status {code})")
    return ExitCode.OK if code == 0 else ExitCode.PROBLEM


#: The Celery backend's entry in the ``chimeway.backends`` entry-point group.
#: A Celery worker has no way to tell an empty queue from a slow broker: no burst.
WORKER = cli.WorkerBackend(
    CeleryBackend,
    "chimeway_backends.celery.CeleryBackend",
    run_celery,
    burst=False,
    nodes=True,
    harness=open_harness,
)
