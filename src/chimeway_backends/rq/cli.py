"""``chimeway worker --backend rq``: what the RQ backend plugs into the command line."""

from __future__ import annotations

from typing import Final

from rq.worker import BaseWorker

from chimeway_backends.rq.backend import RQBackend
from chimeway_backends.rq.harness import open_harness
from chimeway_backends.rq.worker import ChimewaySimpleWorker, ChimewayWorker, run_worker
from chimeway_core.cli import backends as cli
from chimeway_core.cli.errors import CliError, ExitCode
from chimeway_core.cli.output import echo
from chimeway_core.engine import Chimeway

__all__ = ["WORKER", "WORKER_CLASSES", "run_rq"]

#: ``--worker-class``: the chimeway worker class each name runs.
WORKER_CLASSES: Final[dict[str, type[BaseWorker]]] = {
    "forking": ChimewayWorker,
    "simple": ChimewaySimpleWorker,
}


def run_rq(engine: Chimeway, options: cli.WorkerOptions) -> int:
    """Run :func:`chimeway_backends.rq.run_worker` (forking unless told, with RQ's scheduler)."""
    backend = engine.backend
    assert isinstance(backend, RQBackend)  # checked by WorkerBackend.start
    if options.concurrency not in {None, 1}:
        raise CliError(
            "--backend rq: an RQ worker runs one job at a time; start more workers "
            "instead of --concurrency"
        )
    queues = cli.prepare(engine, options)
    until = (
        "runs what is queued, then exits"
        if options.burst
        else f"rescue every {options.tick_interval:g} s"
    )
    kind = options.worker_class or "forking"
    echo(
        f"chimeway worker: rq backend, {cli.named(queues)}, app {options.app}; "
        f"{kind} worker, {until}; Ctrl-C or SIGTERM stops"
    )
    ran = run_worker(
        engine,
        queues=queues,
        burst=options.burst,
        worker_class=WORKER_CLASSES[kind],
        rescue_interval=options.tick_interval,
        maintenance_interval=options.maintenance_interval,
        logging_level=options.log_level.upper(),
    )
    if options.burst:
        echo(f"chimeway worker: burst done ({'jobs run' if ran else 'no job to run'})")
    else:
        echo("chimeway worker: stopped")
    return ExitCode.OK


#: The RQ backend's entry in the ``chimeway.backends`` entry-point group.
WORKER = cli.WorkerBackend(
    RQBackend,
    "chimeway_backends.rq.RQBackend",
    run_rq,
    burst=True,
    options=frozenset(cli.BACKEND_OPTIONS),
    harness=open_harness,
)
