"""``chimeway worker``, ``relay``, ``rescue``, ``prune`` and ``resend`` with ``--app`` engines."""

from __future__ import annotations

import json
import secrets
import signal
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import UUID

import pytest

from chimeway_core.cli import workers
from chimeway_core.jobs import job_id_for
from chimeway_core.records import NewDelivery
from chimeway_core.states import DeliveryStatus
from chimeway_core.store import SQLStore
from tests.cli.conftest import (
    APP_MODULE,
    Invoke,
    Result,
    add_deliveries,
    run,
    sqlite_ledger,
    start,
)
from tests.services import RABBITMQ_URL, REDIS_URL, require

DEADLINE = 20.0


def _wait_for(store: SQLStore, succeeded: int, process: subprocess.Popen[str]) -> None:
    """Poll the ledger until ``succeeded`` deliveries succeeded (or the worker died)."""
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        done = store.counts().get((DeliveryStatus.SUCCEEDED, None), 0)
        if done >= succeeded:
            return
        if process.poll() is not None:
            break
        time.sleep(0.1)
    process.kill()
    out, err = process.communicate()
    pytest.fail(f"worker did not deliver {succeeded}: exit {process.returncode}\n{out}\n{err}")


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_memory_worker_delivers_and_stops_gracefully(
    stop_signal: signal.Signals, tmp_path: Path, app_dir: Path
) -> None:
    """The worker delivers what was waiting and what arrives later, then exits 0 on a signal."""
    store, url = sqlite_ledger(tmp_path / "ledger.sqlite3")
    add_deliveries(store, 20)
    process = start(
        "worker",
        "--backend",
        "memory",
        "--app",
        f"{APP_MODULE}:memory_engine",
        "--db",
        url,
        "--concurrency",
        "2",
        "--tick-interval",
        "0.2",
        cwd=tmp_path,
        path=[app_dir],
    )
    try:
        _wait_for(store, 20, process)
        add_deliveries(store, 5)  # written by "another process": the rescuer's relay finds them
        _wait_for(store, 25, process)
        process.send_signal(stop_signal)
        out, err = process.communicate(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert 0 == process.returncode, err
    assert "Traceback" not in out + err
    lines = out.splitlines()
    assert lines[0].startswith("chimeway worker: memory backend, queue 'default', 2 threads")
    assert (
        lines[1]
        == "chimeway worker: first rescue pass: 20 relayed, 0 requeued, 0 lost attempts resolved, "
        "0 pruned"
    )
    assert lines[-1].startswith("chimeway worker: stopped after 25 jobs (25 acked")
    assert {(DeliveryStatus.SUCCEEDED, None): 25} == store.counts()
    assert 0 == store.outbox_size()
    store.engine.dispose()


def _memory_burst(tmp_path: Path, app_dir: Path, url: str, engine: str, *options: str) -> Result:
    """Run ``chimeway worker --backend memory --burst`` for ``engine`` of the test app."""
    return run(
        "worker",
        "--backend",
        "memory",
        "--burst",
        *options,
        "--app",
        f"{APP_MODULE}:{engine}",
        "--db",
        url,
        cwd=tmp_path,
        path=[app_dir],
        timeout=DEADLINE,
    )


def test_memory_worker_in_burst_mode_runs_what_is_due_then_exits(
    tmp_path: Path, app_dir: Path
) -> None:
    """--burst relays the outbox, runs every due job on its threads, and exits 0 by itself."""
    store, url = sqlite_ledger(tmp_path / "ledger.sqlite3")
    add_deliveries(store, 20)
    result = _memory_burst(tmp_path, app_dir, url, "memory_engine", "--concurrency", "2")
    assert 0 == result.code, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].endswith("runs what is due, then exits; Ctrl-C or SIGTERM stops")
    assert lines[-1] == (
        "chimeway worker: burst done after 20 jobs (20 acked, 0 retried, 0 deferred, 0 raised)"
    )
    assert {(DeliveryStatus.SUCCEEDED, None): 20} == store.counts()
    assert 0 == store.outbox_size()
    store.engine.dispose()


def test_memory_burst_leaves_retries_to_a_later_worker(tmp_path: Path, app_dir: Path) -> None:
    """A burst does not wait for a retry's backoff: the job is left, the ledger says failed."""
    store, url = sqlite_ledger(tmp_path / "ledger.sqlite3")
    add_deliveries(store, 3)
    started = time.monotonic()
    result = _memory_burst(tmp_path, app_dir, url, "unlucky_memory_engine")
    assert 0 == result.code, result.stderr
    assert time.monotonic() - started < 50  # the backoff is 60 s
    assert result.stdout.splitlines()[-2:] == [
        "chimeway worker: burst done after 3 jobs (0 acked, 3 retried, 0 deferred, 0 raised)",
        "chimeway worker: 3 jobs scheduled for later were not run; their deliveries stay in "
        "the ledger, and a later worker queues them again",
    ]
    assert {(DeliveryStatus.FAILED, None): 3} == store.counts()
    store.engine.dispose()


