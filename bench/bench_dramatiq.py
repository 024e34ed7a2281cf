"""chimeway on Dramatiq next to a raw no-op actor and a hand-written anchor-A actor.

For each broker (Redis, RabbitMQ), one real ``dramatiq`` command (one
process, two threads) runs an app that has chimeway's actor and two
hand-written actors with the same settings (JSON, no Dramatiq retries, the
broker's default middleware): a no-op that appends one byte to a file, and
anchor A's worker transaction (:mod:`_jobs`). Against the same worker,
interleaved runs of N each, timed from the first send until the last job is
done (the worker is another process, so the sends are in the timing on
every side):

- raw no-op: N messages sent; done when the file has N more bytes;
- anchor A actor: N rows inserted in one transaction, then N messages sent;
  done when all N rows say ``succeeded``;
- chimeway: ``notify_many`` of N deliveries on a channel that always sends
  (PostgreSQL ledger); done when none is live.

    python bench/bench_dramatiq.py [--smoke]     # this area alone, JSON on stdout
"""

from __future__ import annotations

import os
import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from _harness import (
    Config,
    Results,
    postgres_database,
    reachable,
    run_area,
)
from _queue_bench import QueueBench, bench_app, report_sides, with_ledger, worker_process

AREA = "dramatiq"
DRAMATIQ_REDIS_DB = "2"
THREADS = 2
READY = "Worker process is ready for action."

APP = textwrap.dedent(
    """
    import os
    from pathlib import Path

    import dramatiq
    from dramatiq.brokers.rabbitmq import RabbitmqBroker
    from dramatiq.brokers.redis import RedisBroker

    import _jobs
    from chimeway_backends.dramatiq import DramatiqBackend
    from chimeway_core import CallableChannel, Sent
    from chimeway_core.engine import Chimeway
    from chimeway_core.store import SQLStore

    QUEUE = os.environ["BENCH_QUEUE"]
    TICKS = Path(os.environ["BENCH_TICKS"])
    URL = os.environ["BENCH_BROKER"]
    if URL.startswith("redis"):
        broker = RedisBroker(url=URL, namespace=QUEUE)
    else:
        broker = RabbitmqBroker(url=URL, confirm_delivery=True)

    @dramatiq.actor(actor_name="bench.noop", queue_name=QUEUE, broker=broker, max_retries=0)
    def noop(n):
        with TICKS.open("a") as ticks:
            ticks.write(".")

    @dramatiq.actor(actor_name="bench.anchor_a", queue_name=QUEUE, broker=broker, max_retries=0)
    def anchor_a(ident):
        _jobs.anchor_a_job(ident)

    backend = DramatiqBackend(broker, queue=QUEUE, engine="bench_app:engine", rescue_interval=None)
    engine = Chimeway(SQLStore(os.environ["BENCH_DB"]), backend,
                      {"sent": CallableChannel(lambda _d, _k: Sent())})
    """
)


def pika_url(url: str) -> str:
    """kombu's ``//`` (the default vhost) as pika spells it, ``/%2F``."""
    return url[:-2] + "/%2F" if url.endswith("//") else url


@contextmanager
def worker(workdir: Path, env: dict[str, str]) -> Iterator[None]:
    """A ``dramatiq bench_app:broker`` command, its process ready; stopped after."""
    command = [sys.executable, "-m", "dramatiq", "bench_app:broker", "--processes", "1"]
    command += ["--threads", str(THREADS), "--queues", env["BENCH_QUEUE"]]
    with worker_process(command, workdir, env, lambda log: READY in log):
        yield


class DramatiqBench(QueueBench):
    """One worker's three sides: raw no-op, anchor-A actor, chimeway."""

    label = "Dramatiq"

    def __init__(self, broker_url: str, db: str, queue: str, ticks: Path) -> None:
        from dramatiq.brokers.rabbitmq import RabbitmqBroker
        from dramatiq.brokers.redis import RedisBroker

        from chimeway_backends.dramatiq import DramatiqBackend

        if broker_url.startswith("redis"):
            self.broker: Any = RedisBroker(url=broker_url, namespace=queue)
        else:
            self.broker = RabbitmqBroker(url=broker_url, confirm_delivery=True)
        backend = DramatiqBackend(self.broker, queue=queue, rescue_interval=None)
        super().__init__(backend, db, queue, ticks)

    def send(self, name: str, args: list[list[Any]]) -> None:
        """Send one message per argument list to the actor ``name``."""
        import dramatiq

        for one in args:
            message: dramatiq.Message[Any] = dramatiq.Message(
                queue_name=self.queue, actor_name=name, args=tuple(one), kwargs={}, options={}
            )
            self.broker.enqueue(message)

    def close(self) -> None:
        """Remove the queue from the broker and release the connections."""
        if hasattr(self.broker, "client"):
            keys = list(self.broker.client.scan_iter(match=f"{self.queue}:*", count=1000))
            if keys:
                self.broker.client.delete(*keys)
        else:
            for name in (self.queue, f"{self.queue}.DQ", f"{self.queue}.XQ"):
                self.broker.channel.queue_delete(name)
        self.broker.close()
        super().close()


def measure(config: Config, results: Results, broker: str, url: str, db: str) -> None:
    """Start one worker and run the three sides against it."""
    n = config.size(800, 10)
    env = bench_app(config, f"dramatiq-{broker}", APP, queue_prefix="dramatiq_bench_")
    env = with_ledger(env, url, db)
    env["dramatiq_queue_prefetch"] = "1"
    bench = DramatiqBench(url, db, env["BENCH_QUEUE"], Path(env["BENCH_TICKS"]))
    kind = f"Dramatiq (1 process, {THREADS} threads), {broker} broker"
    try:
        with worker(Path(env["BENCH_DIR"]), env):
            samples = bench.sides(n, config.runs if not config.smoke else 1, "actor")
            report_sides(
                results,
                AREA,
                kind,
                samples,
                job="actor",
                detail=f"N={n} per run, timed from the first send to the last job done",
            )
    finally:
        bench.close()


def run(config: Config, results: Results) -> None:
    """Every reachable broker, on one throwaway PostgreSQL ledger."""
    if not reachable(config.postgres_admin_url, 5432):
        results.note(AREA, "PostgreSQL unreachable: Dramatiq skipped")
        return
    redis_url = config.redis_url.rsplit("/", 1)[0] + "/" + DRAMATIQ_REDIS_DB
    setups = [("redis", redis_url, 6379), ("rabbitmq", pika_url(config.rabbitmq_url), 5672)]
    with postgres_database(config.postgres_admin_url, prefix="dramatiq_bench_") as db:
        from chimeway_core import SQLStore

        store = SQLStore(db)
        store.create_all()
        store.engine.dispose()
        for broker, url, port in setups:
            if not reachable(url, port):
                results.note(AREA, f"{broker} unreachable: skipped")
                continue
            measure(config, results, broker, url, db)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    run_area(run)
