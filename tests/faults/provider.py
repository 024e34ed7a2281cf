"""The recording fake provider, the channel that talks to it, and the fault log.

Theory of operation
-------------------
Every process of a deployment (the test process for the memory backend, RQ
work horses, Celery pool children) writes to the same three append-only JSON
Lines files of one scenario run: one ``os.write`` of one line on an
``O_APPEND`` descriptor per record, so lines from many processes never
interleave and a line written just before a SIGKILL survives it.

- ``provider.jsonl``: every call the provider received, with the delivery id,
  the idempotency key, the attempt number, the step and whether the provider
  acted on it (an *effect*: it accepted the notification).
- ``faults.jsonl``: every fault a worker injected into itself, before
  injecting it, and whether it struck after the provider accepted (a
  *post-accept* fault, which allows one more effect for a provider without
  idempotency keys).
- ``jobs.jsonl``: what each ``perform()`` returned (or raised), written by
  :class:`FaultEngine` after the engine returned: what the queue is told.

What the provider does is scripted by the recipient:
``fx/<step>,<step>,.../<n>[/<anything>]`` plays step *k* on attempt *k* (the
last one repeats), so a worker in any process does what the test wrote.
The steps are :data:`STEPS`.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Final, NoReturn, Protocol
from uuid import UUID

from sqlalchemy import Engine, event

from chimeway_core.channels.base import DeliveryGuarantee
from chimeway_core.clock import Clock, SystemClock
from chimeway_core.engine import Chimeway
from chimeway_core.errors import OutcomeUnknownError
from chimeway_core.jobs import JobResult
from chimeway_core.outcomes import (
    Bounced,
    ChannelResult,
    ErrorClass,
    PermanentFailure,
    Sent,
    TemporaryFailure,
)
from chimeway_core.records import Delivery
from chimeway_core.schema import DeliveryRow
from chimeway_core.telemetry import MetaValue, TelemetryEvent

#: What a step does (the provider's side first, then the worker's).
STEPS: Final[Mapping[str, str]] = {
    "ok": "accept and answer 200",
    "slow": "take the hooks' slow time, then accept and answer 200",
    "5xx": "answer 503 without acting (a temporary failure)",
    "4xx": "answer 400 without acting (a permanent failure)",
    "bounce": "report a bounce without acting",
    "hang": "accept, then never answer (the channel's read timeout fires)",
    "drop": "accept, then drop the connection without an answer",
    "kill-pre": "the worker dies after the claim, before calling the provider",
    "kill-mid": "accept, then the worker dies during the call",
    "kill-post": "accept and answer; the worker dies after the outcome committed, before the ack",
    "pgkill": "accept and answer; the worker's database connection is terminated mid-record",
    "overrun": "accept, then the call outlives its lease before answering 200",
    "redeliver": "a duplicate job runs elsewhere while this call runs, then accept",
    "cancel-mid": "accept; an operator cancels the delivery before the answer is recorded",
    "deep": "accept and answer 200 with a response nested 5000 levels deep",
}
#: Steps whose fault strikes after the provider acted.
POST_ACCEPT: Final = frozenset({"hang", "drop", "kill-mid", "pgkill", "overrun"})
_PREFIX: Final = "fx"
# The record's statement: one CTE statement on PostgreSQL (the store's
# _pg_record_statement), the fenced delivery UPDATE elsewhere.
_RECORD_STATEMENTS: Final = ("WITH fence AS ", f"UPDATE {DeliveryRow.__tablename__} ")


def recipient(steps: Sequence[str], n: int, extra: str = "") -> str:
    """The recipient that scripts the provider: ``fx/<steps>/<n>[/<extra>]``."""
    unknown = [step for step in steps if step not in STEPS]
    if unknown or not steps:
        raise ValueError(f"unknown steps {unknown}; known: {list(STEPS)}")
    tail = f"/{extra}" if extra else ""
    return f"{_PREFIX}/{','.join(steps)}/{n}{tail}"


def steps_of(recipient_: str) -> list[str]:
    """The script of a recipient (``["4xx"]`` for one that is not a script)."""
    parts = recipient_.split("/", 3)
    if len(parts) < 3 or parts[0] != _PREFIX:
        return ["4xx"]
    return parts[1].split(",")


def step_for(delivery: Delivery) -> str:
    """The step this attempt of ``delivery`` plays."""
    steps = steps_of(delivery.recipient)
    return steps[min(max(delivery.attempt_count, 1), len(steps)) - 1]


class JsonLines:
    """An append-only JSON Lines file shared by processes: one ``write`` per record."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def append(self, record: Mapping[str, object]) -> None:
        """Append one record as one line, atomically with respect to other writers."""
        data = (json.dumps(record, separators=(",", ":"), default=str) + "\n").encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)

    def read(self) -> list[dict[str, Any]]:
        """Every complete record so far, oldest first."""
        if not self.path.exists():
            return []
        text = self.path.read_text()
        return [json.loads(line) for line in text.splitlines() if line.endswith("}")]


