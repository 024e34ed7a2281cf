"""``chimeway worker --backend dramatiq``: what the Dramatiq backend plugs into the command line."""

from __future__ import annotations

from chimeway_backends.dramatiq.backend import DramatiqBackend
from chimeway_backends.dramatiq.harness import open_harness
from chimeway_backends.dramatiq.worker import run_worker
from chimeway_core.cli import backends as cli
from chimeway_core.cli.errors import ExitCode
from chimeway_core.cli.output import echo
from chimeway_core.engine import Chimeway

__all__ = ["WORKER", "run_dramatiq"]


def run_dramatiq(engine: Chimeway, options: cli.WorkerOptions) -> int:
    """Run :func:`chimeway_backends.dramatiq.run_worker`: one process, ``--concurrency`` threads."""
    backend = engine.backend
    assert isinstance(backend, DramatiqBackend)  # checked by WorkerBackend.start
    queues = cli.prepare(engine, options)
    threads = options.concurrency or 8
    echo(
        f"chimeway worker: dramatiq backend, {cli.named(queues)} on "
        f"{type(backend.broker).__name__}, app {options.app}; {threads} threads, rescue every "
        f"{options.tick_interval:g} s; Ctrl-C or SIGTERM stops"
    )
    run_worker(
        engine,
        queues=queues,
        threads=threads,
        rescue_interval=options.tick_interval,
        shutdown_timeout=options.grace,
    )
    echo("chimeway worker: stopped")
    return ExitCode.OK


#: The Dramatiq backend's entry in the ``chimeway.backends`` entry-point group.
#: A Dramatiq worker cannot tell an empty queue from a slow broker: no burst.
WORKER = cli.WorkerBackend(
    DramatiqBackend,
    "chimeway_backends.dramatiq.DramatiqBackend",
    run_dramatiq,
    burst=False,
    harness=open_harness,
)
