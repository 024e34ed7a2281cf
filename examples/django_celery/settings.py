"""The shop's Django settings, read from the environment as a deployed project does.

``DATABASE_URL`` is one database under two names: SQLAlchemy's URL, which
chimeway's ledger and workers use (``postgresql+psycopg://...`` or
``sqlite:///...``), and Django's ``DATABASES["default"]``, made from it.
``CELERY_BROKER_URL``, ``CHIMEWAY_QUEUE`` (default ``notifications``),
``SMTP_HOST`` and ``SMTP_PORT`` configure the notifications.
"""

from __future__ import annotations

import os

from sqlalchemy import make_url


def django_database(url: str) -> dict[str, str]:
    """Django's settings for the database SQLAlchemy's ``url`` names."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return {"ENGINE": "django.db.backends.sqlite3", "NAME": parsed.database or ""}
    return {
        "ENGINE": "django.db.backends.postgresql",  # psycopg 3, as chimeway's URL says
        "NAME": parsed.database or "",
        "USER": parsed.username or "",
        "PASSWORD": parsed.password or "",
        "HOST": parsed.host or "",
        "PORT": str(parsed.port or ""),
    }


SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "insecure-example-key")
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
INSTALLED_APPS = ["examples.django_celery.shop"]
ROOT_URLCONF = "examples.django_celery.urls"
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

CHIMEWAY_DATABASE_URL = os.environ["DATABASE_URL"]
DATABASES = {"default": django_database(CHIMEWAY_DATABASE_URL)}

CELERY_BROKER_URL = os.environ["CELERY_BROKER_URL"]
CHIMEWAY_QUEUE = os.environ.get("CHIMEWAY_QUEUE", "notifications")
SMTP_HOST = os.environ.get("SMTP_HOST", "localhost")
SMTP_PORT = int(os.environ.get("SMTP_PORT", "25"))
