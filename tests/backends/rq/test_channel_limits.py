"""Each channel's own job time limit on one RQBackend with its defaults (issue 26).

Real RQ worker subprocesses (the ``rq`` CLI with chimeway's worker classes)
run :mod:`tests.backends.rq.limits_app`: a ``quick`` channel (timeout 2 s,
lease 4 s) and a ``slow`` one (timeout 6 s, lease 8 s), whose windows for a
job timeout do not overlap. These tests use Redis database
:data:`REDIS_LIMITS_DB` and queues named ``rqto_*``.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from rq.timeouts import JobTimeoutException, UnixSignalDeathPenalty

from chimeway_backends.rq import ChimewaySimpleWorker, ChimewayWorker, RQBackend
from chimeway_backends.rq.limits import (
    ChimewayDeathPenalty,
    JobTimeLimitExceeded,
    call_limit,
    job_limit,
)
from chimeway_core import NewDelivery, Outcome
from chimeway_core.channels.smtp import SMTPChannel
from chimeway_core.channels.webhook import WebhookChannel
from chimeway_core.engine import Chimeway
from chimeway_core.store import SQLStore
from tests.backends._workers import wait_until
from tests.backends.rq import limits_app
from tests.backends.rq.conftest import Workers, redis_client, redis_url, scratch_queue

#: The Redis database these tests write to (theirs alone).
REDIS_LIMITS_DB = 4
ROOT = Path(__file__).resolve().parents[3]
RQ_CLI = str(Path(sys.executable).with_name("rq"))
WORKER_CLASSES = [
    "chimeway_backends.rq.ChimewayWorker",
    "chimeway_backends.rq.ChimewaySimpleWorker",
]


@pytest.fixture
def limits_redis() -> Iterator[redis.Redis]:
    """A client on :data:`REDIS_LIMITS_DB`."""
    with redis_client(REDIS_LIMITS_DB) as conn:
        yield conn


@pytest.fixture
def limits_queue(limits_redis: redis.Redis) -> Iterator[str]:
    """A ``rqto_`` queue no other test uses; all its keys are deleted at teardown."""
    with scratch_queue(limits_redis, "rqto_") as name:
        yield name


@pytest.fixture
def app(
    tmp_path: Path, postgres_database: str, pg_store: SQLStore, limits_queue: str
) -> Iterator[Chimeway]:
    """The test process's engine: the same one the workers build."""
    engine = limits_app.build(
        db_url=postgres_database,
        redis_url=redis_url(REDIS_LIMITS_DB),
        queue=limits_queue,
        calls=tmp_path / "calls.jsonl",
    )
    yield engine
    engine.store.engine.dispose()
    assert isinstance(engine.backend, RQBackend)
    engine.backend.connection.close()


def worker_env(engine: Chimeway, calls: Path) -> dict[str, str]:
    """The environment of a worker subprocess running :mod:`limits_app`."""
    backend = engine.backend
    assert isinstance(backend, RQBackend)
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)]),
        "CHIMEWAY_APP": "tests.backends.rq.limits_app:engine",
        "CHIMEWAY_RESCUE_INTERVAL": "0.5",
        "APP_DB_URL": engine.store.engine.url.render_as_string(hide_password=False),
        "APP_REDIS_URL": redis_url(REDIS_LIMITS_DB),
        "APP_QUEUE": backend.queue_name,
        "APP_CALLS": str(calls),
    }


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[[Chimeway, str], Path]]:
    """Start a long-running worker; returns its log file. Stopped (SIGTERM) at teardown."""
    workers = Workers(tmp_path)

    def start(engine: Chimeway, worker_class: str) -> Path:
        backend = engine.backend
        assert isinstance(backend, RQBackend)
        command = [RQ_CLI, "worker", "--url", redis_url(REDIS_LIMITS_DB), "-w", worker_class]
        command += ["--with-scheduler", "--serializer", "rq.serializers.JSONSerializer"]
        command.append(backend.queue_name)
        return workers.start(command, worker_env(engine, tmp_path / "calls.jsonl"))[1]

    yield start
    workers.stop(timeout=30)


