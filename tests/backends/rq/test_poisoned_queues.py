"""``chimeway worker --backend rq`` survives any bytes its queue holds.

Poisoned jobs — a hash whose fields are not UTF-8 or not what RQ parses,
a hash whose ``data`` is not a call, a job key that is not a hash, an id
that is not an RQ job id — are put in the queue, in RQ's intermediate list
(where a worker that died mid-dequeue leaves them) or, due now, in the
scheduled registry. A real worker process (the command line's, forking) is
started on it: it must skip and log what it cannot read, deliver what was
queued behind the poison, keep scheduling (a delivery scheduled a few
seconds later is delivered), keep running, and stop cleanly on SIGTERM.
A worker whose loop really ends on an error exits 1.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis

from chimeway_backends.rq import deliver
from chimeway_core.jobs import job_id_for
from tests.backends.rq.conftest import REDIS_POISON_DB, purge

# make_app is test_workers' fixture: imported, pytest finds it here too.
from tests.backends.rq.test_workers import ROOT, App, make_app  # noqa: F401

CHIMEWAY_CLI = str(Path(sys.executable).with_name("chimeway"))
DEADLINE = 60.0


def _command(*options: str) -> list[str]:
    """``chimeway worker --backend rq`` on the app ``CHIMEWAY_APP`` names, logging at info."""
    return [CHIMEWAY_CLI, "worker", "--backend", "rq", "--log-level", "info", *options]


def _poison(app: App, conn: redis.Redis) -> dict[str, bytes]:
    """Four poisoned jobs, in no list yet; their ids by kind."""
    queue = app.backend.queue
    unreadable = queue.enqueue_call(deliver, args=[str(uuid.uuid4())])
    conn.hset(
        unreadable.key,
        mapping={
            "exc_info": b"\xff\xfe not utf-8",
            "status": b"\xff",
            "created_at": b"not a date",
            "timeout": b"forever",
            "meta": b"\xff",
            "webhooks": b"\xff",
            b"\xff\xfe": b"a field whose name is not utf-8",
        },
    )
    not_a_call = str(uuid.uuid4())
    conn.hset(f"rq:job:{not_a_call}", mapping={"data": b"\x00\xff", "origin": app.queue})
    not_a_hash = str(uuid.uuid4())
    conn.set(f"rq:job:{not_a_hash}", b"not a hash")
    conn.delete(queue.key)  # enqueue_call queued the first one: the test places it
    return {
        "unreadable": unreadable.id.encode(),
        "not_a_call": not_a_call.encode(),
        "not_a_hash": not_a_hash.encode(),
        "not_an_id": b"\xff\xfe not an id",
    }


def _place(conn: redis.Redis, app: App, where: str, ids: list[bytes]) -> None:
    queue = app.backend.queue
    if where == "queue":
        conn.rpush(queue.key, *ids)
    elif where == "intermediate":
        conn.rpush(queue.intermediate_queue_key, *ids)
    else:
        conn.zadd(queue.scheduled_job_registry.key, dict.fromkeys(ids, int(time.time()) - 1))


@pytest.mark.parametrize("where", ["queue", "intermediate", "scheduled"])
def test_a_poisoned_job_neither_stops_the_worker_nor_its_scheduler(
    make_app: Callable[..., App],  # noqa: F811 - the fixture imported above
    tmp_path: Path,
    where: str,
) -> None:
    """Skipped and logged; what is queued or scheduled after it is delivered; exit 0 on SIGTERM."""
    app = make_app(redis_db=REDIS_POISON_DB)
    conn = app.backend.connection
    poison = _poison(app, conn)
    _place(conn, app, where, list(poison.values()))
    queued = app.notify_many(["mix-0", "mix-5"])
    # A real delivery's own hash poisoned the same way: still delivered.
    conn.hset(f"rq:job:{job_id_for(queued[1])}", "exc_info", b"\xff\xfe not utf-8")
    later = app.engine.notify(
        "scripted", "mix-10", scheduled_at=datetime.now(UTC) + timedelta(seconds=3)
    ).id
    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            _command("--tick-interval", "0.5"),
            env=app.env(),
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + DEADLINE
        while app.live():
            assert process.poll() is None, f"worker exited:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"{app.live()} live:\n{log.read_text()[-3000:]}"
            time.sleep(0.1)
        assert None is process.poll(), log.read_text()[-3000:]
        process.send_signal(signal.SIGTERM)
        assert 0 == process.wait(timeout=30), log.read_text()[-3000:]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        conn.delete(b"rq:job:" + poison["not_a_hash"])
        purge(conn, app.queue)
    rows = app.rows()
    assert {("succeeded", None, 1)} == {rows[i] for i in [*queued, later]}
    text = log.read_text()
    assert text.rstrip().endswith("chimeway worker: stopped"), text[-3000:]
    assert "unhandled exception" not in text
    skipped = [line for line in text.splitlines() if "skipped RQ job" in line]
    assert any(poison["not_a_hash"].decode() in line for line in skipped), text[-3000:]
    assert any("b'\\xff\\xfe not an id'" in line for line in skipped), text[-3000:]


def test_a_worker_whose_loop_fails_exits_1(
    make_app: Callable[..., App],  # noqa: F811 - the fixture imported above
) -> None:
    """Its queue's key is not a list: RQ's loop ends on the error; the command exits 1."""
    app = make_app(redis_db=REDIS_POISON_DB)
    app.backend.connection.set(app.backend.queue.key, b"not a list")
    run = subprocess.run(  # noqa: PLW1510 - the return code is asserted below
        _command("--burst"),
        env=app.env(),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=DEADLINE,
    )
    purge(app.backend.connection, app.queue)
    assert 1 == run.returncode, run.stdout + run.stderr
    assert "chimeway worker: error: the rq worker" in run.stderr
    assert "stopped on an error" in run.stderr
    assert "burst done" not in run.stdout
