"""The project's Celery app: its own task, its beat schedule, the line naming chimeway's engine."""

from __future__ import annotations

import os

from celery import Celery

from chimeway_backends.celery import beat_schedule

app = Celery("shop", broker=os.environ["SHOP_BROKER_URL"])
app.conf.update(
    broker_transport_options={"global_keyprefix": os.environ["SHOP_KEY_PREFIX"]},
    worker_prefetch_multiplier=1,
    worker_enable_remote_control=False,
)
app.conf.chimeway_engine = "tests.backends.celery.shop.notify:engine"

every = float(os.environ.get("SHOP_BEAT_EVERY", "30"))
app.conf.beat_schedule = {
    **beat_schedule(os.environ["SHOP_QUEUE"], rescue_every=every, relay_every=every),
    "shop.tidy": {"task": "shop.tidy", "schedule": 3600.0},
}


@app.task(name="shop.tidy")
def tidy() -> str:
    """The project's own task: chimeway's share the app with it."""
    return "tidy"