class RunFiles:
    """The files of one scenario run, in ``directory``."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.provider = JsonLines(directory / "provider.jsonl")
        self.faults = JsonLines(directory / "faults.jsonl")
        self.jobs = JsonLines(directory / "jobs.jsonl")
        self.telemetry = JsonLines(directory / "telemetry.jsonl")

    def fault(
        self, delivery_id: UUID | None, attempt: int | None, name: str, *, post_accept: bool
    ) -> None:
        """Record a fault about to be injected."""
        self.faults.append(
            {
                "d": None if delivery_id is None else str(delivery_id),
                "a": attempt,
                "f": name,
                "pa": post_accept,
                "pid": os.getpid(),
                "t": time.time(),
            }
        )


class Hooks(Protocol):
    """How a worker injects what the provider's script asks for, in its own idiom."""

    def kill(self) -> NoReturn:
        """End this worker the way SIGKILL does: no cleanup, no acknowledgement."""
        ...

    def sleep(self, seconds: float) -> None:
        """Let ``seconds`` pass inside the call."""
        ...

    def overrun(self, delivery: Delivery, seconds: float) -> None:
        """Keep the call going for ``seconds``, past its lease; others may act meanwhile."""
        ...

    def redeliver(self, delivery: Delivery) -> None:
        """Push a duplicate job for ``delivery`` where another worker takes it at once."""
        ...

    def cancel(self, delivery: Delivery) -> None:
        """Cancel ``delivery`` as an operator would, from outside the job."""
        ...


class RecordFault:
    """Terminates the worker's own PostgreSQL connection in the middle of a record.

    Armed by the ``pgkill`` step (per thread); fires just before this
    thread's next write of a delivery row (in ``record_attempt``, after the
    attempt row was written and before the transaction commits), through a
    separate connection, so that write fails and whatever the record wrote
    before it is only as durable as its transaction.
    """

    def __init__(self, engine: Engine, admin_url: str, files: RunFiles) -> None:
        self.admin_url = admin_url
        self.files = files
        self._armed = threading.local()
        event.listen(engine, "before_cursor_execute", self._before_execute)

    def arm(self, delivery_id: UUID, attempt: int) -> None:
        """Fire at this thread's next record."""
        self._armed.target = (delivery_id, attempt)

    def _before_execute(self, conn: Any, _cursor: Any, statement: str, *_: object) -> None:
        target = getattr(self._armed, "target", None)
        if target is None or not statement.lstrip().startswith(_RECORD_STATEMENTS):
            return
        self._armed.target = None
        import psycopg

        pid = conn.connection.dbapi_connection.info.backend_pid
        self.files.fault(target[0], target[1], "pgkill", post_accept=True)
        with psycopg.connect(self.admin_url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s, 10000)", [pid])


