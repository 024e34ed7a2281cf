"""The Celery worker application of the fault suite: ``celery -A tests.faults.celery_app worker``.

Built at import from ``FAULTS_SETTINGS``, as ``celery -A`` needs the app.
"""

from __future__ import annotations

from uuid import UUID

from celery import Celery

from chimeway_backends.celery import CeleryBackend
from chimeway_core.jobs import job_id_for
from tests.faults import sabotage
from tests.faults.app import Settings, urgent_queue, worker_backend_options, worker_engine

settings = Settings.from_env()
sabotage.apply(settings.sabotage)

celery_app = Celery("chimeway_faults", broker=settings.broker_url)
celery_app.conf.update(
    broker_transport_options=dict(settings.transport_options),
    broker_connection_retry_on_startup=True,
    broker_connection_max_retries=None,
    worker_prefetch_multiplier=1,
    worker_enable_remote_control=False,
    task_default_queue=settings.queue,
)
if "pickle-on" in settings.sabotage:
    celery_app.conf.accept_content = ["json", "pickle"]
backend = CeleryBackend(celery_app, **worker_backend_options(settings, __name__))


def _push_duplicate(delivery_id: UUID) -> None:
    # Celery never deduplicates: a second message under the same task id, sent to
    # the queue the worker also consumes that nothing else fills, so an idle
    # pool child takes it at once instead of after every message already queued.
    backend.task.apply_async(
        (str(delivery_id),), task_id=job_id_for(delivery_id), queue=urgent_queue(settings.queue)
    )


engine = worker_engine(settings, backend, _push_duplicate)
