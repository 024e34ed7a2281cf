"""MemoryBackend: dedupe, delayed jobs in virtual time, result translation, guards."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta

import attrs
import pytest

from chimeway_backends.memory import (
    DEFAULT_QUEUE,
    JobFailure,
    MaxJobsExceededError,
    MemoryBackend,
    QueuedJob,
    RunStats,
)
from chimeway_core.clock import VirtualClock
from chimeway_core.errors import UnhandledOutcomeError
from chimeway_core.jobs import Backend, JobKind, JobResult, job_id_for
from chimeway_core.outcomes import Outcome
from chimeway_core.states import DeliveryStatus
from tests.backends.memory.fakes import ScriptedPerformer, Step

T0 = datetime(2030, 1, 1, tzinfo=UTC)
A, B, C = (uuid.UUID(int=n) for n in (1, 2, 3))


def setup() -> tuple[VirtualClock, MemoryBackend]:
    """A backend on a virtual clock at T0."""
    clock = VirtualClock(T0)
    return clock, MemoryBackend(clock)


def unhandled(delivery_id: uuid.UUID, run_at: datetime | None) -> UnhandledOutcomeError:
    """An UnhandledOutcomeError as the engine would raise it."""
    return UnhandledOutcomeError(
        delivery_id=delivery_id,
        outcome=Outcome.FAILED,
        error_class="mystery",
        status=DeliveryStatus.FAILED,
        attempt=2,
        max_attempts=5,
        run_at=run_at,
    )


def test_satisfies_the_backend_protocol() -> None:
    """MemoryBackend is a Backend."""
    backend: Backend = MemoryBackend()
    assert isinstance(backend, Backend)


def test_pending_describes_each_job() -> None:
    """pending() shows the job id, run time and enqueue time of every job."""
    _clock, backend = setup()
    backend.enqueue(A)
    backend.enqueue(B, at=T0 + timedelta(minutes=5))
    expected = [
        QueuedJob(delivery_id=A, job_id=job_id_for(A), run_at=T0, enqueued_at=T0),
        QueuedJob(
            delivery_id=B, job_id=job_id_for(B), run_at=T0 + timedelta(minutes=5), enqueued_at=T0
        ),
    ]
    assert expected == backend.pending()
    assert (True, True, False) == tuple(backend.is_enqueued(d) for d in (A, B, C))


def test_duplicate_enqueue_makes_no_second_job() -> None:
    """Enqueueing a delivery with a pending job, due or scheduled, makes no second job."""
    _clock, backend = setup()
    backend.enqueue(A)
    backend.enqueue(A)
    backend.enqueue_many([A, B, B])
    backend.enqueue(B, at=T0 + timedelta(hours=1))
    assert [A, B] == [job.delivery_id for job in backend.pending()]
    assert (2, 4) == (backend.enqueued, backend.deduplicated)


def test_earlier_enqueue_moves_the_job_earlier() -> None:
    """A new enqueue for an earlier time moves the pending job; a later one does not."""
    clock, backend = setup()
    backend.enqueue(A, at=T0 + timedelta(hours=2))
    backend.enqueue(A, at=T0 + timedelta(hours=3))
    assert [T0 + timedelta(hours=2)] == [job.run_at for job in backend.pending()]
    backend.enqueue(A, at=T0 + timedelta(hours=1))
    assert [T0 + timedelta(hours=1)] == [job.run_at for job in backend.pending()]
    performer = ScriptedPerformer(clock)
    backend.run_until_idle(performer)
    assert [(A, T0 + timedelta(hours=1))] == performer.calls


def test_naive_at_is_refused() -> None:
    """A naive run time is refused, as is an id that is not a UUID."""
    _, backend = setup()
    with pytest.raises(ValueError, match="timezone-aware"):
        backend.enqueue(A, at=datetime(2030, 1, 1))
    with pytest.raises(TypeError, match="UUID"):
        backend.enqueue(str(A))  # type: ignore[arg-type]


def test_delayed_jobs_run_in_order_and_not_early() -> None:
    """Delayed jobs run in run-time order, each exactly at its time in virtual time."""
    clock, backend = setup()
    backend.enqueue(C, at=T0 + timedelta(seconds=30))
    backend.enqueue(A, at=T0 + timedelta(seconds=10))
    backend.enqueue(B)
    performer = ScriptedPerformer(clock)
    stats = backend.run_until_idle(performer)
    expected = [(B, T0), (A, T0 + timedelta(seconds=10)), (C, T0 + timedelta(seconds=30))]
    assert expected == performer.calls
    assert RunStats(jobs_run=3, acks=3) == stats
    assert [] == backend.pending()


def test_equal_times_run_in_enqueue_order() -> None:
    """Jobs due at the same time run first-in, first-out."""
    clock, backend = setup()
    ids = [uuid.UUID(int=n) for n in range(10, 0, -1)]
    backend.enqueue_many(ids)
    performer = ScriptedPerformer(clock)
    backend.run_until_idle(performer)
    assert ids == performer.called_ids


def test_run_due_does_not_move_time() -> None:
    """run_due runs only what is due now and leaves the rest pending."""
    clock, backend = setup()
    backend.enqueue(A)
    backend.enqueue(B, at=T0 + timedelta(seconds=1))
    performer = ScriptedPerformer(clock)
    assert RunStats(jobs_run=1, acks=1) == backend.run_due(performer)
    assert ([A], [B], T0) == (
        performer.called_ids,
        [job.delivery_id for job in backend.pending()],
        clock.now(),
    )


def test_retry_and_defer_reenqueue_at_run_at() -> None:
    """RETRY and DEFER run the delivery again at the run_at they carry."""
    clock, backend = setup()
    performer = ScriptedPerformer(
        clock,
        {A: [(JobKind.RETRY, timedelta(seconds=2)), (JobKind.DEFER, timedelta(hours=8))]},
    )
    backend.enqueue(A)
    stats = backend.run_until_idle(performer)
    expected_calls = [
        (A, T0),
        (A, T0 + timedelta(seconds=2)),
        (A, T0 + timedelta(seconds=2, hours=8)),
    ]
    assert expected_calls == performer.calls
    assert RunStats(jobs_run=3, acks=1, retries=1, defers=1) == stats


def test_unhandled_outcome_is_recorded_and_rescheduled() -> None:
    """UnhandledOutcomeError is recorded and the job runs again at its run_at."""
    clock, backend = setup()
    error = unhandled(A, T0 + timedelta(minutes=1))
    performer = ScriptedPerformer(clock, {A: [error]})
    backend.enqueue(A)
    stats = backend.run_until_idle(performer)
    assert [(A, T0), (A, T0 + timedelta(minutes=1))] == performer.calls
    assert [JobFailure(delivery_id=A, error=error, at=T0)] == backend.failures
    assert error is backend.failures[0].error
    assert RunStats(jobs_run=2, acks=1, failures=1) == stats


def test_unhandled_outcome_without_run_at_is_dropped() -> None:
    """With no run_at the engine scheduled nothing: the job is recorded and not rerun."""
    clock, backend = setup()
    performer = ScriptedPerformer(clock, {A: [unhandled(A, None)]})
    backend.enqueue(A)
    backend.run_until_idle(performer)
    assert ([A], []) == (performer.called_ids, backend.pending())


def test_fail_fast_reraises_after_rescheduling() -> None:
    """fail_fast re-raises the unhandled outcome, with the job already rescheduled."""
    clock, backend = setup()
    error = unhandled(A, T0 + timedelta(minutes=1))
    backend.enqueue(A)
    with pytest.raises(UnhandledOutcomeError) as caught:
        backend.run_until_idle(ScriptedPerformer(clock, {A: [error]}), fail_fast=True)
    assert error is caught.value
    assert [T0 + timedelta(minutes=1)] == [job.run_at for job in backend.pending()]


def test_crash_is_retried_after_a_fixed_delay() -> None:
    """Any other exception is recorded and the job runs again after error_retry_delay."""
    clock = VirtualClock(T0)
    backend = MemoryBackend(clock, error_retry_delay=timedelta(seconds=7))
    crash = RuntimeError("database is down")
    performer = ScriptedPerformer(clock, {A: [crash]})
    backend.enqueue(A)
    backend.run_until_idle(performer)
    assert [(A, T0), (A, T0 + timedelta(seconds=7))] == performer.calls
    assert [crash] == [failure.error for failure in backend.failures]


def test_crash_with_fail_fast_reraises() -> None:
    """fail_fast re-raises a crash too, leaving the job pending."""
    clock, backend = setup()
    backend.enqueue(A)
    with pytest.raises(RuntimeError, match="boom"):
        backend.run_until_idle(
            ScriptedPerformer(clock, {A: [RuntimeError("boom")]}), fail_fast=True
        )
    assert backend.is_enqueued(A)


def test_non_result_is_a_failure() -> None:
    """A performer returning something other than a JobResult is recorded as a TypeError."""

    class Broken:
        def perform(self, delivery_id: uuid.UUID) -> object:
            return "ok"

    _clock, backend = setup()
    backend.enqueue(A)
    with pytest.raises(TypeError, match="not a JobResult"):
        backend.run_until_idle(Broken(), fail_fast=True)  # type: ignore[arg-type]


def test_max_jobs_guard() -> None:
    """A performer that retries forever trips max_jobs with a clear error."""
    clock, backend = setup()
    forever: list[Step] = [(JobKind.RETRY, timedelta(seconds=1))] * 1000
    backend.enqueue(A)
    with pytest.raises(MaxJobsExceededError) as caught:
        backend.run_until_idle(ScriptedPerformer(clock, {A: forever}), max_jobs=50)
    assert (50, [A]) == (caught.value.jobs_run, [j.delivery_id for j in caught.value.pending])
    assert "max_jobs=50" in str(caught.value)
    assert str(A) in str(caught.value)


def test_max_jobs_exactly_enough() -> None:
    """Running exactly max_jobs jobs and then going idle is not an error."""
    clock, backend = setup()
    backend.enqueue_many([A, B, C])
    assert RunStats(jobs_run=3, acks=3) == backend.run_until_idle(
        ScriptedPerformer(clock), max_jobs=3
    )


def test_enqueue_during_perform_waits_for_the_running_job() -> None:
    """A job enqueued for a delivery while it runs is kept and runs after it."""
    clock, backend = setup()
    performer = ScriptedPerformer(clock)
    seen: list[bool] = []

    def enqueue_again(delivery_id: uuid.UUID) -> None:
        if not seen:
            seen.append(backend.is_enqueued(delivery_id))
            backend.enqueue(delivery_id)

    performer.before_return = enqueue_again
    backend.enqueue(A)
    backend.run_until_idle(performer)
    assert ([False], [A, A]) == (seen, performer.called_ids)


def test_idle_means_nothing_running_and_nothing_due() -> None:
    """idle() is false while a job is due or running, true with only later jobs pending."""
    clock, backend = setup()
    assert backend.idle()
    backend.enqueue(A, at=T0 + timedelta(minutes=5))
    assert backend.idle()
    assert not backend.idle(T0 + timedelta(minutes=5))
    backend.enqueue(B)
    assert not backend.idle()
    performer = ScriptedPerformer(clock)
    seen: list[bool] = []
    performer.before_return = lambda _delivery_id: seen.append(backend.idle())
    backend.run_due(performer)
    assert ([False], [B], [A]) == (
        seen,
        performer.called_ids,
        [job.delivery_id for job in backend.pending()],
    )
    assert backend.idle()


def test_stats_accumulate_across_runs() -> None:
    """backend.stats counts every run; each run returns only its own counts."""
    clock, backend = setup()
    performer = ScriptedPerformer(clock)
    backend.enqueue(A)
    backend.run_until_idle(performer)
    backend.enqueue(B)
    assert RunStats(jobs_run=1, acks=1) == backend.run_until_idle(performer)
    assert RunStats(jobs_run=2, acks=2) == backend.stats


@pytest.mark.parametrize(
    ("arguments", "error", "message"),
    [
        ({"clock": 5}, TypeError, "clock must have now()"),
        ({"error_retry_delay": 10}, TypeError, "error_retry_delay must be a timedelta"),
        ({"error_retry_delay": timedelta(seconds=-1)}, ValueError, "error_retry_delay"),
    ],
)
def test_a_wrong_argument_is_refused_by_name(
    arguments: dict[str, object], error: type[Exception], message: str
) -> None:
    """MemoryBackend names a clock without now() and a retry delay that is no timedelta >= 0."""
    with pytest.raises(error, match=re.escape(message)):
        MemoryBackend(**arguments)  # type: ignore[arg-type]


# ------------------------------------------------------------------------ queues


def _where(backend: MemoryBackend) -> dict[uuid.UUID, str]:
    return {job.delivery_id: job.queue for job in backend.pending()}


def test_jobs_go_to_named_queues_and_a_pending_job_stays_on_its_own() -> None:
    """queue= picks the queue; a second enqueue, on any queue, only moves the job earlier."""
    _clock, backend = setup()
    backend.enqueue(A, at=T0 + timedelta(minutes=5), queue="sms")
    backend.enqueue_many([B], queue="bulk")
    backend.enqueue(C)
    backend.enqueue(A, queue="bulk")  # earlier, elsewhere: moves earlier, stays on "sms"
    assert {A: "sms", B: "bulk", C: DEFAULT_QUEUE} == _where(backend)
    assert T0 == next(job.run_at for job in backend.pending() if job.delivery_id == A)
    assert (3, 1) == (backend.enqueued, backend.deduplicated)


def test_a_worker_serves_its_queues_in_the_order_given() -> None:
    """Given queues, the first that has a due job goes first, as in RQ; unnamed queues wait."""
    clock, backend = setup()
    performer = ScriptedPerformer(clock)
    backend.enqueue(A, queue="low")
    backend.enqueue(B, queue="high")
    backend.enqueue(C, queue="other")
    backend.run_until_idle(performer, queues=["high", "low"])
    assert [B, A] == performer.called_ids
    assert {C: "other"} == _where(backend)
    assert backend.idle(queues=["high", "low"])
    assert not backend.idle()
    backend.run_until_idle(performer)
    assert [B, A, C] == performer.called_ids


def test_without_queues_the_earliest_job_of_any_queue_goes_first() -> None:
    clock, backend = setup()
    performer = ScriptedPerformer(clock)
    backend.enqueue(A, at=T0 + timedelta(seconds=2), queue="x")
    backend.enqueue(B, at=T0 + timedelta(seconds=1), queue="y")
    backend.enqueue(C, at=T0 + timedelta(seconds=3))
    backend.run_until_idle(performer)
    assert [B, A, C] == performer.called_ids


def test_a_retry_goes_to_the_results_queue_and_a_crash_back_to_its_own() -> None:
    """RETRY/DEFER name their queue (the engine's route); a crashed job returns where it was."""
    clock, backend = setup()

    class Routed(ScriptedPerformer):
        def perform(self, delivery_id: uuid.UUID) -> JobResult:
            result = super().perform(delivery_id)
            return attrs.evolve(result, queue="sms") if result.kind is not JobKind.ACK else result

    performer = Routed(
        clock, {A: [(JobKind.RETRY, timedelta(seconds=5))], B: [RuntimeError("database down")]}
    )
    backend.enqueue(A)
    backend.enqueue(B, queue="bulk")
    backend.run_due(performer)
    assert {A: "sms", B: "bulk"} == _where(backend)
    backend.enqueue(C, queue="other")
    backend.run_due(performer, queues=["other"])
    assert [A, B, C] == performer.called_ids
    backend.enqueue(C, queue="other")
    performer.scripts[C].append(unhandled_on(C, T0 + timedelta(seconds=9), "sms"))
    with pytest.raises(UnhandledOutcomeError):
        backend.run_due(performer, queues=["other"], fail_fast=True)
    assert "sms" == _where(backend)[C]


def unhandled_on(delivery_id: uuid.UUID, run_at: datetime, queue: str) -> UnhandledOutcomeError:
    """An UnhandledOutcomeError whose next run belongs on ``queue``."""
    error = unhandled(delivery_id, run_at)
    error.queue = queue
    return error


@pytest.mark.parametrize("queue", ["", 3])
def test_a_queue_name_must_be_a_non_empty_str(queue: object) -> None:
    _clock, backend = setup()
    with pytest.raises(ValueError, match="queue must be a non-empty str or None"):
        backend.enqueue(A, queue=queue)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="queue must be a non-empty str or None"):
        backend.enqueue_many([A], queue=queue)  # type: ignore[arg-type]
    assert [] == backend.pending()


@pytest.mark.parametrize("queues", ["sms", [], [""]])
def test_the_queues_a_worker_serves_are_a_non_empty_list_of_names(queues: object) -> None:
    clock, backend = setup()
    with pytest.raises(ValueError, match="queue"):
        backend.run_due(ScriptedPerformer(clock), queues=queues)  # type: ignore[arg-type]
