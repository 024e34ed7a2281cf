"""An existing Celery app's worker: the engine its configuration names, or a loud refusal.

What :class:`~chimeway_backends.celery.hooks.AppStep` calls while a worker
is built (see :mod:`chimeway_backends.celery.hooks` for when and why):
:func:`engine_for` loads the engine the app's ``chimeway_engine`` setting
names and checks it sends its jobs through this very app;
:func:`refusal` says whether the worker would discard chimeway's jobs;
:func:`prepare_worker` does both and raises :class:`WorkerRefusedError`.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import click

from chimeway_backends.celery.backend import APP_ATTRIBUTE, CeleryBackend
from chimeway_backends.celery.hooks import DEFAULT_QUEUE, ENGINE_SETTING, TASK_NAME
from chimeway_core.engine import Chimeway
from chimeway_core.errors import ChimewayError, EngineNotFoundError
from chimeway_core.loading import load_engine

__all__ = ["WorkerRefusedError", "engine_for", "prepare_worker", "refusal"]


class WorkerRefusedError(ChimewayError, click.ClickException):
    """A worker of a Celery app would lose chimeway's jobs: it refuses to start.

    Raised while the worker is built, before it connects to the broker, so
    it takes no message. ``app`` is the app's name and ``problem`` what is
    wrong and how to fix it, in one sentence. Also a
    :class:`click.ClickException`: ``celery worker`` prints ``Error:`` and
    the message, no traceback, and exits with :attr:`exit_code` 2 (a
    configuration error, as ``chimeway`` itself exits for one).
    """

    exit_code = 2

    def __init__(self, app: str, problem: str) -> None:
        self.app = app
        self.problem = problem
        super().__init__(f"chimeway refuses to start a worker of the Celery app {app!r}: {problem}")

    def __reduce__(self) -> tuple[object, ...]:
        # The message is not the constructor's argument: tell pickle what is.
        return (type(self), (self.app, self.problem))


def _setting_hint() -> str:
    return (
        f"app.conf.{ENGINE_SETTING} = 'proj.notify:engine' in the app module, "
        f"or CELERY_{ENGINE_SETTING.upper()} in Django settings"
    )


def engine_for(app: Any) -> Chimeway | None:
    """The engine ``app``'s ``chimeway_engine`` setting names, loaded; ``None`` without one.

    The engine's backend must be a :class:`CeleryBackend` on ``app`` itself:
    its tasks and bootstep are then registered on ``app``, and, unless it
    was given an engine already, it performs with this one. Anything else (a
    path that does not load, another backend, another app) is a
    :class:`WorkerRefusedError` saying so. An app whose backend performs
    with an engine already in this process (as in
    :func:`~chimeway_backends.celery.run_worker`) keeps it: the path is not
    loaded a second time.
    """
    path = app.conf.get(ENGINE_SETTING)
    if path is None:
        return None
    existing = getattr(app, APP_ATTRIBUTE, None)
    if isinstance(existing, CeleryBackend) and existing.source.current is not None:
        # This process performs with an engine already (run_worker's, say): loading
        # the path again could call a factory a second time.
        return existing.source.current
    name = str(app.main)
    if not isinstance(path, str) or not path:
        raise WorkerRefusedError(
            name,
            f"its setting {ENGINE_SETTING} must be an import path 'module:attribute', not {path!r}",
        )
    try:
        engine = load_engine(path)
    except EngineNotFoundError as error:
        raise WorkerRefusedError(
            name, f"its setting {ENGINE_SETTING} = {path!r} names no engine: {error.problem}"
        ) from error
    backend = engine.backend
    if not isinstance(backend, CeleryBackend):
        raise WorkerRefusedError(
            name,
            f"the engine {path} ({ENGINE_SETTING}) runs on {type(backend).__name__}, not on a "
            "CeleryBackend of this app",
        )
    if backend.app is not app:
        raise WorkerRefusedError(
            name,
            f"the engine {path} ({ENGINE_SETTING}) sends its jobs through another Celery app "
            f"object ({backend.app.main!r}), so this worker would not know its tasks: build its "
            "CeleryBackend on the app this worker runs (the one `celery -A` names; is the app "
            "module imported under two names?)",
        )
    if backend.source.current is None:
        backend.bind(engine)
    return engine


def refusal(app: Any, consumed: Collection[str]) -> WorkerRefusedError | None:
    """Why a worker of ``app`` consuming ``consumed`` would discard chimeway's jobs, or ``None``.

    It would when it consumes ``chimeway`` (the backend's default queue) and
    the task ``chimeway.deliver`` is not registered on ``app``: Celery
    rejects a message of an unregistered task, and the job is gone until a
    rescuer finds the delivery. Queues of other names are chimeway's only
    when the engine says so, and an engine on this app registers the task.
    """
    if TASK_NAME in app.tasks or DEFAULT_QUEUE not in consumed:
        return None
    return WorkerRefusedError(
        str(app.main),
        f"it consumes the queue {DEFAULT_QUEUE!r}, where chimeway sends its jobs, but the task "
        f"{TASK_NAME!r} is not registered on the app, so Celery would discard every chimeway "
        f"job it takes as an unregistered task. Name the module that builds your chimeway "
        f"engine in the app's configuration: {_setting_hint()}",
    )


def prepare_worker(app: Any, consumed: Collection[str]) -> Chimeway | None:
    """Load ``app``'s engine (:func:`engine_for`), then raise :func:`refusal`'s error if any.

    Returns the engine, or ``None`` when the app names none.
    """
    engine = engine_for(app)
    refused = refusal(app, consumed)
    if refused is not None:
        raise refused
    return engine
