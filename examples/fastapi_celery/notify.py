"""The application's chimeway engine on its Celery app, and its asyncio front door.

Read from the environment, as a deployed app would: ``DATABASE_URL`` (the
synchronous URL the workers use, e.g. ``postgresql+psycopg://...``),
``CELERY_BROKER_URL``, ``SMTP_HOST`` and ``SMTP_PORT``; ``CHIMEWAY_QUEUE``
names the Celery queue (default ``notifications``). Workers run with
``chimeway worker --backend celery --app examples.fastapi_celery.notify:engine``.
"""

from __future__ import annotations

import os

from celery import Celery

from chimeway_backends.celery import CeleryBackend
from chimeway_core import Chimeway, Delivery, SMTPChannel, SQLStore
from chimeway_core.aio import AsyncChimeway

celery_app = Celery("shop", broker=os.environ["CELERY_BROKER_URL"])


def order_subject(delivery: Delivery) -> str:
    """The confirmation's subject."""
    return f"Order {delivery.payload['order']} confirmed"


def order_body(delivery: Delivery) -> str:
    """The confirmation's text, from the payload the order wrote."""
    return f"We received your order {delivery.payload['order']} for {delivery.payload['item']}.\n"


engine = Chimeway(
    SQLStore(os.environ["DATABASE_URL"]),
    CeleryBackend(celery_app, queue=os.environ.get("CHIMEWAY_QUEUE", "notifications")),
    {
        "email": SMTPChannel(
            os.environ.get("SMTP_HOST", "localhost"),
            int(os.environ.get("SMTP_PORT", "25")),
            sender="orders@shop.example",
            subject_for=order_subject,
            body_for=order_body,
            timeout=10.0,
        )
    },
)

#: What the web application awaits.
notifications = AsyncChimeway(engine)