def test_a_burst_stopped_by_a_signal_says_which_due_jobs_it_left(
    tmp_path: Path, app_dir: Path
) -> None:
    """SIGTERM mid-burst: the running job finishes, the due ones left are counted as such."""
    store, url = sqlite_ledger(tmp_path / "ledger.sqlite3")
    add_deliveries(store, 6)
    process = start(
        "worker",
        "--backend",
        "memory",
        "--burst",
        "--app",
        f"{APP_MODULE}:slow_memory_engine",
        "--db",
        url,
        cwd=tmp_path,
        path=[app_dir],
    )
    try:
        assert process.stdout is not None
        process.stdout.readline()  # the start line
        process.stdout.readline()  # the first rescue pass: every job is queued now
        deadline = time.monotonic() + DEADLINE
        while not any(delivery.attempt_count for delivery in store.find(limit=6)):
            assert time.monotonic() < deadline, "no job started"
            time.sleep(0.02)
        out, err = _stop(process)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert 0 == process.returncode, err
    done = store.counts().get((DeliveryStatus.SUCCEEDED, None), 0)
    assert 1 <= done < 6
    left = 6 - done
    ran, were = f"{done} job{'s' * (done != 1)}", "was" if left == 1 else "were"
    assert out.splitlines()[-2:] == [
        f"chimeway worker: stopped after {ran} ({done} acked, 0 retried, 0 deferred, 0 raised)",
        f"chimeway worker: {left} due job{'s' * (left != 1)} {were} not run "
        "(stopped before their turn)",
    ]
    store.engine.dispose()


def test_memory_bursts_catch_up_without_waiting_for_the_relay_or_rescue_delays(
    tmp_path: Path, app_dir: Path
) -> None:
    """A burst's queue starts empty: rows younger than relay_grace and fresh retries are run.

    The first burst relays outbox rows written a moment ago (relay_grace is
    10 s) and leaves each delivery's retry, due 0.2 s later; the next burst
    queues those retries at once (requeue_after is 300 s), and they succeed.
    """
    store, url = sqlite_ledger(tmp_path / "ledger.sqlite3")
    add_deliveries(store, 3)
    first = _memory_burst(tmp_path, app_dir, url, "second_try_memory_engine")
    time.sleep(0.3)
    second = _memory_burst(tmp_path, app_dir, url, "second_try_memory_engine")
    assert (0, 0) == (first.code, second.code), first.stderr + second.stderr
    assert first.stdout.splitlines()[1].startswith("chimeway worker: first rescue pass: 3 relayed")
    assert second.stdout.splitlines()[1].startswith(
        "chimeway worker: first rescue pass: 0 relayed, 3 requeued"
    )
    assert second.stdout.splitlines()[-1] == (
        "chimeway worker: burst done after 3 jobs (3 acked, 0 retried, 0 deferred, 0 raised)"
    )
    assert {(DeliveryStatus.SUCCEEDED, None): 3} == store.counts()
    store.engine.dispose()


def _stop(process: subprocess.Popen[str]) -> tuple[str, str]:
    """SIGTERM the worker and collect its output (killing it if it hangs)."""
    process.send_signal(signal.SIGTERM)
    try:
        return process.communicate(timeout=15)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


def _forget_queue(redis_url: str, queue: str) -> None:
    """Delete what RQ kept for ``queue`` and the queues named after it, its set entries too."""
    import redis

    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(match=f"*{queue}*"))
    if keys:
        client.delete(*keys)
    known = [name for name in client.smembers("rq:queues") if queue.encode() in name]
    if known:
        client.srem("rq:queues", *known)
    client.close()


@pytest.fixture
def rq_queue() -> Iterator[tuple[str, str]]:
    """A queue name of this test's own and the Redis URL (database 13) its workers use.

    Everything RQ kept for it, and for the queues named after it, is deleted at the end.
    """
    require("redis")
    queue, redis_url = f"chimeway-cli-{secrets.token_hex(4)}", f"{REDIS_URL.rsplit('/', 1)[0]}/13"
    yield queue, redis_url
    _forget_queue(redis_url, queue)


