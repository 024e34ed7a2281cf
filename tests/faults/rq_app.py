"""The RQ worker application of the fault suite: ``CHIMEWAY_APP=tests.faults.rq_app:engine``."""

from __future__ import annotations

import redis

from chimeway_backends.rq import RQBackend
from chimeway_core.engine import Chimeway
from chimeway_core.jobs import job_id_for
from tests.faults import sabotage
from tests.faults.app import Settings, make_engine
from tests.faults.provider import ProcessHooks


def engine() -> Chimeway:
    """The engine of an RQ worker process, from ``FAULTS_SETTINGS``."""
    settings = Settings.from_env()
    sabotage.apply(settings.sabotage)
    connection = redis.Redis.from_url(settings.redis_url)
    backend = RQBackend(connection, settings.queue, job_timeout=settings.job_timeout)

    def push_duplicate(delivery_id: object) -> None:
        # A raw push of the job id: RQ runs the same job hash a second time.
        connection.rpush(backend.queue.key, job_id_for(delivery_id))  # type: ignore[arg-type]

    hooks = ProcessHooks(push_duplicate)
    made = make_engine(settings, backend, hooks)
    hooks.engine = made
    return made
