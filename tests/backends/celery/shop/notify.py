"""The project's chimeway engine, on the project's own Celery app."""

from __future__ import annotations

import os

from chimeway_backends.celery import CeleryBackend
from chimeway_core import Chimeway, LogChannel, RetryPolicy, SQLStore
from tests.backends.celery.shop.celery import app

_rescue = os.environ.get("SHOP_RESCUE_INTERVAL", "30")

engine = Chimeway(
    SQLStore(os.environ["SHOP_DATABASE_URL"]),
    CeleryBackend(
        app,
        queue=os.environ["SHOP_QUEUE"],
        rescue_interval=None if _rescue == "none" else float(_rescue),
    ),
    {"log": LogChannel()},
    retry=RetryPolicy.immediate(),
    relay_grace=0.0,
)
