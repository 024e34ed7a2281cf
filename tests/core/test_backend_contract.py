"""The one backend contract: checks once, translates broker errors, adopts duck-typed backends."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from uuid import UUID

import pytest

from chimeway_core.backend import Backend, Enqueued, as_backend
from chimeway_core.errors import BackendUnavailableError, InvalidJobError
from chimeway_core.jobs import JobKind, JobResult
from chimeway_core.memory import MemoryBackend
from chimeway_core.worker import EngineSource, Verdict, run_job

A = uuid.UUID("00000000-0000-4000-8000-00000000000a")


class _BrokerDownError(Exception):
    """What a broker client raises when its service does not answer."""


class _Recording(Backend):
    """A backend that records what its hooks are given, or fails like a broker that is down."""

    name = "recording"
    unavailable = (_BrokerDownError,)
    default_queue = "main"

    def __init__(self, *, down: bool = False) -> None:
        self.down = down
        self.calls: list[tuple[object, ...]] = []

    def _enqueue(self, delivery_id: UUID, at: datetime | None, queue: str) -> None:
        self._maybe_fail()
        self.calls.append(("one", delivery_id, at, queue))

    def _enqueue_many(self, delivery_ids: list[UUID], queue: str) -> None:
        self._maybe_fail()
        self.calls.append(("many", tuple(delivery_ids), queue))

    def _ping(self) -> None:
        self._maybe_fail()

    def _service(self) -> str:
        return "the recording broker"

    def _maybe_fail(self) -> None:
        if self.down:
            raise _BrokerDownError("connection refused")


class _Duck:
    """A backend written before the base class: no queue parameter, no base."""

    def __init__(self) -> None:
        self.calls: list[tuple[object, ...]] = []

    def enqueue(self, delivery_id: UUID, *, at: datetime | None = None) -> None:
        self.calls.append(("one", delivery_id, at))

    def enqueue_many(self, delivery_ids: Sequence[UUID]) -> None:
        self.calls.append(("many", tuple(delivery_ids)))


def test_the_public_methods_check_once_and_hand_the_hooks_clean_values() -> None:
    """A default queue for None, at in UTC, ids checked; an empty batch reaches no hook."""
    backend = _Recording()
    at = datetime(2030, 1, 1, 12, tzinfo=UTC)
    backend.enqueue(A, at=at)
    backend.enqueue_many([A], queue="bulk")
    backend.enqueue_many([])
    assert [("one", A, at, "main"), ("many", (A,), "bulk")] == backend.calls
    with pytest.raises(TypeError, match="delivery_id must be a UUID, not str"):
        backend.enqueue(str(A))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at must be a timezone-aware datetime"):
        backend.enqueue(A, at=datetime(2030, 1, 1))
    with pytest.raises(ValueError, match="queue must be a non-empty str or None"):
        backend.enqueue_many([A], queue="")


def test_a_broker_that_does_not_answer_is_one_error_naming_backend_and_service() -> None:
    """The adapter's 'unavailable' types leave as BackendUnavailableError, the cause kept."""
    backend = _Recording(down=True)
    for call in (lambda: backend.enqueue(A), lambda: backend.enqueue_many([A]), backend.ping):
        with pytest.raises(BackendUnavailableError) as raised:
            call()
        assert ("recording", "the recording broker", "connection refused") == (
            raised.value.backend,
            raised.value.service,
            raised.value.detail,
        )
        assert "cannot reach the recording broker: connection refused" == str(raised.value)
        assert isinstance(raised.value.__cause__, _BrokerDownError)


def test_a_duck_typed_backend_is_recognised_and_adopted_once() -> None:
    """isinstance() holds as for the old protocol; queue= is passed only when asked for."""
    duck = _Duck()
    assert isinstance(duck, Backend)
    assert not isinstance(object(), Backend)
    adopted = as_backend(duck)
    assert (False, (), "default") == (
        adopted.follows_routes,
        adopted.interrupts,
        adopted.default_queue,
    )
    adopted.enqueue(A)
    adopted.enqueue_many([A])
    assert [("one", A, None), ("many", (A,))] == duck.calls
    adopted.ping()  # nothing to ask
    memory = MemoryBackend()
    assert memory is as_backend(memory)
    assert memory.follows_routes
    with pytest.raises(TypeError, match="backend must have enqueue"):
        as_backend(object())  # type: ignore[arg-type]


class _Performer:
    """Returns or raises what it is given, and counts its calls."""

    def __init__(self, result: JobResult) -> None:
        self.result = result
        self.calls = 0

    def perform(self, delivery_id: UUID) -> JobResult:
        self.calls += 1
        return self.result


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [((), {}), ((str(A), str(A)), {}), ((str(A),), {"x": 1}), ((3,), {}), (("nope",), {})],
)
def test_a_job_that_is_not_one_delivery_id_is_refused_before_the_engine(
    args: tuple[object, ...], kwargs: dict[str, object]
) -> None:
    """InvalidJobError, and the engine source is never resolved."""
    source = EngineSource("nowhere.at.all:engine")
    with pytest.raises(InvalidJobError):
        run_job(source, args, kwargs)
    assert source.current is None


def test_a_job_becomes_a_verdict() -> None:
    """ACK is done; RETRY and DEFER run again at run_at on the result's queue."""
    ack = _Performer(JobResult(delivery_id=A, kind=JobKind.ACK, detail="sent"))
    assert (Verdict.ACK, "ack: sent") == (
        run_job(ack, [str(A)], {}).verdict,
        run_job(ack, [str(A)], {}).summary,
    )
    at = datetime(2030, 1, 1, tzinfo=UTC)
    retry = _Performer(
        JobResult(delivery_id=A, kind=JobKind.RETRY, run_at=at, detail="busy", queue="slow")
    )
    verdict = run_job(retry, [str(A)], {})
    assert (Verdict.AGAIN, at, "slow", f"retry: busy, at {at.isoformat()}") == (
        verdict.verdict,
        verdict.run_at,
        verdict.queue,
        verdict.summary,
    )


def test_a_backend_that_returns_nothing_did_what_it_was_asked() -> None:
    """Hooks returning None (backends written before Enqueued): queued, or scheduled for later."""
    later = datetime(2999, 1, 1, tzinfo=UTC)
    recording, duck = _Recording(), as_backend(_Duck())
    for backend in (recording, duck):
        assert Enqueued.QUEUED == backend.enqueue(A)
        assert Enqueued.SCHEDULED == backend.enqueue(A, at=later)
        assert [Enqueued.QUEUED, Enqueued.QUEUED] == backend.enqueue_many([A, A])
    assert [] == recording.enqueue_many([])


def test_a_hook_that_returns_something_else_is_refused_by_name() -> None:
    """An outcome that is no Enqueued, or one too few, is the backend's bug, said as such."""

    class _Confused(_Recording):
        def _enqueue(self, delivery_id: UUID, at: datetime | None, queue: str) -> None:
            return "queued"  # type: ignore[return-value]

        def _enqueue_many(self, delivery_ids: list[UUID], queue: str) -> list[Enqueued]:  # type: ignore[override]
            return [Enqueued.QUEUED]

    backend = _Confused()
    with pytest.raises(
        TypeError, match="_Confused's enqueue hooks return Enqueued or None, not str"
    ):
        backend.enqueue(A)
    with pytest.raises(TypeError, match=r"_enqueue_many returned 1 outcomes for 2 deliveries"):
        backend.enqueue_many([A, A])
