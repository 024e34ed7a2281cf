"""What the queue areas share: a worker command, the three sides against it, their rows.

bench_celery and bench_dramatiq start one real worker command on an app of
their own (:func:`worker_process`) and time three sides against it
(:class:`QueueBench`): raw no-op messages, anchor A's hand-written job, and
chimeway. Every queue area (bench_rq too) reports chimeway against each of
the other two the same way (:func:`report_sides`).
"""

from __future__ import annotations

import abc
import secrets
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine

from _harness import Config, Results, Target, compare_each, expect, interleave, subprocess_env
from _jobs import ANCHOR_DB_ENV
from bench_engine import anchor_tables, count_anchor_done, insert_anchor_rows


def wait(condition: Callable[[], bool], timeout: float = 600, interval: float = 0.01) -> None:
    """Poll ``condition`` every ``interval`` seconds; raise after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("the worker did not finish in time")
        time.sleep(interval)


@contextmanager
def worker_process(
    command: Sequence[str], workdir: Path, env: dict[str, str], ready: Callable[[str], bool]
) -> Iterator[None]:
    """``command`` in ``workdir``, once ``ready(its log)``; SIGTERM (then SIGKILL) after."""
    log_file = workdir / "worker.log"
    with log_file.open("ab") as out:
        process = subprocess.Popen(
            list(command), cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        wait(lambda: ready(log_file.read_text()) or process.poll() is not None, timeout=60)
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


def bench_app(config: Config, name: str, app: str, *, queue_prefix: str) -> dict[str, str]:
    """Write ``app`` as ``bench_app.py`` in a new work directory ``name``; its environment.

    The environment names the queue (``BENCH_QUEUE``, new), the ticks file
    the raw no-op appends to (``BENCH_TICKS``) and the work directory
    (``BENCH_DIR``); the caller adds the broker and the database.
    """
    workdir = config.workdir / name
    workdir.mkdir()
    (workdir / "bench_app.py").write_text(app)
    ticks = workdir / "ticks"
    ticks.touch()
    env = subprocess_env(workdir)
    env.update(
        BENCH_QUEUE=f"{queue_prefix}{secrets.token_hex(4)}",
        BENCH_TICKS=str(ticks),
        BENCH_DIR=str(workdir),
    )
    return env


def with_ledger(env: dict[str, str], broker_url: str, db: str) -> dict[str, str]:
    """``env`` with the broker's URL and the PostgreSQL ledger (chimeway's and anchor A's)."""
    return {**env, "BENCH_BROKER": broker_url, "BENCH_DB": db, ANCHOR_DB_ENV: db}


class QueueBench(abc.ABC):
    """One worker's three sides: raw no-op, anchor A's job, chimeway (whose backend is given).

    ``label`` names the queue in the check of chimeway's run.
    """

    label: str

    def __init__(self, backend: Any, db: str, queue: str, ticks: Path) -> None:
        from chimeway_core import CallableChannel, Chimeway, RetryPolicy, Sent, SQLStore

        self.queue = queue
        self.ticks = ticks
        self.store = SQLStore(db)
        self.engine = Chimeway(
            self.store,
            backend,
            {"sent": CallableChannel(lambda _d, _k: Sent())},
            retry=RetryPolicy(max_attempts=3),
        )
        self.sql = create_engine(db)

    @abc.abstractmethod
    def send(self, name: str, args: list[list[Any]]) -> None:
        """Send one message per argument list to the job ``name``."""

    def raw(self, n: int) -> float:
        """Raw no-op jobs per second, sends included."""
        target = self.ticks.stat().st_size + n
        start = time.perf_counter()
        self.send("bench.noop", [[i] for i in range(n)])
        wait(lambda: self.ticks.stat().st_size >= target)
        return n / (time.perf_counter() - start)

    def anchor(self, n: int) -> float:
        """Anchor-A jobs per second, the rows' insert and the sends included."""
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
        expect(f"chimeway {self.label} run: deliveries by status", {("succeeded", None): n}, counts)
        return rate

    def sides(self, n: int, runs: int, job: str) -> dict[str, tuple[float, ...]]:
        """Interleaved runs of the three sides, N each: ``chimeway``, ``anchor A <job>``, raw."""
        return interleave(
            {
                "chimeway": lambda: self.chimeway(n),
                f"anchor A {job}": lambda: self.anchor(n),
                f"raw no-op {job}": lambda: self.raw(n),
            },
            runs,
        )

    def close(self) -> None:
        """Release the database connections."""
        self.store.engine.dispose()
        self.sql.dispose()


def report_sides(
    results: Results,
    area: str,
    kind: str,
    samples: dict[str, tuple[float, ...]],
    *,
    job: str,
    detail: str,
) -> None:
    """chimeway against ``anchor A <job>`` (target: at least 0.75x) and ``raw no-op <job>``."""
    anchors = [
        (f"anchor A {job}", Target(">=", 0.75, f"{kind} >= 0.75x its anchor-A {job}")),
        (f"raw no-op {job}", None),
    ]
    compare_each(
        results,
        area,
        f"{kind}, PostgreSQL",
        samples,
        anchors,
        unit="jobs/s",
        detail=detail,
        name=kind,
    )