@pytest.mark.redis
def test_rq_worker_delivers_and_stops_on_sigterm(
    tmp_path: Path, app_dir: Path, rq_queue: tuple[str, str]
) -> None:
    """--backend rq runs chimeway's RQ worker on the app's queue until SIGTERM (exit 0)."""
    queue, redis_url = rq_queue
    store, url = sqlite_ledger(tmp_path / "ledger.sqlite3")
    add_deliveries(store, 5)
    process = start(
        "worker",
        "--backend",
        "rq",
        "--app",
        f"{APP_MODULE}:rq_engine",
        "--db",
        url,
        "--redis-url",
        redis_url,
        "--tick-interval",
        "0.5",
        cwd=tmp_path,
        env={"QUEUE": queue},
        path=[app_dir],
    )
    _wait_for(store, 5, process)
    out, err = _stop(process)
    assert 0 == process.returncode, err
    assert "Traceback" not in out + err
    assert out.splitlines()[0].startswith(f"chimeway worker: rq backend, queue '{queue}'")
    assert {(DeliveryStatus.SUCCEEDED, None): 5} == store.counts()
    store.engine.dispose()


@pytest.mark.rabbitmq
def test_celery_worker_delivers_and_stops_on_sigterm(tmp_path: Path, app_dir: Path) -> None:
    """--backend celery runs chimeway's Celery worker on RabbitMQ until SIGTERM (exit 0)."""
    require("rabbitmq")
    queue = f"chimeway-cli-{secrets.token_hex(4)}"
    store, url = sqlite_ledger(tmp_path / "ledger.sqlite3")
    add_deliveries(store, 5)
    process = start(
        "worker",
        "--backend",
        "celery",
        "--app",
        f"{APP_MODULE}:celery_engine",
        "--db",
        url,
        "--broker-url",
        RABBITMQ_URL,
        "--concurrency",
        "1",
        "--tick-interval",
        "0.5",
        cwd=tmp_path,
        env={"QUEUE": queue},
        path=[app_dir],
    )
    try:
        _wait_for(store, 5, process)
        out, err = _stop(process)
    finally:
        _delete_queue(queue)
    assert 0 == process.returncode, err
    assert "Traceback" not in out + err
    lines = out.splitlines()
    assert lines[0].startswith(f"chimeway worker: celery backend, queue '{queue}' on amqp://")
    assert "chimeway worker: stopped (Celery's exit status 0)" in lines  # Celery prints too
    assert {(DeliveryStatus.SUCCEEDED, None): 5} == store.counts()
    store.engine.dispose()


def _rq_burst(
    where: tuple[Path, Path], rq_queue: tuple[str, str], engine: str, url: str, *options: str
) -> Result:
    """``chimeway worker --backend rq --burst`` for the app's ``engine`` on the test's queue.

    ``where`` is the directory to run in and the one holding the app module.
    """
    (cwd, app_dir), (queue, redis_url) = where, rq_queue
    return run(
        "worker", "--backend", "rq", "--burst", *options,
        "--app", f"{APP_MODULE}:{engine}", "--db", url, "--redis-url", redis_url,
        cwd=cwd, env={"QUEUE": queue}, path=[app_dir], timeout=DEADLINE,
    )  # fmt: skip


@pytest.mark.redis
def test_rq_worker_takes_its_worker_class_and_maintenance_interval(
    tmp_path: Path, app_dir: Path, rq_queue: tuple[str, str]
) -> None:
    """--worker-class simple and --maintenance-interval reach the RQ worker; 0 s is refused."""
    store, url = sqlite_ledger(tmp_path / "ledger.sqlite3")
    add_deliveries(store, 2)
    where = (tmp_path, app_dir)
    refused = _rq_burst(where, rq_queue, "rq_engine", url, "--maintenance-interval", "0")
    assert (2, "") == (refused.code, refused.stdout)
    assert "--maintenance-interval must be a finite number of seconds > 0" in refused.stderr
    options = ("--worker-class", "simple", "--maintenance-interval", "15")
    result = _rq_burst(where, rq_queue, "rq_engine", url, *options)
    assert 0 == result.code, result.stderr
    assert "; simple worker, runs what is queued" in result.stdout.splitlines()[0]
    assert {(DeliveryStatus.SUCCEEDED, None): 2} == store.counts()
    store.engine.dispose()


