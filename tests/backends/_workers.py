"""What the tests of real worker processes share across backends (Celery, Dramatiq).

Each backend's ``workers.py`` starts its own command on the scripted app
(:mod:`tests.backends.scripted_app`); here are the parts that do not depend
on the queue: the setup of the app's directory, its environment and call
log, starting and stopping a worker's process group, bounded waits, and the
two checks every backend's worker tests make (a mixed load ends as
scripted; SIGKILLs mid-call lose nothing and never send twice).
"""

from __future__ import annotations

import collections
import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final
from uuid import UUID

import attrs
import pytest

import chimeway_backends
from chimeway_core import DeliveryStatus, NewDelivery, Outcome
from chimeway_core.engine import Chimeway
from chimeway_core.records import Delivery
from chimeway_core.store import SQLStore

SRC: Final = Path(chimeway_backends.__file__).resolve().parents[1]
#: The repository root, where ``tests`` imports from (not SRC.parent: chimeway
#: may be installed, as in the nox sessions, with SRC its site-packages).
ROOT: Final = Path(__file__).resolve().parents[2]
APP_MODULE: Final = "chimeway_worker_app"
#: ``scripted_app.RETRY.max_attempts`` (that module only imports inside a worker).
MAX_ATTEMPTS: Final = 3
#: How long any wait for a worker may take before the test fails.
IDLE_TIMEOUT: Final = 60.0
#: recipient prefix -> (status, reason, attempts) every such delivery must end with.
EXPECTED: Final = {
    "ok": (DeliveryStatus.SUCCEEDED, None, 1),
    "temp2": (DeliveryStatus.SUCCEEDED, None, 3),
    "perm": (DeliveryStatus.CANCELLED, "permanent_failure", 1),
    "bounce": (DeliveryStatus.CANCELLED, "bounced", 1),
    "exhaust": (DeliveryStatus.CANCELLED, "retries_exhausted", MAX_ATTEMPTS),
}


@attrs.frozen
class BrokerSpec:
    """One broker for one test: which service (``redis`` or ``rabbitmq``), its URL, a queue."""

    name: str
    url: str
    queue: str


def redis_db_url(db: int) -> str:
    """The tests' Redis URL pointed at database ``db``."""
    from tests.services import REDIS_URL

    return f"{REDIS_URL.rsplit('/', 1)[0]}/{db}"


def wait_until(
    check: Callable[[], bool], *, timeout: float = IDLE_TIMEOUT, what: str = "a condition"
) -> None:
    """Poll ``check`` every 50 ms until true; fail the test naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.05)


@attrs.define
class Call:
    """One line of the scripted channel's ``calls.log``."""

    delivery_id: UUID
    idempotency_key: str
    attempt: int
    pid: int


