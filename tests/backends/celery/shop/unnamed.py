"""The project's Celery app before chimeway's line: a worker of it would discard chimeway's jobs."""

from __future__ import annotations

import os

from celery import Celery

app = Celery("shop-unnamed", broker=os.environ["SHOP_BROKER_URL"])
app.conf.update(
    broker_transport_options={"global_keyprefix": os.environ["SHOP_KEY_PREFIX"]},
    worker_prefetch_multiplier=1,
    worker_enable_remote_control=False,
)


@app.task(name="shop.tidy")
def tidy() -> str:
    """The project's own task."""
    return "tidy"
