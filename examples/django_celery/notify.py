"""The shop's Celery app and chimeway engine, configured from Django's settings.

The web process notifies through :data:`notifications`, inside Django's
transactions; workers run with ``chimeway worker --backend celery --app
examples.django_celery.notify:engine`` and never touch Django's models.
"""

from __future__ import annotations

import os

from celery import Celery
from django.conf import settings

from chimeway_backends.celery import CeleryBackend
from chimeway_core import Chimeway, Delivery, SMTPChannel, SQLStore
from chimeway_core.django import DjangoChimeway

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "examples.django_celery.settings")

celery_app = Celery("shop")
celery_app.config_from_object("django.conf:settings", namespace="CELERY")


def order_subject(delivery: Delivery) -> str:
    """The confirmation's subject."""
    return f"Order {delivery.payload['order']} confirmed"


def order_body(delivery: Delivery) -> str:
    """The confirmation's text, from the payload the order wrote."""
    return f"We received your order {delivery.payload['order']} for {delivery.payload['item']}.\n"


engine = Chimeway(
    SQLStore(settings.CHIMEWAY_DATABASE_URL),  # Django's database, by SQLAlchemy's URL
    CeleryBackend(celery_app, queue=settings.CHIMEWAY_QUEUE),
    {
        "email": SMTPChannel(
            settings.SMTP_HOST,
            settings.SMTP_PORT,
            sender="orders@shop.example",
            subject_for=order_subject,
            body_for=order_body,
            timeout=10.0,
        )
    },
)

#: What the views call: notify in Django's transaction, queued when it commits.
notifications = DjangoChimeway(engine)