class ProviderChannel:
    """The channel every fault deployment uses: it plays the recipient's script.

    ``timeout`` is the read timeout a ``hang`` waits out; ``slow`` how long a
    ``slow`` or ``redeliver`` call takes; ``overrun`` how long an ``overrun``
    call takes (past the lease). Provider responses never echo the recipient
    or the payload.
    """

    exception_class = ErrorClass.TEMPORARY

    def __init__(
        self,
        files: RunFiles,
        hooks: Hooks,
        *,
        timeout: float,
        slow: float,
        overrun: float,
        guarantee: DeliveryGuarantee = DeliveryGuarantee.AT_LEAST_ONCE,
        record_fault: RecordFault | None = None,
    ) -> None:
        self.files = files
        self.hooks = hooks
        self.timeout = timeout
        self.slow = slow
        self.overrun_seconds = overrun
        self.guarantee = guarantee
        self.record_fault = record_fault
        self._lock = threading.Lock()
        self._kill_after_commit: set[UUID] = set()

    def _call(self, delivery: Delivery, key: str, step: str, *, effect: bool) -> None:
        self.files.provider.append(
            {
                "d": str(delivery.id),
                "k": key,
                "a": delivery.attempt_count,
                "s": step,
                "e": effect,
                "pid": os.getpid(),
                "t": time.time(),
            }
        )

    def take_kill_after_commit(self, delivery_id: UUID) -> bool:
        """Whether this delivery's job must die once its outcome committed (once)."""
        with self._lock:
            if delivery_id in self._kill_after_commit:
                self._kill_after_commit.discard(delivery_id)
                return True
            return False

    def send(self, delivery: Delivery, idempotency_key: str) -> ChannelResult:  # noqa: PLR0912 - one branch per step
        """Play this attempt's step; see :data:`STEPS`."""
        step = step_for(delivery)
        attempt = delivery.attempt_count
        accepted = Sent(provider_response={"id": f"msg-{delivery.id.hex[:12]}-{attempt}"})
        match step:
            case "ok":
                self._call(delivery, idempotency_key, step, effect=True)
                return accepted
            case "slow":
                self.hooks.sleep(self.slow)
                self._call(delivery, idempotency_key, step, effect=True)
                return accepted
            case "5xx":
                self._call(delivery, idempotency_key, step, effect=False)
                return TemporaryFailure("provider answered 503", provider_response={"status": 503})
            case "4xx":
                self._call(delivery, idempotency_key, step, effect=False)
                return PermanentFailure("provider answered 400", provider_response={"status": 400})
            case "bounce":
                self._call(delivery, idempotency_key, step, effect=False)
                return Bounced("provider reported a bounce", provider_response={"status": 200})
            case "hang":
                self._call(delivery, idempotency_key, step, effect=True)
                self.files.fault(delivery.id, attempt, step, post_accept=True)
                self.hooks.sleep(self.timeout)
                raise OutcomeUnknownError(f"no answer within {self.timeout} s")
            case "drop":
                self._call(delivery, idempotency_key, step, effect=True)
                self.files.fault(delivery.id, attempt, step, post_accept=True)
                raise OutcomeUnknownError("the connection dropped after the request was sent")
            case "kill-pre":
                self.files.fault(delivery.id, attempt, step, post_accept=False)
                self.hooks.kill()
            case "kill-mid":
                self._call(delivery, idempotency_key, step, effect=True)
                self.files.fault(delivery.id, attempt, step, post_accept=True)
                self.hooks.kill()
            case "kill-post":
                self._call(delivery, idempotency_key, step, effect=True)
                with self._lock:
                    self._kill_after_commit.add(delivery.id)
                return accepted
            case "pgkill":
                self._call(delivery, idempotency_key, step, effect=True)
                if self.record_fault is not None:
                    self.record_fault.arm(delivery.id, attempt)
                return accepted
            case "overrun":
                self._call(delivery, idempotency_key, step, effect=True)
                self.files.fault(delivery.id, attempt, step, post_accept=True)
                self.hooks.overrun(delivery, self.overrun_seconds)
                return accepted
            case "redeliver":
                self.files.fault(delivery.id, attempt, step, post_accept=False)
                self.hooks.redeliver(delivery)
                self._call(delivery, idempotency_key, step, effect=True)
                return accepted
            case "deep":
                self._call(delivery, idempotency_key, step, effect=True)
                deep: object = "leaf"
                for _ in range(5000):
                    deep = {"k": deep}
                return Sent(provider_response={"deep": deep})
            case "cancel-mid":
                self._call(delivery, idempotency_key, step, effect=True)
                self.files.fault(delivery.id, attempt, step, post_accept=False)
                self.hooks.cancel(delivery)
                return accepted
            case _:
                pass
        raise ValueError(f"step {step!r} did not end the call")


