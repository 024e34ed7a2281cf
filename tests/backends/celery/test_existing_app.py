"""An existing Celery app: plain ``celery -A proj worker`` and ``celery beat`` processes.

The project under test is :mod:`tests.backends.celery.shop`: its app module
names chimeway's engine in one setting and imports nothing of chimeway's
but ``beat_schedule``. Every process here is Celery's own command (``python
-m celery``), never chimeway's, on Redis (database 5, with a
key prefix of the test's own) and a SQLite ledger in the test's directory.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final
from uuid import UUID

import attrs
import pytest
import redis
from celery import Celery

from chimeway_backends.celery import (
    ENGINE_ENV,
    ENGINE_SETTING,
    CeleryBackend,
    WorkerRefusedError,
    beat_schedule,
)
from chimeway_backends.celery.discovery import engine_for, refusal
from chimeway_core import DeliveryStatus, LogChannel, NewDelivery, SQLStore
from chimeway_core.engine import Chimeway
from chimeway_core.errors import InvalidJobError
from chimeway_core.loading import APP_VARIABLE
from tests.services import REDIS_URL, require

#: The Redis database these tests' brokers use (each test a key prefix of its own).
SHOP_REDIS_URL = f"{REDIS_URL.rsplit('/', 1)[0]}/5"

pytestmark = [pytest.mark.extras]

ROOT: Final = Path(__file__).resolve().parents[3]
APP: Final = "tests.backends.celery.shop"
UNNAMED: Final = "tests.backends.celery.shop.unnamed"
#: How long a worker may take to do what a test waits for.
DEADLINE: Final = 120.0

REFUSAL: Final = (
    "Error: chimeway refuses to start a worker of the Celery app 'shop-unnamed': it consumes "
    "the queue 'chimeway', where chimeway sends its jobs, but the task 'chimeway.deliver' is "
    "not registered on the app, so Celery would discard every chimeway job it takes as an "
    "unregistered task. Name the module that builds your chimeway engine in the app's "
    "configuration: app.conf.chimeway_engine = 'proj.notify:engine' in the app module, or "
    "CELERY_CHIMEWAY_ENGINE in Django settings"
)

_NOTIFY: Final = """
import json
from tests.backends.celery.shop.celery import app
from tests.backends.celery.shop.notify import engine
delivery = engine.notify("log", "ada@example.test", {"order": 1})
print(json.dumps({"id": str(delivery.id), "imports": list(app.conf.imports),
                  "include": list(app.conf.include)}))
"""


@attrs.frozen
class Shop:
    """The project deployed for one test: its environment, ledger and Redis key prefix."""

    env: dict[str, str]
    store: SQLStore
    directory: Path

    @property
    def queue(self) -> str:
        """The queue the project's CeleryBackend sends to."""
        return self.env["SHOP_QUEUE"]

    def celery(self, app: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        """Run ``celery -A app *args`` to its end."""
        return subprocess.run(
            [sys.executable, "-m", "celery", "-A", app, *args],
            cwd=ROOT,
            env={**self.env, **env},
            capture_output=True,
            text=True,
            timeout=DEADLINE,
            check=False,
        )

    @contextmanager
    def running(self, app: str, *args: str, **env: str) -> Iterator[Path]:
        """``celery -A app *args`` running for the block; yields its log file; SIGTERM after."""
        log = self.directory / f"{args[0]}-{secrets.token_hex(3)}.log"
        with log.open("w") as output:
            process = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", app, *args, "--loglevel", "INFO"],
                cwd=ROOT,
                env={**self.env, **env},
                stdout=output,
                stderr=subprocess.STDOUT,
                text=True,
            )
            try:
                yield log
                assert process.poll() is None, log.read_text()
            finally:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()

    def notify(self, **env: str) -> dict[str, Any]:
        """Notify from a process of the project's own (a web process): the id, the app's imports."""
        done = subprocess.run(
            [sys.executable, "-c", _NOTIFY],
            cwd=ROOT,
            env={**self.env, **env},
            capture_output=True,
            text=True,
            timeout=DEADLINE,
            check=True,
        )
        return dict(json.loads(done.stdout))

    def queued(self, queue: str) -> int:
        """Messages waiting on ``queue`` (a Redis list under the test's key prefix)."""
        client = redis.Redis.from_url(self.env["SHOP_BROKER_URL"])
        try:
            return int(client.llen(f"{self.env['SHOP_KEY_PREFIX']}{queue}"))
        finally:
            client.close()

    def status(self, delivery_id: str) -> DeliveryStatus:
        """The delivery's status in the ledger."""
        history = self.store.history(UUID(delivery_id))
        assert history is not None
        return history.delivery.status

    def wait_for(self, delivery_ids: list[str], *logs: Path) -> None:
        """Wait until every delivery succeeded; fail with the processes' logs if they do not."""
        deadline = time.monotonic() + DEADLINE
        while any(self.status(i) is not DeliveryStatus.SUCCEEDED for i in delivery_ids):
            if time.monotonic() > deadline:
                pytest.fail("not delivered in time:\n" + "\n".join(p.read_text() for p in logs))
            time.sleep(0.2)


