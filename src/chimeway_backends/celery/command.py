"""``celery -A proj chimeway``: what a worker of the app will know of chimeway.

The chimeway distribution declares :data:`chimeway` in Celery's
``celery.commands`` entry-point group. ``celery`` loads every command of
that group as it starts, so importing this module is also what connects
:mod:`chimeway_backends.celery.hooks` in every ``celery`` command, the
plain ``celery -A proj worker`` included. Nothing of chimeway's core is
imported until the command itself runs.
"""

from __future__ import annotations

from typing import Any

import click
from celery.bin.base import CeleryCommand

from chimeway_backends.celery import hooks

__all__ = ["chimeway"]


@click.command(cls=CeleryCommand)
@click.pass_context
def chimeway(ctx: click.Context) -> None:
    """Check the app's chimeway engine and print the queues its workers must consume.

    Exits 2 (the message a worker would refuse to start with) when the
    app's chimeway_engine setting names no engine of this app, or when the
    app names none and builds none.
    """
    # Deferred: a `celery` command that is not this one imports nothing of chimeway's core.
    from chimeway_backends.celery.discovery import WorkerRefusedError, engine_for  # noqa: PLC0415
    from chimeway_backends.celery.worker import backend_of  # noqa: PLC0415
    from chimeway_core.errors import EngineNotFoundError  # noqa: PLC0415

    app: Any = ctx.obj.app
    app.loader.import_default_modules()  # as a worker does: the app's task modules
    engine = engine_for(app)
    try:
        backend = backend_of(app)
    except TypeError:
        raise WorkerRefusedError(
            str(app.main),
            f"the app names no chimeway engine and builds no CeleryBackend: set "
            f"app.conf.{hooks.ENGINE_SETTING} = 'module:engine' (the module that builds it)",
        ) from None
    try:
        engine = engine or backend.engine()
    except EngineNotFoundError as error:
        raise WorkerRefusedError(str(app.main), str(error)) from error
    path = app.conf.get(hooks.ENGINE_SETTING)
    source = f"{path} ({hooks.ENGINE_SETTING})" if path else repr(backend.source.target)
    queues = ",".join(engine.worker_queues(backend.queue))
    tasks = ", ".join(sorted(name for name in app.tasks if name.startswith("chimeway.")))
    ctx.obj.echo(f"engine: {source}")
    ctx.obj.echo(f"tasks on {app.main!r}: {tasks}")
    ctx.obj.echo(f"queues: {queues} (celery worker -Q {queues})")
