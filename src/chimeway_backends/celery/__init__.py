"""The Celery backend: chimeway deliveries as tasks on the user's Celery app.

A package of what is specific to Celery: the backend and its tasks
(:mod:`.backend`), the worker bootstep and :func:`run_worker`
(:mod:`.worker`), the configuration checks (:mod:`.settings`), an existing
app's ``chimeway_engine`` setting and the check every worker makes at start
(:mod:`.hooks`, :mod:`.discovery`, and ``celery chimeway`` in
:mod:`.command`), relay and rescue on ``celery beat`` (:mod:`.beat`) and
the command line's entry (:mod:`.cli`, loaded only by the command line).
The worker half every backend shares is :mod:`chimeway_core.worker`. Every
public name is importable from here, as from the module this package
replaces, and is imported on first use: importing the package itself
imports nothing of chimeway's core.

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

In an existing app whose worker does not import the module that builds
the engine, one setting names it: ``app.conf.chimeway_engine =
"proj.notify:engine"``. Every worker of the app loads it before it
consumes, and a worker that consumes ``chimeway`` without the task refuses
to start instead of discarding the jobs (:mod:`.hooks`).
``chimeway.relay`` and ``chimeway.rescue`` run the engine's relay and rescue
from ``celery beat`` (:func:`beat_schedule`).

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

from typing import TYPE_CHECKING, Final

from chimeway_backends import LazyExports, require

require("celery", "the Celery backend", "celery", "kombu")

# Connects the worker check in this process (the `celery` command connects it too).
from chimeway_backends.celery import hooks as _hooks  # noqa: E402, F401

if TYPE_CHECKING:
    from chimeway_backends.celery.backend import CeleryBackend
    from chimeway_backends.celery.beat import RELAY_TASK, RESCUE_TASK, beat_schedule
    from chimeway_backends.celery.discovery import WorkerRefusedError
    from chimeway_backends.celery.hooks import ENGINE_SETTING, TASK_NAME
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
    "ENGINE_ENV",
    "ENGINE_SETTING",
    "RELAY_TASK",
    "RESCUE_TASK",
    "TASK_NAME",
    "CeleryBackend",
    "CeleryConfigurationWarning",
    "ChimewayStep",
    "UnsafeSerializerError",
    "WorkerRefusedError",
    "beat_schedule",
    "check_configuration",
    "pickle_problems",
    "refuse_pickle",
    "run_worker",
    "warn_configuration",
]

#: The environment variable naming the engine when none is given
#: (:data:`chimeway_core.loading.APP_VARIABLE`).
ENGINE_ENV: Final = "CHIMEWAY_APP"

# Each public name and the module it comes from. Imported on first use
# (PEP 562), so that `from chimeway_backends.celery import beat_schedule` in
# an app module, and the `celery` command's hook, import nothing of
# chimeway's core.
_HOMES: Final = {
    "CeleryBackend": "backend",
    "TASK_NAME": "hooks",
    "ENGINE_SETTING": "hooks",
    "RELAY_TASK": "beat",
    "RESCUE_TASK": "beat",
    "beat_schedule": "beat",
    "WorkerRefusedError": "discovery",
    "CeleryConfigurationWarning": "settings",
    "UnsafeSerializerError": "settings",
    "check_configuration": "settings",
    "pickle_problems": "settings",
    "refuse_pickle": "settings",
    "warn_configuration": "settings",
    "ChimewayStep": "worker",
    "run_worker": "worker",
}


_EXPORTS: Final = LazyExports(__name__, _HOMES, __all__)
__getattr__ = _EXPORTS.get
__dir__ = _EXPORTS.names