def test_rq_only_options_are_refused_for_a_memory_worker(tmp_path: Path, app_dir: Path) -> None:
    """--worker-class and --maintenance-interval are for rq: memory refuses them, exit 2."""
    _, url = sqlite_ledger(tmp_path / "ledger.sqlite3")
    result = run(
        "worker", "--backend", "memory", "--burst", "--worker-class", "simple",
        "--maintenance-interval", "15", "--app", f"{APP_MODULE}:memory_engine", "--db", url,
        cwd=tmp_path, path=[app_dir], timeout=DEADLINE,
    )  # fmt: skip
    assert (2, "") == (result.code, result.stdout)
    assert (
        "--worker-class, --maintenance-interval: not an option of a memory worker" in result.stderr
    )


@pytest.mark.redis
def test_rq_worker_in_burst_mode_drains_the_queue_then_exits(
    tmp_path: Path, app_dir: Path, rq_queue: tuple[str, str]
) -> None:
    """--backend rq --burst: the first rescue relays the outbox, RQ's burst runs it, exit 0."""
    store, url = sqlite_ledger(tmp_path / "ledger.sqlite3")
    add_deliveries(store, 5)
    result = _rq_burst((tmp_path, app_dir), rq_queue, "rq_engine", url)
    assert 0 == result.code, result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].endswith("runs what is queued, then exits; Ctrl-C or SIGTERM stops")
    assert lines[-1] == "chimeway worker: burst done (jobs run)"
    assert {(DeliveryStatus.SUCCEEDED, None): 5} == store.counts()
    assert 0 == store.outbox_size()
    store.engine.dispose()


def _delete_queue(queue: str) -> None:
    """Remove the test's queue and exchange from RabbitMQ."""
    from celery import Celery

    with Celery(broker=RABBITMQ_URL, set_as_current=False).connection_for_write() as connection:
        channel = connection.default_channel
        channel.queue_delete(queue)
        channel.exchange_delete(queue)


def test_relay_hands_the_outbox_to_the_backend(
    tmp_path: Path, app_dir: Path, invoke: Invoke
) -> None:
    """relay --json hands every committed outbox row to the engine's backend once."""
    store, url = sqlite_ledger(tmp_path / "ledger.sqlite3")
    ids = add_deliveries(store, 4)
    record = tmp_path / "enqueued.txt"
    args = ("relay", "--app", f"{APP_MODULE}:recording_engine", "--db", url, "--json")
    env = {"RECORD_PATH": str(record)}
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(app_dir))
        first = invoke(*args, env=env)
        second = invoke(*args[:-1], env=env)
    assert (0, "") == (first.code, first.stderr)
    assert {"relayed": 4} == json.loads(first.stdout)
    assert "relayed 0 outbox rows to FileBackend\n" == second.stdout
    assert sorted(ids) == sorted(record.read_text().split())
    store.engine.dispose()


def test_rescue_resolves_a_dead_workers_attempt(
    tmp_path: Path, app_dir: Path, invoke: Invoke
) -> None:
    """rescue --json resolves an attempt left in flight past its lease and requeues it."""
    store, url = sqlite_ledger(tmp_path / "ledger.sqlite3")
    past = datetime.now(UTC) - timedelta(hours=1)
    (delivery_id,) = add_deliveries(store, 1, now=past)
    store.delete_outbox([UUID(delivery_id)])
    assert store.claim(UUID(delivery_id), owner="dead", lease_seconds=5, now=past) is not None
    record = tmp_path / "enqueued.txt"
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(app_dir))
        result = invoke(
            "rescue",
            "--app",
            f"{APP_MODULE}:recording_engine",
            "--db",
            url,
            "--json",
            env={"RECORD_PATH": str(record)},
        )
    assert (0, "") == (result.code, result.stderr)
    assert {"resolved": 1, "requeued": 0, "relayed": 0, "pruned": 0, "pending": 0} == json.loads(
        result.stdout
    )
    history = store.history(UUID(delivery_id))
    assert history is not None
    assert (DeliveryStatus.FAILED, "unknown") == (
        history.delivery.status,
        history.attempts[0].outcome and history.attempts[0].outcome.value,
    )
    assert [delivery_id] == record.read_text().split()
    store.engine.dispose()


@pytest.mark.extras
def test_relay_with_redis_down_reports_it_and_keeps_the_outbox(
    tmp_path: Path, app_dir: Path, invoke: Invoke
) -> None:
    """Redis unreachable with rows waiting: exit 3 in one line; the rows stay for the next pass."""
    store, url = sqlite_ledger(tmp_path / "ledger.sqlite3")
    add_deliveries(store, 3)
    args = ("relay", "--app", f"{APP_MODULE}:rq_engine", "--db", url, "--grace", "0")
    env = {"CHIMEWAY_REDIS_URL": "redis://127.0.0.1:1/0"}
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(app_dir))
        checked = invoke(*args, env=env)
        # Redis going away after the check, while the rows are handed over.
        patch.setattr(workers, "check_queue", lambda engine: None)
        midway = invoke(*args, env=env)
    for result in (checked, midway):
        assert (3, "") == (result.code, result.stdout)
        assert [
            "chimeway: error: cannot reach Redis: Error 111 connecting to 127.0.0.1:1. "
            "Connection refused."
        ] == result.stderr.splitlines()
    assert 3 == store.outbox_size()
    store.engine.dispose()


