"""The RQ worker application of the fault suite: ``CHIMEWAY_APP=tests.faults.rq_app:engine``.

:data:`SabotagedWorker` is chimeway's forking worker class, imported after
the settings' sabotage was applied: a control that changes what the worker
class decides at construction (``pickle-on``) runs with ``-w
tests.faults.rq_app.SabotagedWorker``.
"""

from __future__ import annotations

import os
from uuid import UUID

import redis

from chimeway_core.engine import Chimeway
from chimeway_core.jobs import job_id_for
from tests.faults import sabotage
from tests.faults.app import SETTINGS_VARIABLE, Settings, worker_engine

if SETTINGS_VARIABLE in os.environ:
    sabotage.apply(Settings.from_env().sabotage)

from chimeway_backends.rq import ChimewayWorker, RQBackend

SabotagedWorker = ChimewayWorker


def engine() -> Chimeway:
    """The engine of an RQ worker process, from ``FAULTS_SETTINGS``."""
    settings = Settings.from_env()
    connection = redis.Redis.from_url(settings.redis_url)
    backend = RQBackend(connection, settings.queue, job_timeout=settings.job_timeout)

    def push_duplicate(delivery_id: UUID) -> None:
        # A raw push of the job id to the front: an idle worker runs the same job hash again.
        connection.lpush(backend.queue.key, job_id_for(delivery_id))

    return worker_engine(settings, backend, push_duplicate)