@pytest.fixture
def shop(tmp_path: Path) -> Iterator[Shop]:
    """The project on a fresh SQLite ledger and a Redis key prefix of this test's own."""
    require("redis")
    token = secrets.token_hex(4)
    url = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    store = SQLStore(url)
    store.create_all()
    env = {key: value for key, value in os.environ.items() if not key.startswith("CHIMEWAY_")}
    env.update(
        PYTHONPATH=str(ROOT),
        SHOP_BROKER_URL=SHOP_REDIS_URL,
        SHOP_KEY_PREFIX=f"chimeway-shop-{token}:",
        SHOP_DATABASE_URL=url,
        SHOP_QUEUE=f"chimeway-shop-{token}",
    )
    try:
        yield Shop(env, store, tmp_path)
    finally:
        store.engine.dispose()
        client = redis.Redis.from_url(SHOP_REDIS_URL)
        try:
            keys = list(client.scan_iter(match=f"{env['SHOP_KEY_PREFIX']}*", count=500))
            if keys:
                client.delete(*keys)
        finally:
            client.close()


# -- real processes -------------------------------------------------------------


@pytest.mark.redis
def test_a_plain_celery_worker_of_the_app_delivers_with_the_one_line(shop: Shop) -> None:
    """``celery -A shop worker``: one setting names the engine, no imports=; it delivers."""
    web = shop.notify()
    assert ([], [], 1) == (web["imports"], web["include"], shop.queued(shop.queue))
    worker = ("worker", "-Q", shop.queue, "--concurrency", "1", "--without-mingle")
    with shop.running(APP, *worker) as log:
        shop.wait_for([web["id"]], log)
    text = log.read_text()
    assert "unregistered task" not in text
    assert f"Task chimeway.deliver[chimeway-delivery-{web['id']}] succeeded" in text


@pytest.mark.redis
def test_a_worker_consuming_chimeway_without_the_task_refuses_and_takes_nothing(
    shop: Shop,
) -> None:
    """The app without the line, on ``chimeway``: exit 2, one line, the job still queued."""
    web = shop.notify(SHOP_QUEUE="chimeway")
    assert 1 == shop.queued("chimeway")
    refused = shop.celery(UNNAMED, "worker", "-Q", "chimeway", "--pool", "solo")
    assert (2, [REFUSAL]) == (
        refused.returncode,
        [line for line in refused.stderr.splitlines() if line.startswith("Error:")],
    )
    assert "Traceback" not in refused.stderr
    assert (1, DeliveryStatus.READY) == (shop.queued("chimeway"), shop.status(web["id"]))


@pytest.mark.redis
def test_a_worker_of_the_app_without_chimeway_on_other_queues_starts(shop: Shop) -> None:
    """The check leaves alone a worker that consumes none of chimeway's queues: it runs a task."""
    queue = f"{shop.queue}-other"
    with shop.running(UNNAMED, "worker", "-Q", queue, "--pool", "solo") as log:
        sent = shop.celery(UNNAMED, "call", "shop.tidy", "--queue", queue)
        assert 0 == sent.returncode, sent.stderr
        deadline = time.monotonic() + DEADLINE
        while "Task shop.tidy[" not in log.read_text() or "succeeded" not in log.read_text():
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
    assert "chimeway refuses" not in log.read_text()