def test_one_off_commands_create_no_sqlite_file(
    tmp_path: Path, app_dir: Path, invoke: Invoke
) -> None:
    """relay, rescue, prune, resend and worker refuse a missing SQLite file, not creating it."""
    path = tmp_path / "nope.sqlite3"
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(app_dir))
        results = [
            invoke(
                *command,
                "--app",
                f"{APP_MODULE}:recording_engine",
                "--db",
                f"sqlite:///{path}",
                env={"RECORD_PATH": str(tmp_path / "enqueued.txt")},
            )
            for command in (
                ("relay",),
                ("rescue",),
                ("prune", "--older-than", "30d"),
                ("resend", "--since", "1h"),
                ("worker", "--backend", "memory"),
            )
        ]
    for result in results:
        assert 2 == result.code
        assert f"no SQLite database at '{path}'" in result.stderr
    assert not path.exists()


def test_relay_finds_the_engine_in_chimeway_app(
    tmp_path: Path, app_dir: Path, invoke: Invoke
) -> None:
    """Without --app the engine comes from CHIMEWAY_APP, as docs/operations.md says."""
    store, url = sqlite_ledger(tmp_path / "ledger.sqlite3")
    add_deliveries(store, 2)
    record = tmp_path / "enqueued.txt"
    env = {"CHIMEWAY_APP": f"{APP_MODULE}:recording_engine", "RECORD_PATH": str(record)}
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(app_dir))
        result = invoke("relay", "--db", url, "--json", env=env)
    assert (0, "") == (result.code, result.stderr)
    assert {"relayed": 2} == json.loads(result.stdout)
    store.engine.dispose()


def _terminal(store: SQLStore, count: int, at: datetime) -> list[str]:
    """``count`` deliveries created and cancelled at ``at``; their ids."""
    ids = add_deliveries(store, count, now=at)
    for delivery_id in ids:
        store.cancel(UUID(delivery_id), now=at)
    return ids


def _assert_refused(result: Result, message: str, store: SQLStore) -> None:
    """Exit 2 with one line on stderr saying ``message``; the ledger's one delivery untouched."""
    assert (2, "") == (result.code, result.stdout)
    assert 1 == len(result.stderr_lines), result.stderr
    assert message in result.stderr
    assert 1 == sum(store.counts().values())
    store.engine.dispose()


def test_prune_deletes_old_terminal_deliveries_and_dry_run_only_counts(
    tmp_path: Path, app_dir: Path, invoke: Invoke
) -> None:
    """--dry-run counts and deletes nothing; then prune deletes the old terminal ones only."""
    store, url = sqlite_ledger(tmp_path / "ledger.sqlite3")
    now = datetime.now(UTC)
    old = _terminal(store, 3, now - timedelta(days=40))
    recent = _terminal(store, 2, now - timedelta(days=5))
    live = add_deliveries(store, 1, now=now - timedelta(days=90))
    args = ("prune", "--app", f"{APP_MODULE}:memory_engine", "--db", url, "--older-than", "30d")
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(app_dir))
        counted = invoke(*args, "--dry-run", "--json")
        assert 6 == sum(store.counts().values())
        pruned = invoke(*args, "--batch-size", "2")
        again = invoke(*args, "--json")
    assert (0, "") == (counted.code, counted.stderr)
    assert {"dry_run": True, "deliveries": 3} == json.loads(counted.stdout)
    assert (0, "pruned 3 deliveries\n") == (pruned.code, pruned.stdout)
    assert {"dry_run": False, "deliveries": 0} == json.loads(again.stdout)
    assert [None, None, None] == [store.get(UUID(i)) for i in old]
    assert all(store.get(UUID(i)) is not None for i in [*recent, *live])
    store.engine.dispose()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (("--older-than", "10s"), "min_retention (35 s"),
        (("--older-than", "abc"), "'abc' is not an age"),
        (("--older-than=-1d",), "an age must be finite and > 0"),
        (("--older-than", "0"), "an age must be finite and > 0"),
        (("--older-than", "nanh"), "an age must be finite and > 0"),
        (("--older-than", "1e12d"), "year 1"),
        (("--older-than", "30d", "--batch-size", "0"), "--batch-size must be at least 1"),
        ((), "the following arguments are required: --older-than"),
    ],
)
def test_prune_refuses_a_bad_age_or_batch_in_one_line(
    tmp_path: Path, app_dir: Path, invoke: Invoke, options: tuple[str, ...], message: str
) -> None:
    """A bad --older-than or --batch-size: exit 2, one line saying why, nothing deleted."""
    store, url = sqlite_ledger(tmp_path / "ledger.sqlite3")
    _terminal(store, 1, datetime.now(UTC) - timedelta(days=400))
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(app_dir))
        result = invoke("prune", "--app", f"{APP_MODULE}:memory_engine", "--db", url, *options)
    _assert_refused(result, message, store)


