"""What runs in every Celery worker of the environment: the engine setting and the start check.

Theory of operation
-------------------
A plain ``celery -A proj worker`` imports the app module and the modules
the app's configuration names, nothing else. When chimeway's engine (and so
its :class:`~chimeway_backends.celery.CeleryBackend`, which registers the
task ``chimeway.deliver``) lives in a module the app never imports, the
worker would discard every chimeway job as an unregistered task. Two
things prevent that:

- **One setting names the engine.** ``chimeway_engine = "proj.notify:engine"``
  in the app's configuration (``app.conf.chimeway_engine``, a config
  module, or ``CELERY_CHIMEWAY_ENGINE`` in Django settings read with
  ``namespace="CELERY"``). A worker of the app imports that engine before
  it consumes anything, so the backend registers its tasks and bootstep
  there, and the worker performs with that engine.
- **A worker refuses to discard.** A worker that consumes ``chimeway``
  (the backend's default queue) while ``chimeway.deliver`` is not
  registered on its app stops before it connects to the broker, with a
  :class:`~chimeway_backends.celery.WorkerRefusedError` naming the setting.

Both are done by :class:`AppStep`, a worker bootstep that
:func:`on_import_modules` adds to every app whose worker (or beat, shell,
report) imports its task modules: Celery sends ``import_modules`` from
``app.loader.import_default_modules()``. The step's constructor runs once
the worker knows its queues (``-Q``) and has imported its task modules
(``imports``, ``include``, ``autodiscover_tasks()``, Django's setup), and
before any step is started: an exception there ends the worker's
construction, so no message is taken.

The handler is connected when this module is imported, which happens in
every ``celery`` command: the chimeway distribution declares
:mod:`chimeway_backends.celery.command` in Celery's ``celery.commands``
entry-point group, which ``celery`` loads as it starts; importing
:mod:`chimeway_backends.celery` connects it too. This module and the
command import nothing of chimeway's core, so a ``celery`` command of an
app that does not use chimeway pays nothing for it; the check imports the
rest only when the app names an engine or consumes ``chimeway``.
"""

from __future__ import annotations

from typing import Any, Final

from celery import bootsteps, signals

__all__ = [
    "DEFAULT_QUEUE",
    "ENGINE_SETTING",
    "TASK_NAME",
    "AppStep",
    "consumed_queues",
    "on_import_modules",
]

#: The Celery setting naming the engine's import path (``module:attribute``).
ENGINE_SETTING: Final = "chimeway_engine"
#: The name of the task every delivery job runs.
TASK_NAME: Final = "chimeway.deliver"
#: The queue a :class:`~chimeway_backends.celery.CeleryBackend` sends to unless told.
DEFAULT_QUEUE: Final = "chimeway"


def consumed_queues(app: Any) -> frozenset[str]:
    """The names of the queues a worker of ``app`` built now consumes (``-Q``, or the defaults)."""
    return frozenset(app.amqp.queues.consume_from or ())


class AppStep(bootsteps.Step):  # type: ignore[misc]  # celery is untyped
    """Built with every worker: loads the engine the app names, refuses to discard its jobs.

    Added to each app's worker blueprint by :func:`on_import_modules`. Its
    constructor calls :func:`chimeway_backends.celery.discovery.prepare_worker`
    when the app has the setting ``chimeway_engine``, or consumes the
    ``chimeway`` queue without the task ``chimeway.deliver``: it raises
    :class:`~chimeway_backends.celery.WorkerRefusedError` (an exception
    ``celery worker`` prints as one line before exiting 2) for an engine
    that does not load or is not on this app, and for a worker that would
    discard chimeway's jobs. A worker of any other app is left alone.
    """

    label = "chimeway"

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        app = parent.app
        consumed = consumed_queues(app)
        named = app.conf.get(ENGINE_SETTING) is not None
        if named or (DEFAULT_QUEUE in consumed and TASK_NAME not in app.tasks):
            # Only a worker with something to check imports chimeway's core.
            from chimeway_backends.celery.discovery import prepare_worker  # noqa: PLC0415

            prepare_worker(app, consumed)
        super().__init__(parent, **kwargs)


def on_import_modules(sender: Any = None, **_: object) -> None:
    """Add :class:`AppStep` to the worker blueprint of the app importing its task modules."""
    if sender is not None:
        sender.steps["worker"].add(AppStep)


signals.import_modules.connect(on_import_modules, weak=False, dispatch_uid="chimeway.app_step")