class FaultEngine(Chimeway):
    """The engine of every fault deployment: journals each job's end, dies on ``kill-post``.

    ``perform`` returns what the engine returned after writing it to
    ``jobs.jsonl``, except after a ``kill-post`` step, where the worker dies
    between the commit and the queue's acknowledgement. Telemetry events go
    to ``telemetry.jsonl`` (the canary checks read them).
    """

    def __init__(
        self,
        *args: Any,
        files: RunFiles,
        fault_channels: Sequence[ProviderChannel],
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.files = files
        self.fault_channels = tuple(fault_channels)
        self.telemetry.subscribe(self._telemetry)

    def _telemetry(self, event_: TelemetryEvent, meta: Mapping[str, MetaValue]) -> None:
        self.files.telemetry.append({"event": event_.value, **meta})

    def perform(self, delivery_id: UUID) -> JobResult:
        """Run the job, then die if the script says so, else journal what the queue is told."""
        try:
            result = super().perform(delivery_id)
        except Exception as error:
            self.files.jobs.append(
                {
                    "d": str(delivery_id),
                    "error": type(error).__qualname__,
                    "t": _now(self.clock),
                    "pid": os.getpid(),
                }
            )
            raise
        for channel in self.fault_channels:
            if channel.take_kill_after_commit(delivery_id):
                self.files.fault(delivery_id, None, "kill-post", post_accept=False)
                channel.hooks.kill()
        self.files.jobs.append(
            {
                "d": str(delivery_id),
                "kind": result.kind.value,
                "detail": result.detail,
                "t": _now(self.clock),
                "pid": os.getpid(),
            }
        )
        return result


def _now(clock: Clock) -> str:
    return clock.now().isoformat()


class ProcessHooks:
    """Hooks for a worker process: a real SIGKILL of itself, real sleeps.

    ``push_duplicate`` pushes a raw duplicate job (backend-specific);
    ``engine`` is set once the engine exists (for ``cancel``). A redelivery
    waits (up to ``overlap`` seconds) until another process has run the
    duplicate, so the two runs really overlap; keep it within the channel's
    timeout, or the call outlives its lease.
    """

    def __init__(
        self, push_duplicate: Callable[[UUID], None], files: RunFiles, overlap: float = 0.8
    ) -> None:
        self.push_duplicate = push_duplicate
        self.files = files
        self.overlap = overlap
        self.engine: Chimeway | None = None

    def kill(self) -> NoReturn:
        """SIGKILL this process."""
        import signal

        os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(60)
        raise SystemExit(137)  # pragma: no cover - never reached

    def sleep(self, seconds: float) -> None:
        """Really sleep."""
        time.sleep(seconds)

    def overrun(self, delivery: Delivery, seconds: float) -> None:
        """Really sleep past the lease: the rescuer and other workers go on meanwhile."""
        time.sleep(seconds)

    def redeliver(self, delivery: Delivery) -> None:
        """Push a raw duplicate of the delivery's job; wait until another process ran it."""
        mine = str(delivery.id)

        def elsewhere() -> int:
            records = self.files.jobs.read() + self.files.provider.read()
            return sum(1 for r in records if r["d"] == mine and r.get("pid") != os.getpid())

        before = elsewhere()
        self.push_duplicate(delivery.id)
        deadline = time.monotonic() + self.overlap
        while elsewhere() == before and time.monotonic() < deadline:
            time.sleep(0.02)

    def cancel(self, delivery: Delivery) -> None:
        """Cancel through this process's engine, as an operator's command would."""
        assert self.engine is not None
        self.engine.cancel(delivery.id)


def parse_time(value: str) -> datetime:
    """A timestamp written by :class:`FaultEngine`."""
    return datetime.fromisoformat(value)


#: The default clock of process deployments.
SYSTEM_CLOCK: Final = SystemClock()