def test_resend_by_id_makes_one_copy_each_and_names_what_it_refused(
    tmp_path: Path, app_dir: Path, invoke: Invoke
) -> None:
    """IDs are resent once each; an unknown or live one is refused (exit 1), the rest done."""
    store, url = sqlite_ledger(tmp_path / "ledger.sqlite3")
    now = datetime.now(UTC)
    cancelled = _terminal(store, 2, now - timedelta(hours=1))
    (live,) = add_deliveries(store, 1)
    unknown = "00000000-0000-4000-8000-000000000000"
    record = tmp_path / "enqueued.txt"
    args = ("resend", "--app", f"{APP_MODULE}:recording_engine", "--db", url)
    env = {"RECORD_PATH": str(record)}
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(app_dir))
        first = invoke(*args, *cancelled, live, unknown, env=env)
        again = invoke(*args, cancelled[0], "--json", env=env)
    assert 1 == first.code
    copies = {}
    for line in first.stdout.splitlines()[:2]:
        words = line.split()
        assert ("resent", "as", "ready") == (words[0], words[2], words[4])
        copies[words[1]] = words[3].rstrip(":")
    assert sorted(cancelled) == sorted(copies)
    assert "resend: 2 copies made, 0 already resent, 2 refused" == first.stdout.splitlines()[-1]
    assert [
        f"chimeway resend: cannot resend delivery {live}: it is still live (status 'ready'); "
        "only a cancelled or suppressed delivery can be resent",
        f"chimeway resend: no delivery with id {unknown}",
    ] == first.stderr_lines
    assert sorted(copies.values()) == sorted(record.read_text().split())
    assert (0, "") == (again.code, again.stderr)
    assert {
        "dry_run": False,
        "resent": [
            {
                "id": cancelled[0],
                "copy": copies[cancelled[0]],
                "created": False,
                "status": "ready",
                "reason": None,
            }
        ],
        "refused": [],
    } == json.loads(again.stdout)
    assert 2 == len(record.read_text().split())  # the repeat queued nothing
    store.engine.dispose()


def test_resend_since_selects_by_window_and_dry_run_lists_only(
    tmp_path: Path, app_dir: Path, invoke: Invoke
) -> None:
    """--since picks what ended in the window (no copies); --dry-run lists and resends nothing."""
    store, url = sqlite_ledger(tmp_path / "ledger.sqlite3")
    now = datetime.now(UTC)
    _terminal(store, 1, now - timedelta(days=3))
    recent = _terminal(store, 3, now - timedelta(minutes=30))
    record = tmp_path / "enqueued.txt"
    args = ("resend", "--app", f"{APP_MODULE}:recording_engine", "--db", url, "--since", "2h")
    env = {"RECORD_PATH": str(record)}
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(app_dir))
        listed = invoke(*args, "--dry-run", env=env)
        limited = invoke(
            *args, "--limit", "1", "--channel", "log", "--reason", "cancelled", env=env
        )
        rest = invoke(*args, "--json", env=env)
        nothing_new = invoke(*args, env=env)
    assert (0, "") == (listed.code, listed.stderr)
    oldest_first = sorted(recent)  # one updated_at: then by id
    assert [*oldest_first, "resend would make 3 copies (dry run: nothing resent)"] == (
        listed.stdout.splitlines()
    )
    assert 0 == limited.code
    assert limited.stdout.startswith(f"resent {oldest_first[0]} as ")
    outcome = json.loads(rest.stdout)
    assert [False, True, True] == [r["created"] for r in outcome["resent"]]
    assert 3 == len(record.read_text().split())
    assert (0, "resend: 0 copies made, 3 already resent, 0 refused") == (
        nothing_new.code,
        nothing_new.stdout.splitlines()[-1],
    )
    store.engine.dispose()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ((), "give the deliveries' IDs, or select them with --since AGE"),
        (("--channel", "log"), "give the deliveries' IDs, or select them with --since AGE"),
        (
            ("00000000-0000-4000-8000-000000000000", "--since", "1h", "--dry-run"),
            "not both (--since, --dry-run)",
        ),
        (("--since", "1h", "--limit", "0"), "--limit must be at least 1"),
        (("--since", "1e12d"), "year 1"),
        (("not-a-uuid",), "'not-a-uuid' is not a delivery id"),
    ],
)
def test_resend_refuses_bad_options_in_one_line(
    tmp_path: Path, app_dir: Path, invoke: Invoke, options: tuple[str, ...], message: str
) -> None:
    """A missing selection, a mix of IDs and --since, a bad limit or age: exit 2, one line."""
    store, url = sqlite_ledger(tmp_path / "ledger.sqlite3")
    _terminal(store, 1, datetime.now(UTC))
    env = {"RECORD_PATH": str(tmp_path / "enqueued.txt")}
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(app_dir))
        result = invoke(
            "resend", "--app", f"{APP_MODULE}:recording_engine", "--db", url, *options, env=env
        )
    _assert_refused(result, message, store)


