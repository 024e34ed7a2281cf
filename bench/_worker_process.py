"""One benchmark worker process, started by bench_scaling and bench_memory.

``python _worker_process.py rq-chimeway|rq-anchor DB_URL REDIS_URL QUEUE``:
an RQ SimpleWorker (chimeway's or RQ's own) that builds everything, prints
``ready``, waits for a line on stdin, drains the queue in burst mode, then
prints the wall-clock time its last job ended (:mod:`_rq_timing`).

``python _worker_process.py memory DB_URL N1 N2 BATCH``: a chimeway engine
on the memory backend that runs deliveries through notify_many and
``perform()`` in batches, printing ``<delivered> <rss bytes>`` after N1, every
10,000 and after N2 deliveries.
"""

from __future__ import annotations

import gc
import logging
import sys
import uuid

from _harness import rss_bytes
from _rq_timing import burst_seconds, drained


def _rq(kind: str, db: str, redis_url: str, queue: str) -> None:
    import redis
    import rq
    from rq.serializers import JSONSerializer

    connection = redis.Redis.from_url(redis_url)
    logging.getLogger("rq").setLevel(logging.WARNING)
    worker: rq.SimpleWorker
    if kind == "rq-chimeway":
        from chimeway_backends.rq import ChimewaySimpleWorker, RQBackend
        from chimeway_core import CallableChannel, Chimeway, Sent, SQLStore

        engine = Chimeway(
            SQLStore(db),
            RQBackend(connection, queue, result_ttl=60),
            {"sms": CallableChannel(lambda _d, _k: Sent())},
        )
        worker = drained(ChimewaySimpleWorker)([queue], connection=connection, engine=engine)
        engine.store.get(uuid.uuid4())  # open the pool's connection now
    else:
        import os

        from _jobs import ANCHOR_DB_ENV, anchor_engine

        os.environ[ANCHOR_DB_ENV] = db
        with anchor_engine().connect():  # open the pool's connection now
            pass
        worker = drained(rq.SimpleWorker)([queue], connection=connection, serializer=JSONSerializer)
    print("ready", flush=True)
    sys.stdin.readline()
    burst_seconds(worker)
    print(worker.drained_at, flush=True)


def _memory(db: str, first: int, last: int, batch: int) -> None:
    from chimeway_backends.memory import MemoryBackend
    from chimeway_core import CallableChannel, Chimeway, NewDelivery, Sent, SQLStore

    store = SQLStore(db)
    store.create_all()
    backend = MemoryBackend()
    engine = Chimeway(store, backend, {"sms": CallableChannel(lambda _d, _k: Sent())})
    delivered = 0
    while delivered < last:
        engine.notify_many(
            [
                NewDelivery(channel="sms", recipient=f"+1555{i:07}", payload={"text": "hello"})
                for i in range(delivered, delivered + batch)
            ]
        )
        backend.run_until_idle(engine, fail_fast=True)
        delivered += batch
        if delivered in (first, last) or delivered % 10_000 == 0:
            gc.collect()
            print(delivered, rss_bytes(), flush=True)


def main() -> None:
    """Dispatch on the first argument."""
    kind, *args = sys.argv[1:]
    if kind == "memory":
        _memory(args[0], int(args[1]), int(args[2]), int(args[3]))
    else:
        _rq(kind, *args)


if __name__ == "__main__":
    main()