def call_log(path: Path) -> dict[str, list[dict[str, Any]]]:
    """Every line the channels logged, grouped by delivery id."""
    grouped: defaultdict[str, list[dict[str, Any]]] = defaultdict(list)
    if path.exists():
        for line in path.read_text().splitlines():
            entry = json.loads(line)
            grouped[entry["delivery"]].append(entry)
    return grouped


@pytest.mark.slow
@pytest.mark.parametrize("worker_class", WORKER_CLASSES)
def test_each_channel_is_cut_at_its_own_limit_on_one_default_backend(
    app: Chimeway, spawn: Callable[[Chimeway, str], Path], tmp_path: Path, worker_class: str
) -> None:
    """Both channels deliver; a hung call in each is cut in its own window, then retried once.

    ``quick``'s window is (2 s, 4 s], ``slow``'s (6 s, 8 s]: the slow channel's
    3.5 s call outlives the quick channel's whole lease and still succeeds, a
    hung quick call is cut long before the slow channel's timeout, a hung slow
    call only after its own timeout. A cut attempt is resolved by the
    rescuer as ``unknown`` and sent again with the same idempotency key.
    """
    specs = {
        "quick ok": NewDelivery(channel="quick", recipient="ok-1.5"),
        "quick hang": NewDelivery(channel="quick", recipient="hang"),
        "slow ok": NewDelivery(channel="slow", recipient="ok-3.5"),
        "slow hang": NewDelivery(channel="slow", recipient="hang"),
    }
    ids = dict(zip(specs, (d.id for d in app.notify_many(list(specs.values()))), strict=True))
    log = spawn(app, worker_class)

    def all_terminal() -> bool:
        return all(app.get(i).delivery.is_terminal for i in ids.values())

    wait_until(all_terminal, timeout=180, what="every delivery to end")
    calls = call_log(tmp_path / "calls.jsonl")
    outcomes = {
        name: (
            app.get(i).delivery.status.value,
            [a.outcome for a in app.get(i).attempts],
            [(c["event"], c["attempt"]) for c in calls[str(i)]],
            {c["key"] for c in calls[str(i)]} == {app.get(i).delivery.idempotency_key},
        )
        for name, i in ids.items()
    }
    sent_once = ("succeeded", [Outcome.SUCCEEDED], [("call", 1)], True)
    cut_then_sent = (
        "succeeded",
        [Outcome.UNKNOWN, Outcome.SUCCEEDED],
        [("call", 1), ("cut", 1), ("call", 2)],
        True,
    )
    assert {
        "quick ok": sent_once,
        "quick hang": cut_then_sent,
        "slow ok": sent_once,
        "slow hang": cut_then_sent,
    } == outcomes
    quick_cut = calls[str(ids["quick hang"])][1]
    slow_cut = calls[str(ids["slow hang"])][1]
    # Each hung call had its channel's whole timeout; the quick one was cut at its
    # own limit (3 s), long before the slow channel's timeout or the job's 8 s.
    assert limits_app.TIMEOUTS["quick"] <= quick_cut["elapsed"] < limits_app.TIMEOUTS["slow"]
    assert limits_app.TIMEOUTS["slow"] <= slow_cut["elapsed"]
    # The retry came after the cut: never two calls for one delivery at once.
    for name in ("quick hang", "slow hang"):
        _, cut, second = calls[str(ids[name])]
        assert cut["at"] <= second["at"], name
    assert "job_timeout" not in log.read_text()


def _engine(backend: RQBackend, timeouts: dict[str, float], margin: float) -> Chimeway:
    channels = {
        name: limits_app.ScriptedChannel(name, timeout, Path(os.devnull))
        for name, timeout in timeouts.items()
    }
    # These engines never touch their ledger.
    return Chimeway(SQLStore("sqlite://"), backend, channels, lease_margin=margin)


def test_the_job_limit_is_the_longest_lease_unless_one_is_set(limits_redis: redis.Redis) -> None:
    """Per channel, RQ's own timeout covers the longest lease; a set job_timeout is kept."""
    engine = _engine(RQBackend(limits_redis, "rqto_limit"), {"a": 2.0, "b": 6.5}, 2.0)
    fixed = _engine(RQBackend(limits_redis, "rqto_limit", job_timeout=5), {"a": 2.0}, 2.0)
    assert (None, 9, 5) == (
        engine.backend.job_timeout,  # type: ignore[union-attr]
        job_limit(engine, None),
        job_limit(fixed, 5),
    )