@pytest.mark.redis
def test_beat_relays_a_failed_hand_over_and_rescues_an_expired_lease(shop: Shop) -> None:
    """``celery beat`` + ``celery worker`` (no rescuer of its own) finish both deliveries."""
    now = datetime.now(UTC)
    past = now - timedelta(hours=1)
    # An outbox row and no job: what a hand-over that failed after the commit leaves.
    [handed] = shop.store.create_many([NewDelivery(channel="log", recipient="a@x.test")], now=now)
    # An attempt in flight under a lease that ran out an hour ago: a worker died mid-call.
    [lost] = shop.store.create_many([NewDelivery(channel="log", recipient="b@x.test")], now=past)
    shop.store.delete_outbox([lost.delivery.id])
    assert shop.store.claim(lost.delivery.id, owner="dead", lease_seconds=5, now=past)
    ids = [str(handed.delivery.id), str(lost.delivery.id)]
    env = {"SHOP_RESCUE_INTERVAL": "none", "SHOP_BEAT_EVERY": "1"}
    worker = ("worker", "-Q", shop.queue, "--concurrency", "1", "--without-mingle")
    beat = ("beat", "--schedule", str(shop.directory / "beat-schedule"), "--max-interval", "1")
    with (
        shop.running(APP, *worker, **env) as worker_log,
        shop.running(APP, *beat, **env) as beat_log,
    ):
        shop.wait_for(ids, worker_log, beat_log)
    history = shop.store.history(lost.delivery.id)
    assert history is not None
    assert ["unknown", "succeeded"] == [
        attempt.outcome and attempt.outcome.value for attempt in history.attempts
    ]
    assert 0 == shop.store.outbox_size()
    sent, ran = beat_log.read_text(), worker_log.read_text()
    assert "Sending due task chimeway.rescue (chimeway.rescue)" in sent
    assert "Sending due task chimeway.relay (chimeway.relay)" in sent
    assert "Task chimeway.rescue[" in ran
    assert "Task chimeway.relay[" in ran


@pytest.mark.redis
def test_celery_chimeway_reports_the_engine_and_the_queues(shop: Shop) -> None:
    """``celery -A shop chimeway`` prints what a worker will know; without the line it exits 2."""
    named = shop.celery(APP, "chimeway")
    unnamed = shop.celery(UNNAMED, "chimeway")
    assert (0, "") == (named.returncode, named.stderr), named.stderr
    assert [
        "engine: tests.backends.celery.shop.notify:engine (chimeway_engine)",
        "tasks on 'shop': chimeway.deliver, chimeway.relay, chimeway.rescue",
        f"queues: {shop.queue} (celery worker -Q {shop.queue})",
    ] == named.stdout.splitlines()
    assert 2 == unnamed.returncode
    assert "the app names no chimeway engine and builds no CeleryBackend" in unnamed.stderr


def test_the_celery_command_loads_the_hook_and_nothing_of_the_core() -> None:
    """Every ``celery`` command imports the hook (an entry point), and no more of chimeway."""
    script = (
        "import sys, celery.bin.celery; "
        "print(' '.join(sorted(m for m in sys.modules if m.startswith('chimeway'))))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    assert (
        "chimeway_backends chimeway_backends.celery chimeway_backends.celery.command "
        "chimeway_backends.celery.hooks"
    ) == done.stdout.strip()


# -- the pieces, in process ---------------------------------------------------


_ENGINES: Final = """
from celery import Celery
from chimeway_backends.celery import CeleryBackend
from chimeway_core import Chimeway, LogChannel, SQLStore
from chimeway_core.memory import MemoryBackend

app = Celery("named", broker="memory://", set_as_current=False)
other = Celery("named", broker="memory://", set_as_current=False)
engine = Chimeway(SQLStore("sqlite://"), CeleryBackend(app), {"log": LogChannel()},
                  routes={"log": "chimeway-log"})
elsewhere = Chimeway(SQLStore("sqlite://"), CeleryBackend(other), {"log": LogChannel()})
on_memory = Chimeway(SQLStore("sqlite://"), MemoryBackend(), {"log": LogChannel()})
"""


