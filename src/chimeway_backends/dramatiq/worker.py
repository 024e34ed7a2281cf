"""The Dramatiq worker side: :func:`run_worker`, a Dramatiq worker in this process.

A plain ``dramatiq proj.tasks`` works as well: the backend's middleware
(:class:`~chimeway_backends.dramatiq.backend.ChimewayMiddleware`) runs the
rescuer in every worker process either way. :func:`run_worker` is what
``chimeway worker --backend dramatiq`` runs: one process, its threads, until
SIGINT or SIGTERM.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import dramatiq

from chimeway_backends.dramatiq.backend import DramatiqBackend
from chimeway_core.cli.signals import stop_on_signals
from chimeway_core.engine import Chimeway
from chimeway_core.loading import load_engine

__all__ = ["backend_of", "run_worker"]


def backend_of(engine: Chimeway) -> DramatiqBackend:
    """``engine``'s backend, a :class:`DramatiqBackend` (:class:`TypeError` if it is not)."""
    backend = engine.backend
    if not isinstance(backend, DramatiqBackend):
        raise TypeError(f"the engine's backend is {type(backend).__name__}, not a DramatiqBackend")
    return backend


def run_worker(
    engine: Chimeway | str | None = None,
    *,
    queues: Sequence[str] | None = None,
    threads: int = 8,
    rescue_interval: float | None = 30.0,
    shutdown_timeout: float = 600.0,
    stop: threading.Event | None = None,
) -> None:
    """Run a Dramatiq worker for ``engine``'s deliveries until SIGINT, SIGTERM or ``stop``.

    ``engine`` is resolved by :func:`chimeway_core.loading.load_engine`; its
    backend must be a :class:`DramatiqBackend`. The worker consumes
    ``queues`` (default: the backend's queue, then every queue the engine's
    ``routes`` name) with ``threads`` worker threads, and runs the rescuer
    every ``rescue_interval`` seconds (``None``: not in this worker). Same as
    ``dramatiq <module> --processes 1 --threads <threads> --queues <queues>``,
    with the engine resolved before it starts. On stop, running jobs get
    ``shutdown_timeout`` seconds to finish; messages prefetched and not
    started go back to the broker. Signals are handled only in the main
    thread; elsewhere, set ``stop``.
    """
    resolved = load_engine(engine)
    backend = backend_of(resolved)
    if backend.source.current is None:
        backend.bind(resolved)
    backend.rescue_interval = rescue_interval
    names = list(queues) if queues is not None else resolved.worker_queues(backend.queue)
    for name in names:
        if name not in backend.broker.get_declared_queues():
            backend.broker.declare_queue(name)
    backend.middleware.boot_process()
    worker = dramatiq.Worker(backend.broker, queues=set(names), worker_threads=threads)
    stop = threading.Event() if stop is None else stop
    with stop_on_signals(stop):
        worker.start()
        try:
            stop.wait()
        finally:
            worker.stop(timeout=int(shutdown_timeout * 1000))