def test_resend_refuses_an_engine_on_the_memory_backend(
    tmp_path: Path, app_dir: Path, invoke: Invoke
) -> None:
    """Copies queued in this process's memory would end with it: exit 2, nothing resent."""
    store, url = sqlite_ledger(tmp_path / "ledger.sqlite3")
    (cancelled,) = _terminal(store, 1, datetime.now(UTC))
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(app_dir))
        result = invoke("resend", "--app", f"{APP_MODULE}:memory_engine", "--db", url, cancelled)
    assert 2 == result.code
    assert "queues in memory" in result.stderr
    assert 1 == sum(store.counts().values())
    store.engine.dispose()


@pytest.mark.redis
def test_resent_copies_are_delivered_by_a_real_rq_worker(
    tmp_path: Path, app_dir: Path, invoke: Invoke, rq_queue: tuple[str, str]
) -> None:
    """resend queues the copies on RQ (real Redis); chimeway's RQ worker delivers them."""
    import redis

    queue, redis_url = rq_queue
    store, url = sqlite_ledger(tmp_path / "ledger.sqlite3")
    originals = _terminal(store, 3, datetime.now(UTC) - timedelta(minutes=5))
    app = ("--app", f"{APP_MODULE}:rq_engine", "--db", url, "--redis-url", redis_url)
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(app_dir))
        resent = invoke("resend", *app, "--since", "1h", "--json", env={"QUEUE": queue})
    assert (0, "") == (resent.code, resent.stderr)
    copies = {r["copy"] for r in json.loads(resent.stdout)["resent"]}
    with redis.Redis.from_url(redis_url) as client:
        jobs = client.lrange(f"rq:queue:{queue}", 0, -1)
    assert {job_id_for(UUID(c)) for c in copies} == {job.decode() for job in jobs}
    process = start(
        "worker",
        "--backend",
        "rq",
        *app,
        "--tick-interval",
        "0.5",
        cwd=tmp_path,
        env={"QUEUE": queue},
        path=[app_dir],
    )
    _wait_for(store, 3, process)
    out, err = _stop(process)
    assert "Traceback" not in out + err
    assert 0 == process.returncode, err
    assert {(DeliveryStatus.SUCCEEDED, None): 3, (DeliveryStatus.CANCELLED, "cancelled"): 3} == (
        store.counts()
    )
    assert {DeliveryStatus.CANCELLED} == {
        history.delivery.status for i in originals if (history := store.history(UUID(i)))
    }
    store.engine.dispose()


def test_db_that_the_engine_does_not_read_is_refused(
    tmp_path: Path, app_dir: Path, invoke: Invoke
) -> None:
    """--db naming another database than the engine's own: exit 2, nothing done to either."""
    used, used_url = sqlite_ledger(tmp_path / "used.sqlite3")
    named, named_url = sqlite_ledger(tmp_path / "named.sqlite3")
    long_ago = datetime.now(UTC) - timedelta(days=400)
    _terminal(used, 1, long_ago)
    _terminal(named, 1, long_ago)
    env = {"FIXED_DATABASE_URL": used_url}
    args = ("prune", "--app", f"{APP_MODULE}:fixed_engine", "--older-than", "30d")
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(app_dir))
        patch.chdir(tmp_path)
        refused = invoke(*args, "--db", named_url, env=env)
        same_file = invoke(*args, "--db", "sqlite:///used.sqlite3", env=env)
    assert (2, "") == (refused.code, refused.stdout)
    assert [
        f"chimeway: error: --db names {named_url} but the engine of "
        f"{APP_MODULE}:fixed_engine uses {used_url}: the application does not read "
        "$CHIMEWAY_DATABASE_URL; drop --db, or build the store from that variable"
    ] == refused.stderr_lines
    assert 1 == sum(named.counts().values())
    assert (0, "pruned 1 delivery\n") == (same_file.code, same_file.stdout)  # spelled otherwise
    assert 0 == sum(used.counts().values())
    used.engine.dispose()
    named.engine.dispose()


