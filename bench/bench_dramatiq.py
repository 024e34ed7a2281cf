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
import secrets
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine

from _harness import (
    Config,
    Results,
    Target,
    expect,
    interleave,
    log,
    postgres_database,
    reachable,
    run_area,
    subprocess_env,
)
from _jobs import ANCHOR_DB_ENV
from bench_engine import anchor_tables, count_anchor_done, insert_anchor_rows

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
    log_file = workdir / "worker.log"
    command = [sys.executable, "-m", "dramatiq", "bench_app:broker", "--processes", "1"]
    command += ["--threads", str(THREADS), "--queues", env["BENCH_QUEUE"]]
    with log_file.open("ab") as out:
        process = subprocess.Popen(
            command, cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        wait(lambda: READY in log_file.read_text() or process.poll() is not None, timeout=60)
        if process.poll() is not None:
            raise RuntimeError(log_file.read_text()[-2000:])
        yield
    finally:
        process.send_signal(signal.SIGTERM)
        with suppress(subprocess.TimeoutExpired):
            process.wait(timeout=30)
        if process.poll() is None:
            process.kill()
            process.wait()


def wait(condition: Callable[[], bool], timeout: float = 600, interval: float = 0.01) -> None:
    """Poll ``condition`` every ``interval`` seconds; raise after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("the worker did not finish in time")
        time.sleep(interval)


class DramatiqBench:
    """One worker's three sides: raw no-op, anchor-A actor, chimeway."""

    def __init__(self, broker_url: str, db: str, queue: str, ticks: Path) -> None:
        from dramatiq.brokers.rabbitmq import RabbitmqBroker
        from dramatiq.brokers.redis import RedisBroker

        from chimeway_backends.dramatiq import DramatiqBackend
        from chimeway_core import CallableChannel, Chimeway, RetryPolicy, Sent, SQLStore

        self.queue = queue
        self.ticks = ticks
        if broker_url.startswith("redis"):
            self.broker: Any = RedisBroker(url=broker_url, namespace=queue)
        else:
            self.broker = RabbitmqBroker(url=broker_url, confirm_delivery=True)
        backend = DramatiqBackend(self.broker, queue=queue, rescue_interval=None)
        self.store = SQLStore(db)
        self.engine = Chimeway(
            self.store,
            backend,
            {"sent": CallableChannel(lambda _d, _k: Sent())},
            retry=RetryPolicy(max_attempts=3),
        )
        self.sql = create_engine(db)

    def send(self, name: str, args: list[list[Any]]) -> None:
        """Send one message per argument list to the actor ``name``."""
        import dramatiq

        for one in args:
            message: dramatiq.Message[Any] = dramatiq.Message(
                queue_name=self.queue, actor_name=name, args=tuple(one), kwargs={}, options={}
            )
            self.broker.enqueue(message)

    def raw(self, n: int) -> float:
        """Raw no-op messages per second, sends included."""
        target = self.ticks.stat().st_size + n
        start = time.perf_counter()
        self.send("bench.noop", [[i] for i in range(n)])
        wait(lambda: self.ticks.stat().st_size >= target)
        return n / (time.perf_counter() - start)

    def anchor(self, n: int) -> float:
        """Anchor-A messages per second, the rows' insert and the sends included."""
        anchor_tables(self.sql)
        ids = [str(uuid.uuid4()) for _ in range(n)]
        start = time.perf_counter()
        insert_anchor_rows(self.sql, ids)
        self.send("bench.anchor_a", [[i] for i in ids])
        wait(lambda: count_anchor_done(self.sql) >= n)
        return n / (time.perf_counter() - start)

    def chimeway(self, n: int) -> float:
        """chimeway deliveries per second, notify_many included."""
        from chimeway_core import NewDelivery

        self.store.drop_all()
        self.store.create_all()
        specs = [NewDelivery(channel="sent", recipient=f"r{i}") for i in range(n)]
        start = time.perf_counter()
        self.engine.notify_many(specs)
        wait(lambda: self.store.oldest_non_terminal() is None)
        rate = n / (time.perf_counter() - start)
        counts = {(s.value, reason): c for (s, reason), c in self.store.counts().items()}
        expect("chimeway Dramatiq run: deliveries by status", {("succeeded", None): n}, counts)
        return rate

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
        self.store.engine.dispose()
        self.sql.dispose()


def measure(config: Config, results: Results, broker: str, url: str, db: str) -> None:
    """Start one worker and run the three sides against it."""
    n = config.size(800, 10)
    workdir = config.workdir / f"dramatiq-{broker}"
    workdir.mkdir()
    (workdir / "bench_app.py").write_text(APP)
    ticks = workdir / "ticks"
    ticks.touch()
    queue = f"dramatiq_bench_{secrets.token_hex(4)}"
    env = subprocess_env(workdir)
    env.update(
        BENCH_QUEUE=queue,
        BENCH_TICKS=str(ticks),
        BENCH_BROKER=url,
        BENCH_DB=db,
        dramatiq_queue_prefetch="1",
        **{ANCHOR_DB_ENV: db},
    )
    bench = DramatiqBench(url, db, queue, ticks)
    kind = f"Dramatiq (1 process, {THREADS} threads), {broker} broker"
    try:
        with worker(workdir, env):
            samples = interleave(
                {
                    "chimeway": lambda: bench.chimeway(n),
                    "anchor A actor": lambda: bench.anchor(n),
                    "raw no-op actor": lambda: bench.raw(n),
                },
                config.runs if not config.smoke else 1,
            )
            for anchor, target in (
                ("anchor A actor", Target(">=", 0.75, f"{kind} >= 0.75x its anchor-A actor")),
                ("raw no-op actor", None),
            ):
                entry = results.compare(
                    AREA,
                    f"{kind}, PostgreSQL",
                    ("chimeway", samples["chimeway"]),
                    (anchor, samples[anchor]),
                    unit="jobs/s",
                    target=target,
                    detail=f"N={n} per run, timed from the first send to the last job done",
                )
                log(
                    AREA,
                    f"{kind}: chimeway {entry['figure']['median']:.0f}/s, {anchor} "
                    f"{entry['anchor']['median']:.0f}/s, x{entry['ratio']['median']:.2f}",
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
