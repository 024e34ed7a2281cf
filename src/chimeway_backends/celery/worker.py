"""The Celery worker side: the consumer bootstep and :func:`run_worker`.

A consumer bootstep, added to the app by
:class:`~chimeway_backends.celery.backend.CeleryBackend`, runs in every
worker (``celery -A proj worker`` as well as :func:`run_worker`). Built
with the worker, before it connects to the broker, it refuses an app that
would let chimeway's task take pickle
(:func:`~chimeway_backends.celery.settings.refuse_pickle`). At start it
resolves the engine and warns about risky settings
(:func:`~chimeway_backends.celery.settings.check_configuration`); then it
runs the rescuer (:func:`chimeway_core.worker.rescue`) every
``rescue_interval`` seconds on the worker's own timer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from celery import bootsteps
from celery.utils.nodenames import default_nodename, host_format

from chimeway_backends.celery.backend import APP_ATTRIBUTE, CeleryBackend
from chimeway_backends.celery.settings import refuse_pickle, warn_configuration
from chimeway_core.engine import Chimeway
from chimeway_core.loading import load_engine

__all__ = ["ChimewayStep", "backend_of", "run_worker"]


def backend_of(app: Any) -> CeleryBackend:
    """The :class:`CeleryBackend` of ``app`` (:class:`TypeError` if it has none)."""
    backend = getattr(app, APP_ATTRIBUTE, None)
    if not isinstance(backend, CeleryBackend):
        raise TypeError(f"{app!r} has no CeleryBackend")
    return backend


class ChimewayStep(bootsteps.StartStopStep):  # type: ignore[misc]  # celery is untyped
    """The worker-side bootstep: checks the configuration, then runs the rescuer.

    Added to the app's consumer blueprint by :class:`CeleryBackend`, so every
    worker of the app has it. Built with the worker, it raises
    :class:`~chimeway_backends.celery.settings.UnsafeSerializerError` if the
    app would let chimeway's task take pickle: the worker is never built, so
    it takes no message. At start it resolves the engine in the main process
    (a wrong import path stops the worker at once) and warns about risky
    settings; then it calls ``rescue()`` every ``rescue_interval`` seconds on
    the worker's timer.
    """

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, c: Any, **kwargs: Any) -> None:
        # Here, not in start(): the consumer is built before it connects and
        # consumes, and an exception here ends the worker's construction.
        refuse_pickle(c.app)
        self.tref: Any = None
        super().__init__(c, **kwargs)

    def start(self, c: Any) -> None:
        """Resolve the engine, warn about settings, start the rescue timer."""
        backend = backend_of(c.app)
        warn_configuration(c.app, longest_delay=_longest_delay(backend.engine()))
        if backend.rescue_interval is not None:
            self.tref = c.timer.call_repeatedly(backend.rescue_interval, backend._rescue)

    def stop(self, c: Any) -> None:  # noqa: ARG002 - the bootstep protocol's shape
        """Stop the rescue timer."""
        if self.tref is not None:
            self.tref.cancel()
            self.tref = None

    shutdown = stop


def _longest_delay(engine: Chimeway) -> float:
    return max(policy.max_delay for policy in (engine.retry, *engine.channel_retry.values()))


def run_worker(
    engine: Chimeway | str | None = None,
    *,
    pool: str = "prefork",
    concurrency: int | None = None,
    loglevel: str = "INFO",
    rescue_interval: float | None = 30.0,
    hostname: str | None = None,
    queues: Sequence[str] | None = None,
    gossip: bool = True,
    mingle: bool = True,
    heartbeat: bool = True,
    remote_control: bool = True,
) -> int:
    """Run a Celery worker for ``engine``'s deliveries until it is shut down; return its exit code.

    ``engine`` is resolved by :func:`chimeway_core.loading.load_engine`; its backend must be a
    :class:`CeleryBackend`. The worker consumes ``queues`` (default: the
    backend's queue, then every queue the engine's ``routes`` name) with the
    given ``pool`` (``"prefork"``, ``"solo"``, ``"threads"`` ...) and
    ``concurrency`` (Celery's default: the number of CPUs), a prefetch
    multiplier of 1, and runs the rescuer every ``rescue_interval`` seconds
    (``None``: not in this worker). Same as ``celery -A <app> worker -Q <queue>
    --prefetch-multiplier 1``, with the engine resolved before it starts.

    ``hostname`` is the worker's node name, as ``celery worker --hostname``
    takes it (``name@host``, with ``%h``, ``%n`` and ``%d`` expanded;
    default: Celery's, ``celery@`` the host). ``gossip``, ``mingle`` and
    ``heartbeat`` off are ``--without-gossip``, ``--without-mingle`` and
    ``--without-heartbeat``; ``remote_control`` off sets the app's
    ``worker_enable_remote_control`` to ``False`` (no ``celery.pidbox``
    queue: ``celery inspect`` and ``control`` no longer reach this worker).
    chimeway needs none of the four. An app that would let chimeway's task
    take pickle raises
    :class:`~chimeway_backends.celery.settings.UnsafeSerializerError` before
    the worker is built.
    """
    resolved = load_engine(engine)
    backend = resolved.backend
    if not isinstance(backend, CeleryBackend):
        raise TypeError(f"the engine's backend is {type(backend).__name__}, not a CeleryBackend")
    refuse_pickle(backend.app)
    if backend.source.current is None:
        backend.bind(resolved)
    backend.rescue_interval = rescue_interval
    if not remote_control:
        backend.app.conf.worker_enable_remote_control = False
    worker = backend.app.Worker(
        pool_cls=pool,
        concurrency=concurrency,
        queues=list(queues) if queues is not None else resolved.worker_queues(backend.queue),
        loglevel=loglevel,
        prefetch_multiplier=1,
        hostname=None if hostname is None else host_format(default_nodename(hostname)),
        without_gossip=not gossip,
        without_mingle=not mingle,
        without_heartbeat=not heartbeat,
    )
    worker.start()
    return int(worker.exitcode or 0)