def _routed_ledger(path: Path) -> tuple[SQLStore, str]:
    """A SQLite ledger with 3 deliveries on "log" and 2 on "sms", all in the outbox."""
    store, url = sqlite_ledger(path)
    specs = [NewDelivery(channel="log", recipient=f"l{i}@example.test") for i in range(3)]
    specs += [NewDelivery(channel="sms", recipient=f"+1555010{i}") for i in range(2)]
    store.create_many(specs, now=datetime.now(UTC))
    return store, url


def _by_channel(store: SQLStore) -> dict[str, set[DeliveryStatus]]:
    found: dict[str, set[DeliveryStatus]] = {}
    for delivery in store.find(limit=100):
        found.setdefault(delivery.channel, set()).add(delivery.status)
    return found


def test_a_memory_worker_serves_every_queue_and_refuses_queue(
    tmp_path: Path, app_dir: Path
) -> None:
    """One process holds every queue of a memory backend: it serves them all; --queue is exit 2."""
    store, url = _routed_ledger(tmp_path / "ledger.sqlite3")

    def burst(*options: str) -> Result:
        return run(
            "worker", "--backend", "memory", "--burst", *options,
            "--app", f"{APP_MODULE}:routed_memory_engine", "--db", url,
            cwd=tmp_path, path=[app_dir], timeout=DEADLINE,
        )  # fmt: skip

    refused = burst("--queue", "sms")
    assert (2, "") == (refused.code, refused.stdout)
    assert "--backend memory: a memory worker serves every queue of its process" in refused.stderr
    assert {"log": {DeliveryStatus.READY}, "sms": {DeliveryStatus.READY}} == _by_channel(store)
    served = burst()
    assert (0, "") == (served.code, served.stderr)
    assert served.stdout.startswith(
        "chimeway worker: memory backend, queues 'default', 'sms', 1 thread"
    )
    assert {"log": {DeliveryStatus.SUCCEEDED}, "sms": {DeliveryStatus.SUCCEEDED}} == _by_channel(
        store
    )
    store.engine.dispose()


@pytest.mark.redis
def test_rq_workers_serve_only_the_queues_they_are_given(
    tmp_path: Path, app_dir: Path, rq_queue: tuple[str, str]
) -> None:
    """Real RQ workers: the first burst relays both channels to their queues and runs its own."""
    import redis
    import rq

    queue, redis_url = rq_queue
    store, url = _routed_ledger(tmp_path / "ledger.sqlite3")

    def burst(*queues: str) -> Result:
        options = [arg for name in queues for arg in ("--queue", name)]
        return _rq_burst((tmp_path, app_dir), rq_queue, "routed_rq_engine", url, *options)

    first = burst(queue)
    assert (0, "") == (first.code, first.stderr)
    assert f"chimeway worker: rq backend, queue '{queue}', app" in first.stdout
    assert {"log": {DeliveryStatus.SUCCEEDED}, "sms": {DeliveryStatus.READY}} == _by_channel(store)
    with redis.Redis.from_url(redis_url) as client:
        waiting = rq.Queue(f"{queue}-sms", connection=client).count
    assert (0, 2) == (store.outbox_size(), waiting)
    typo = burst(f"{queue}-smss")
    assert (2, "") == (typo.code, typo.stdout)
    assert (
        f"--queue {queue}-smss: the engine of {APP_MODULE}:routed_rq_engine sends no job "
        f"there; its queues are {queue}, {queue}-sms"
    ) in typo.stderr
    both = burst()  # no --queue: the backend's queue, then every routed one
    assert 0 == both.code, both.stderr
    assert f"queues '{queue}', '{queue}-sms'" in both.stdout
    assert {"log": {DeliveryStatus.SUCCEEDED}, "sms": {DeliveryStatus.SUCCEEDED}} == _by_channel(
        store
    )
    store.engine.dispose()