@attrs.define
class ScriptedSetup:
    """Where a worker's app, files and ledger are; a backend's ``WorkerSetup`` adds its queue.

    ``broker`` is the backend's test broker (its ``url`` and ``queue``).
    """

    broker: BrokerSpec
    workdir: Path
    database_url: str

    @property
    def log(self) -> Path:
        """The workers' combined stdout and stderr."""
        return self.workdir / "worker.log"

    @property
    def markers(self) -> Path:
        """Where the channel writes a marker before it sleeps or dies."""
        return self.workdir / "markers"

    def backend_env(self) -> dict[str, str]:
        """What the backend's ``worker_app.py`` reads beyond the scripted app's variables."""
        return {}

    def env(self, **extra: str) -> dict[str, str]:
        """The environment the worker app reads."""
        return {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(self.workdir), str(SRC), str(ROOT)]),
            "CHIMEWAY_TEST_DIR": str(self.workdir),
            "CHIMEWAY_TEST_QUEUE": self.broker.queue,
            "CHIMEWAY_TEST_BROKER": self.broker.url,
            "CHIMEWAY_TEST_DB": self.database_url,
            **self.backend_env(),
            **extra,
        }

    def calls(self) -> list[Call]:
        """Every call the scripted channel logged, in order."""
        path = self.workdir / "calls.log"
        if not path.exists():
            return []
        calls = []
        for line in path.read_text().splitlines():
            delivery_id, key, attempt, pid = line.split()
            calls.append(Call(UUID(delivery_id), key, int(attempt), int(pid)))
        return calls

    def start(self, command: Sequence[str], **env: str) -> subprocess.Popen[bytes]:
        """Start ``command`` in its own process group here, its output appended to the log."""
        with self.log.open("ab") as log:
            return subprocess.Popen(
                list(command),
                cwd=self.workdir,
                env=self.env(**env),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def start_ready(
        self, command: Sequence[str], ready: Callable[[str], bool], what: str, **env: str
    ) -> subprocess.Popen[bytes]:
        """Start ``command`` and wait until ``ready(log text)``; fail if it exits first."""
        process = self.start(command, **env)
        try:
            wait_until(lambda: ready(self.log.read_text()) or process.poll() is not None, what=what)
            assert process.poll() is None, self.log.read_text()[-3000:]
        except BaseException:
            stop(process)
            raise
        return process


def copy_app(source: Path, workdir: Path) -> None:
    """Copy a backend's ``worker_app.py`` into ``workdir`` as :data:`APP_MODULE`."""
    workdir.mkdir(parents=True, exist_ok=True)
    shutil.copy(source, workdir / f"{APP_MODULE}.py")


def stop(process: subprocess.Popen[bytes]) -> None:
    """Warm shutdown (SIGTERM), then SIGKILL to the worker's own process group after 30 s."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=30)
    if process.poll() is None or _group_alive(process.pid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def wait_all_terminal(store: SQLStore, *, timeout: float = 90.0) -> None:
    """Poll the ledger until no delivery is live."""
    wait_until(
        lambda: store.oldest_non_terminal() is None,
        timeout=timeout,
        what="every delivery to be terminal",
    )


def specs(kinds: Sequence[str]) -> list[NewDelivery]:
    """One scripted delivery per kind (recipient ``<kind>-<n>``)."""
    return [
        NewDelivery(
            channel="scripted",
            recipient=f"{kind}-{n}",
            payload={"n": n},
            notification_key="test",
            max_attempts=MAX_ATTEMPTS,
        )
        for n, kind in enumerate(kinds)
    ]


def mixed_kinds(count: int) -> list[str]:
    """``count`` kinds of :data:`EXPECTED`, in turn."""
    return [list(EXPECTED)[n % len(EXPECTED)] for n in range(count)]


def assert_mixed_ends(
    deliveries: Sequence[Delivery], store: SQLStore, calls: Sequence[Call]
) -> None:
    """Each delivery ended as :data:`EXPECTED` says, with as many calls as attempts."""
    made = collections.Counter(call.delivery_id for call in calls)
    actual: collections.Counter[tuple[object, ...]] = collections.Counter()
    for delivery in deliveries:
        after = store.get(delivery.id)
        assert after is not None
        kind = delivery.recipient.split("-", 1)[0]
        actual[(kind, after.status, after.reason, after.attempt_count, made[delivery.id])] += 1
    each = len(deliveries) // len(EXPECTED)
    expected = collections.Counter(
        {(kind, *shape, shape[2]): each for kind, shape in EXPECTED.items()}
    )
    assert expected == actual


def markers(directory: Path) -> list[tuple[str, int, int]]:
    """The channel's markers: (delivery id, attempt, pid) of each call that slept or died."""
    if not directory.exists():
        return []
    found = []
    for path in directory.iterdir():
        delivery_id, attempt, pid = path.name.split(".")
        found.append((delivery_id, int(attempt), int(pid)))
    return found


def kill_mid_call(
    store: SQLStore, deliveries: Sequence[Delivery], directory: Path, *, timeout: float
) -> set[tuple[str, int, int]]:
    """SIGKILL each process a ``killonce`` delivery's first call sleeps in, until all end.

    Returns the markers of the calls killed.
    """
    kinds = {str(d.id): d.recipient.split("-", 1)[0] for d in deliveries}
    killed: set[tuple[str, int, int]] = set()
    deadline = time.monotonic() + timeout
    while store.oldest_non_terminal() is not None:
        assert time.monotonic() < deadline, f"not terminal after {timeout} s; killed {len(killed)}"
        for marker in markers(directory):
            delivery_id, attempt, pid = marker
            if marker in killed or kinds[delivery_id] != "killonce" or attempt != 1:
                continue
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            killed.add(marker)
        time.sleep(0.05)
    return killed


def assert_kills_lost_nothing(
    producer: Chimeway, deliveries: Sequence[Delivery], calls: Sequence[Call], directory: Path
) -> None:
    """One key per delivery, at most one success; killed once: unknown, then sent.

    A ``killalways`` delivery is cancelled after exactly MAX_ATTEMPTS deaths;
    any other ends with one success.
    """
    for delivery in deliveries:
        history = producer.get(delivery.id)
        kind = delivery.recipient.split("-", 1)[0]
        outcomes = [attempt.outcome for attempt in history.attempts]
        keys = {call.idempotency_key for call in calls if call.delivery_id == delivery.id}
        assert {delivery.idempotency_key} == keys
        assert outcomes.count(Outcome.SUCCEEDED) <= 1
        if kind == "killonce":
            assert (DeliveryStatus.SUCCEEDED, [Outcome.UNKNOWN, Outcome.SUCCEEDED]) == (
                history.delivery.status,
                outcomes,
            )
        elif kind == "killalways":
            deaths = [m for m in markers(directory) if m[0] == str(delivery.id)]
            assert (DeliveryStatus.CANCELLED, "retries_exhausted", MAX_ATTEMPTS) == (
                history.delivery.status,
                history.delivery.reason,
                len(deaths),
            )
        else:
            assert [Outcome.SUCCEEDED] == outcomes