@pytest.mark.parametrize("worker_class", [ChimewayWorker, ChimewaySimpleWorker])
def test_the_worker_warns_only_where_a_limit_cannot_fit(
    limits_redis: redis.Redis, caplog: pytest.LogCaptureFixture, worker_class: type[Any]
) -> None:
    """No warning by default; one for a job_timeout that misses, or a penalty that cannot move."""
    timeouts = {"quick": 2.0, "slow": 6.0}
    caplog.set_level(logging.WARNING, logger="chimeway_backends.rq.limits")
    worker_class(
        ["rqto_warn"],
        connection=limits_redis,
        engine=_engine(RQBackend(limits_redis, "rqto_warn"), timeouts, 2.0),
    )
    per_channel = [r.getMessage() for r in caplog.records]
    caplog.clear()
    worker_class(
        ["rqto_warn"],
        connection=limits_redis,
        engine=_engine(RQBackend(limits_redis, "rqto_warn", job_timeout=4), timeouts, 2.0),
    )
    fixed = [r.getMessage() for r in caplog.records]
    caplog.clear()
    own_penalty = type("Own", (worker_class,), {"death_penalty_class": UnixSignalDeathPenalty})
    own_penalty(
        ["rqto_warn"],
        connection=limits_redis,
        engine=_engine(RQBackend(limits_redis, "rqto_warn"), timeouts, 2.0),
    )
    foreign = [r.getMessage() for r in caplog.records]
    assert ([], 1, 1) == (per_channel, len(fixed), len(foreign))
    assert "channel 'slow': RQ job_timeout=4 s" in fixed[0]
    assert "per-channel job limits need chimeway's death penalty" in foreign[0]


def test_shorten_moves_only_an_armed_job_penalty_and_only_earlier() -> None:
    """Outside a job nothing moves; inside, the alarm comes earlier, never later."""
    assert not ChimewayDeathPenalty.shorten(1.0, "outside")
    moved: list[bool] = []

    def run_job() -> None:
        with ChimewayDeathPenalty(30, JobTimeoutException):
            moved.append(ChimewayDeathPenalty.shorten(60.0, "later"))
            moved.append(ChimewayDeathPenalty.shorten(0.2, "0.2 seconds, channel 'x'"))
            time.sleep(30)

    with pytest.raises(JobTimeLimitExceeded, match=r"0\.2 seconds, channel 'x'"):
        run_job()
    assert [False, True] == moved
    assert (0.0, None) == (signal.getitimer(signal.ITIMER_REAL)[0], ChimewayDeathPenalty._armed)


def test_before_call_outside_a_job_leaves_the_clock_alone(limits_redis: redis.Redis) -> None:
    """A backend told of a call with no job running arms nothing."""
    RQBackend(limits_redis, "rqto_none").before_call("quick", 2.0, 4.0)
    assert 0.0 == signal.getitimer(signal.ITIMER_REAL)[0]


def test_the_built_in_channels_share_one_default_backend(
    limits_redis: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """Webhook (100 s) and SMTP (300 s) with their defaults: no warning, each its own limit.

    RQ's old default of one 60 s job timeout fitted neither: it still warns for both.
    """
    channels = {
        "webhook": WebhookChannel(lambda delivery: "https://hooks.example.test/in"),
        "email": SMTPChannel(
            "mail.example.test",
            sender="app@example.test",
            subject_for=lambda delivery: "hi",
            body_for=lambda delivery: "hi",
        ),
    }
    caplog.set_level(logging.WARNING, logger="chimeway_backends.rq.limits")
    for job_timeout in (None, 60):
        backend = RQBackend(limits_redis, "rqto_builtin", job_timeout=job_timeout)
        engine = Chimeway(SQLStore("sqlite://"), backend, channels)
        ChimewaySimpleWorker(["rqto_builtin"], connection=limits_redis, engine=engine)
    limits = {name: call_limit(c.timeout, c.timeout + 30.0) for name, c in channels.items()}
    assert (
        {"webhook": 115.0, "email": 315.0},
        330,
        [("email", 60), ("webhook", 60)],
    ) == (limits, job_limit(engine, None), [r.args[:2] for r in caplog.records])  # type: ignore[index]
