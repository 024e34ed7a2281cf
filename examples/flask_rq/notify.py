"""The application's chimeway engine: its PostgreSQL, RQ on its Redis, a welcome email.

Read from the environment, as a deployed app would: ``DATABASE_URL``,
``REDIS_URL``, ``SMTP_HOST`` and ``SMTP_PORT``; ``CHIMEWAY_QUEUE`` names the
RQ queue (default ``notifications``). Workers run with
``chimeway worker --backend rq --app examples.flask_rq.notify:engine``.
"""

from __future__ import annotations

import os

from redis import Redis

from chimeway_backends.rq import RQBackend
from chimeway_core import Chimeway, Delivery, RetryPolicy, SMTPChannel, SQLStore


def welcome_subject(delivery: Delivery) -> str:
    """The welcome email's subject."""
    return f"Welcome to Acme, {delivery.payload['name']}"


def welcome_body(delivery: Delivery) -> str:
    """The welcome email's text, from the payload the sign-up wrote."""
    return f"Hello {delivery.payload['name']}, welcome aboard.\n"


email = SMTPChannel(
    os.environ.get("SMTP_HOST", "localhost"),
    int(os.environ.get("SMTP_PORT", "25")),
    sender="hello@acme.example",
    subject_for=welcome_subject,
    body_for=welcome_body,
    timeout=10.0,
)

engine = Chimeway(
    SQLStore(os.environ["DATABASE_URL"]),
    # job_timeout: above the channel's 10 s, within its lease (10 s + lease_margin 30 s)
    RQBackend(
        Redis.from_url(os.environ["REDIS_URL"]),
        queue_name=os.environ.get("CHIMEWAY_QUEUE", "notifications"),
        job_timeout=20,
    ),
    {"email": email},
    retry=RetryPolicy(max_attempts=5, initial_delay=30.0),
)
