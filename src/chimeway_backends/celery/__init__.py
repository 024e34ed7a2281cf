"""The Celery backend: chimeway deliveries as tasks on the user's Celery app.

A package of what is specific to Celery: the backend and its task
(:mod:`.backend`), the worker bootstep and :func:`run_worker`
(:mod:`.worker`), the configuration checks (:mod:`.settings`) and the
command line's entry (:mod:`.cli`, loaded only by the command line). The
worker half every backend shares is :mod:`chimeway_core.worker`. Every
public name is importable from here, as from the module this package
replaces.

Theory of operation
-------------------
:class:`CeleryBackend` registers one task, ``chimeway.deliver``, on the
application's own :class:`celery.Celery` app. Its only argument is a delivery
id (a canonical UUID string); anything else (another type, a second
argument, a keyword) raises :class:`~chimeway_core.errors.InvalidJobError`
before the ledger is read, and the task fails without a retry.

The task is declared JSON-only, acknowledged late and rejected (requeued)
when its worker process dies, with no result stored and no retry limit of its
own. A worker calls :meth:`Chimeway.perform <chimeway_core.engine.Chimeway.perform>`
and translates what comes back, as :mod:`chimeway_core.jobs` prescribes:

- ``ACK``: the task returns; Celery records a success.
- ``RETRY`` / ``DEFER``: ``self.retry(eta=run_at)``, so Celery's events and
  monitors show a retry. Celery's retry counter never stops a delivery: the
  ledger owns the attempt number and the dispatch table decides when to stop.
- :class:`~chimeway_core.errors.UnhandledOutcomeError`: the next run is sent
  for the error's ``run_at`` (when the engine set one), then the error is
  raised so Celery records a failure carrying the whole shape.
- any other exception (the database is down, the worker lacks a channel):
  logged, and retried after ``error_retry_delay`` seconds.

Every send names its queue: the backend's ``queue``, or for a routed
channel (``Chimeway(routes=...)``) the route's, which the engine passes as
``queue=`` and carries on a retry's result and on ``UnhandledOutcomeError``.
A retry never relies on Celery to find the queue again (on Redis it sends
retries to the default queue: celery/celery#3622); a job whose ``perform()``
crashed goes back to the queue its message came from when that is one of
the engine's queues (by its routing key), else to the backend's ``queue``.

Every job of one delivery has the Celery task id
:func:`~chimeway_core.jobs.job_id_for`, retries included. Celery does not
deduplicate on task ids: a second enqueue of a pending delivery makes a
second message. That is harmless by construction: ``perform()`` acknowledges
a terminal, leased or not-yet-due delivery without side effect, and one job
at a time wins the claim. Results are never stored (``ignore_result``), so a
repeated id never collides in a result backend.

The engine is found from an import path (``module:attribute``, a
:class:`~chimeway_core.engine.Chimeway` or a zero-argument callable returning
one), given as ``engine=`` or through the ``CHIMEWAY_APP`` environment
variable, and resolved once per worker process
(:class:`~chimeway_core.worker.EngineSource`). A prefork child inherits the
parent's engine with the parent's database connections: on
``worker_process_init`` the child drops them (``dispose(close=False)``).

A consumer bootstep, added to the app by the backend, runs in every worker
(``celery -A proj worker`` as well as :func:`run_worker`): built with the
worker, before it connects to the broker, it refuses an app that would let
chimeway's task take pickle (:func:`refuse_pickle` raises
:class:`UnsafeSerializerError`); at start it resolves the engine and warns
about risky settings (:func:`check_configuration`); then it runs
:meth:`Chimeway.rescue <chimeway_core.engine.Chimeway.rescue>` every
``rescue_interval`` seconds on the worker's own timer.
"""

from __future__ import annotations

from typing import Final

from chimeway_core.errors import MissingExtraError
from chimeway_core.loading import APP_VARIABLE

try:
    import celery  # noqa: F401 - checked here so a missing extra is one clear error
    import kombu  # noqa: F401
except ImportError as _error:  # pragma: no cover - exercised by monkeypatching sys.modules
    raise MissingExtraError("celery", feature="the Celery backend") from _error

from chimeway_backends.celery.backend import TASK_NAME, CeleryBackend
from chimeway_backends.celery.settings import (
    CeleryConfigurationWarning,
    UnsafeSerializerError,
    check_configuration,
    pickle_problems,
    refuse_pickle,
    warn_configuration,
)
from chimeway_backends.celery.worker import ChimewayStep, run_worker

__all__ = [
    "CeleryBackend",
    "CeleryConfigurationWarning",
    "TASK_NAME",
    "ChimewayStep",
    "UnsafeSerializerError",
    "check_configuration",
    "pickle_problems",
    "refuse_pickle",
    "run_worker",
    "warn_configuration",
]

#: The environment variable naming the engine when none is given.
ENGINE_ENV: Final = APP_VARIABLE