@pytest.fixture
def engines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A module of engines on Celery apps (and one on the memory backend), importable."""
    name = f"chimeway_existing_{secrets.token_hex(4)}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(_ENGINES))
    monkeypatch.syspath_prepend(str(tmp_path))
    module = __import__(name)
    yield module
    sys.modules.pop(name, None)


def test_the_setting_loads_the_engine_and_binds_it_to_the_apps_backend(engines: Any) -> None:
    """chimeway_engine names an engine on this app: loaded, and its backend performs with it."""
    app = engines.app
    app.conf[ENGINE_SETTING] = f"{engines.__name__}:engine"
    assert engines.engine.backend.source.current is None
    assert engines.engine is engine_for(app)
    assert engines.engine is engines.engine.backend.engine()
    assert refusal(app, {"chimeway", "chimeway-log"}) is None


@pytest.mark.parametrize(
    ("setting", "problem"),
    [
        (
            "{module}:elsewhere",
            "the engine {module}:elsewhere (chimeway_engine) sends its jobs through another "
            "Celery app object ('named')",
        ),
        (
            "{module}:on_memory",
            "the engine {module}:on_memory (chimeway_engine) runs on MemoryBackend, not on a "
            "CeleryBackend of this app",
        ),
        (
            "{module}:missing",
            "its setting chimeway_engine = '{module}:missing' names no engine: ",
        ),
        ("{module}", "its setting chimeway_engine = '{module}' names no engine: expected"),
        (3, "its setting chimeway_engine must be an import path 'module:attribute', not 3"),
    ],
)
def test_a_setting_that_names_no_engine_of_this_app_is_refused(
    engines: Any, setting: object, problem: str
) -> None:
    """A path that does not load, an engine on another backend or app: WorkerRefusedError."""
    app = Celery("mine", broker="memory://", set_as_current=False)
    value = setting.format(module=engines.__name__) if isinstance(setting, str) else setting
    app.conf[ENGINE_SETTING] = value
    with pytest.raises(WorkerRefusedError) as raised:
        engine_for(app)
    assert raised.value.problem.startswith(problem.format(module=engines.__name__))
    assert (2, "mine") == (raised.value.exit_code, raised.value.app)
    assert (
        "chimeway refuses to start a worker of the Celery app 'mine': " + raised.value.problem
    ) == str(raised.value)


def test_an_engine_already_performing_is_kept_and_the_path_not_loaded(engines: Any) -> None:
    """A backend bound in this process (run_worker's) keeps its engine; the path is not loaded."""
    engines.engine.backend.bind(engines.engine)
    engines.app.conf[ENGINE_SETTING] = f"{engines.__name__}:factory_never_called"
    assert engines.engine is engine_for(engines.app)


def test_refusal_only_for_the_chimeway_queue_without_the_task() -> None:
    """The default queue without the task is refused; other queues, or the task present, are not."""
    bare = Celery("bare", broker="memory://", set_as_current=False)
    assert refusal(bare, {"celery", "orders"}) is None
    refused = refusal(bare, {"celery", "chimeway"})
    assert refused is not None
    assert refused.problem.startswith("it consumes the queue 'chimeway'")
    CeleryBackend(bare)
    assert refusal(bare, {"chimeway"}) is None


def test_beat_schedule_entries_and_their_checks() -> None:
    """Rescue (and relay when asked) to the backend's queue, expiring after one period."""
    assert {
        "chimeway.rescue": {
            "task": "chimeway.rescue",
            "schedule": 30.0,
            "options": {"queue": "chimeway", "expires": 30.0},
        }
    } == beat_schedule()
    both = beat_schedule("notifications", rescue_every=60, relay_every=5)
    assert [("chimeway.rescue", 60.0), ("chimeway.relay", 5.0)] == [
        (name, entry["schedule"]) for name, entry in both.items()
    ]
    assert {"queue": "notifications", "expires": 5.0} == both["chimeway.relay"]["options"]
    assert {} == beat_schedule(rescue_every=None)
    with pytest.raises(ValueError, match="queue must be a non-empty str"):
        beat_schedule("")
    with pytest.raises(ValueError, match="rescue_every must be a finite number of seconds > 0"):
        beat_schedule(rescue_every=0)
    with pytest.raises(TypeError, match="relay_every must be a number of seconds, not str"):
        beat_schedule(relay_every="5")  # type: ignore[arg-type]


def test_the_relay_and_rescue_tasks_run_the_engine_and_take_no_argument() -> None:
    """chimeway.relay and chimeway.rescue report what they did; any argument is refused."""
    app = Celery("upkeep", broker="memory://", set_as_current=False)
    backend = CeleryBackend(app)
    store = SQLStore("sqlite://")
    store.create_all()
    engine = Chimeway(store, backend, {"log": LogChannel()}, relay_grace=0.0)
    backend.bind(engine)
    store.create_many([NewDelivery(channel="log", recipient="a@x.test")], now=datetime.now(UTC))
    assert "relayed 1 outbox rows" == app.tasks["chimeway.relay"].apply().get()
    assert (
        "0 lost attempts resolved, 0 deliveries requeued, 0 already pending, 0 relayed, 0 pruned"
        == app.tasks["chimeway.rescue"].apply().get()
    )
    for name in ("chimeway.relay", "chimeway.rescue"):
        result = app.tasks[name].apply(args=("x",))
        assert isinstance(result.result, InvalidJobError), name
    store.engine.dispose()


def test_the_package_names_the_core_variable_and_the_setting() -> None:
    """ENGINE_ENV is the core's CHIMEWAY_APP, and the setting's name is chimeway_engine."""
    assert (APP_VARIABLE, "chimeway_engine") == (ENGINE_ENV, ENGINE_SETTING)
