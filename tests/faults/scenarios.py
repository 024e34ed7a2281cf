"""The fault scenarios: each builds its deployment, injects its faults, and returns the report.

Every scenario takes ``deploy`` (the fixture of :mod:`tests.faults.conftest`),
the backend's name, the size ``n`` and a ``sabotage`` (protections to switch
off, for the negative controls), and returns the history checker's
:class:`~tests.faults.history.Report`. The scenario's own expectations per
delivery go to the checker as :class:`~tests.faults.history.Expect` values;
whatever else it sees that must not happen is a problem of the report.
"""

from __future__ import annotations

import collections
import contextlib
import random
import time
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any, Final
from uuid import UUID

from sqlalchemy import text
from sqlalchemy.orm import Session

from chimeway_core.errors import IllegalTransitionError
from chimeway_core.jobs import Backend
from chimeway_core.records import NewDelivery
from chimeway_core.schema import DeliveryRow
from tests.faults.app import RETRY
from tests.faults.deployments import Deployment
from tests.faults.history import SUCCEEDED, Expect, Report, in_flight_attempts
from tests.faults.provider import recipient

Deploy = Callable[..., Deployment]
MAX: Final = RETRY.max_attempts
CANCELLED: Final = Expect(ends=frozenset({("cancelled", "cancelled")}))


def spec(steps: Sequence[str], n: int, *, channel: str = "provider", **fields: Any) -> NewDelivery:
    """A delivery whose provider plays ``steps``."""
    fields.setdefault("payload", {"n": n})
    return NewDelivery(channel=channel, recipient=recipient(steps, n), max_attempts=MAX, **fields)


def ends(
    *pairs: tuple[str, str | None], attempts: int | None = None, calls: int | None = None
) -> Expect:
    """An expectation: an end among ``pairs``, exactly ``attempts``, ``calls`` calls at most."""
    return Expect(ends=frozenset(pairs), attempts=attempts, max_calls=calls)


def _calls(deployment: Deployment) -> int:
    return len(deployment.files.provider.read())


def _run(
    deployment: Deployment,
    scenario: str,
    plan: Sequence[tuple[NewDelivery, Expect]],
) -> tuple[list[UUID], dict[UUID, Expect]]:
    made = deployment.notify([item for item, _ in plan])
    expect = {delivery.id: wanted for delivery, (_, wanted) in zip(made, plan, strict=True)}
    del scenario
    return [delivery.id for delivery in made], expect


# ----------------------------------------------------------------- 1. SIGKILL


def sigkill(
    deploy: Deploy,
    backend: str,
    n: int,
    sabotage: tuple[str, ...] = (),
    timeout: float | None = None,
) -> Report:
    """SIGKILL during the call, between claim and call, and between commit and ack."""
    d = deploy(backend, sabotage=sabotage)
    d.start()
    kinds = [
        (["kill-mid", "ok"], "provider", ends(("succeeded", None), attempts=2)),
        (["kill-pre", "ok"], "provider", ends(("succeeded", None), attempts=2, calls=1)),
        (["kill-post"], "provider", ends(("succeeded", None), attempts=1, calls=1)),
        (["kill-mid"], "provider-amo", ends(("cancelled", "outcome_unknown"), attempts=1)),
    ]
    plan = [
        (spec(steps, i, channel=channel), wanted)
        for i in range(n)
        for steps, channel, wanted in [kinds[i % len(kinds)]]
    ]
    _, expect = _run(d, "sigkill", plan)
    d.drain(timeout or d.drain_timeout(n))
    return d.check("1 SIGKILL mid-call / pre-call / post-commit", expect=expect)


# ------------------------------------------------------------------ 2. poison


def poison(
    deploy: Deploy,
    backend: str,
    n: int,
    sabotage: tuple[str, ...] = (),
    timeout: float | None = None,
) -> Report:
    """A delivery that kills its worker on every attempt ends cancelled after max_attempts."""
    d = deploy(backend, sabotage=sabotage)
    d.start()
    exhausted = ends(("cancelled", "retries_exhausted"), attempts=MAX)
    plan = [(spec(["kill-mid"] if i % 2 else ["kill-pre"], i), exhausted) for i in range(n)]
    _, expect = _run(d, "poison", plan)
    d.drain(timeout or d.drain_timeout(n) + 10 * MAX)
    deaths = collections.Counter(fault["d"] for fault in d.files.faults.read())
    for delivery_id, count in deaths.items():
        if count > MAX:
            d.problem(UUID(delivery_id), f"{count} worker deaths, max_attempts is {MAX}")
    return d.check("2 poison delivery", expect=expect)


# ------------------------------------------------------------------ 3. outbox


class ProducerCrashedError(Exception):
    """The producer process died after its commit, before handing the ids to the queue."""


class CrashingBackend:
    """A backend whose enqueues never happen: the producer crashed."""

    def enqueue(self, delivery_id: UUID, *, at: Any = None) -> None:
        """Crash."""
        raise ProducerCrashedError(str(delivery_id))

    def enqueue_many(self, delivery_ids: Sequence[UUID]) -> None:
        """Crash."""
        raise ProducerCrashedError(f"{len(delivery_ids)} ids")


def outbox(
    deploy: Deploy,
    backend: str,
    n: int,
    sabotage: tuple[str, ...] = (),
    timeout: float | None = None,
) -> Report:
    """Commit, then crash before the enqueue: the relay hands every delivery over once.

    The rescuer's requeue of stranded deliveries is pushed out of reach
    (``requeue_after`` 600 s), so only the outbox can bring them back.
    """
    d = deploy(backend, sabotage=sabotage, requeue_after=600.0)
    d.start()
    producer = d.producer
    real: Backend = producer.backend
    producer.backend = CrashingBackend()
    once = ends(("succeeded", None), attempts=1, calls=1)
    expect: dict[UUID, Expect] = {}
    try:
        half = n // 2
        batch = [spec(["ok"], i) for i in range(half)]
        d.inject("producer crashed after commit (notify_many)")
        try:
            producer.notify_many(batch)
        except ProducerCrashedError:
            pass
        else:
            d.problem(None, "the crashing producer did not crash")
        for i in range(half, n):
            d.inject("producer crashed after commit (caller's transaction)")
            with Session(producer.store.engine) as session:
                made = producer.notify(
                    "provider", recipient(["ok"], i), {"n": i}, max_attempts=MAX, session=session
                )
                expect[made.id] = once
                with contextlib.suppress(ProducerCrashedError):
                    session.commit()
    finally:
        producer.backend = real
    with d.db.connect() as conn:
        for (delivery_id,) in conn.execute(text("SELECT id FROM chimeway_deliveries")):
            expect.setdefault(delivery_id, once)
    d.drain(timeout or d.drain_timeout(n))
    with d.db.connect() as conn:
        left = conn.execute(text("SELECT count(*) FROM chimeway_outbox")).scalar_one()
    if left:
        d.problem(None, f"{left} outbox rows left after every delivery ended")
    return d.check("3 crash between commit and enqueue", expect=expect, injected=n)


# -------------------------------------------------------------- 4. queue lost


def queue_lost(
    deploy: Deploy,
    backend: str,
    n: int,
    sabotage: tuple[str, ...] = (),
    timeout: float | None = None,
) -> Report:
    """Redis flushed / RabbitMQ connections dropped / memory lost, with deliveries in flight."""
    d = deploy(backend, sabotage=sabotage)
    d.start()
    kinds = [
        (["slow"], ends(("succeeded", None), attempts=1)),
        (["5xx", "ok"], ends(("succeeded", None), attempts=2)),
        (["ok"], ends(("succeeded", None), attempts=1)),
        (["5xx", "5xx", "ok"], ends(("succeeded", None), attempts=3)),
    ]
    plan = [(spec(kinds[i % 4][0], i), kinds[i % 4][1]) for i in range(n)]
    _, expect = _run(d, "queue lost", plan)
    for fraction in (4, 2):
        d.run_until(lambda f=fraction: _calls(d) >= n // f, timeout=60)
        d.lose_queue()
    d.drain(timeout or d.drain_timeout(n))
    return d.check("4 queue lost in flight", expect=expect)


# ----------------------------------------------------- 5. pg_terminate_backend


def pg_terminate(
    deploy: Deploy,
    backend: str,
    n: int,
    sabotage: tuple[str, ...] = (),
    timeout: float | None = None,
) -> Report:
    """The worker's connection is terminated mid-record, once or twice per delivery."""
    d = deploy(backend, sabotage=sabotage)
    d.start()
    plan = [
        (spec(["pgkill", "ok"], i), ends(("succeeded", None), attempts=2))
        if i % 2 == 0
        else (spec(["pgkill", "pgkill", "ok"], i), ends(("succeeded", None), attempts=3))
        for i in range(n)
    ]
    _, expect = _run(d, "pgkill", plan)
    d.drain(timeout or d.drain_timeout(n))
    return d.check("5 connection terminated at the record", expect=expect)


# --------------------------------------------------------- 6. database outage


def db_outage(
    deploy: Deploy,
    backend: str,
    n: int,
    sabotage: tuple[str, ...] = (),
    outage: float = 3.0,
    timeout: float | None = None,
) -> Report:
    """The database is unreachable for ``outage`` seconds; workers recover without a restart."""
    d = deploy(backend, sabotage=sabotage, db_proxy=True)
    d.start()
    kinds = [["slow"], ["5xx", "ok"], ["ok"]]
    plan = [(spec(kinds[i % 3], i), SUCCEEDED) for i in range(n)]
    _, expect = _run(d, "outage", plan)
    d.run_until(lambda: _calls(d) >= n // 4, timeout=60)
    proxy = d.db_proxy
    assert proxy is not None
    proxy.disable()
    d.inject("database unreachable")
    d.run_until(lambda: False, timeout=outage)
    proxy.enable()
    d.drain(timeout or d.drain_timeout(n))
    if d.restarts:
        d.problem(None, f"{d.restarts} worker processes had to be restarted")
    return d.check("6 database unreachable", expect=expect)


# ------------------------------------------------------------- 7. concurrency


def concurrency(
    deploy: Deploy,
    backend: str,
    n: int,
    sabotage: tuple[str, ...] = (),
    timeout: float | None = None,
) -> Report:
    """Duplicate jobs to several workers, a redelivery mid-run, a lease expiring mid-call.

    On RQ the job timeout is raised above the overrun on purpose (the
    documented misconfiguration): otherwise RQ ends the call at the lease.
    """
    options: dict[str, Any] = {"job_timeout": 6, "workers": 3} if backend == "rq" else {}
    d = deploy(backend, sabotage=sabotage, **options)
    d.start()
    once = ends(("succeeded", None), attempts=1, calls=1)
    # An overrun nobody took over in time (every worker busy) records its own
    # success, legitimately: one attempt or two.
    kinds = [
        (["ok"], once),
        (["redeliver"], once),
        (["overrun", "ok"], ends(("succeeded", None), calls=2)),
    ]
    plan = [(spec(kinds[i % 3][0], i), kinds[i % 3][1]) for i in range(n)]
    ids, expect = _run(d, "concurrency", plan)
    d.inject("duplicate jobs")
    d.duplicate(ids[::3], copies=5)
    d.drain(timeout or d.drain_timeout(n))
    overruns = set(ids[2::3])
    with d.db.connect() as conn:
        taken_over = sum(
            1
            for delivery_id, count in conn.execute(
                text(f"SELECT id, attempt_count FROM {DeliveryRow.__tablename__}")
            )
            if delivery_id in overruns and count == 2
        )
    if overruns and not taken_over:
        d.problem(None, "no call that outlived its lease was taken over: fencing went untested")
    return d.check("7 duplicates, redelivery, lease expiry", expect=expect)


# ------------------------------------------------------------ 8. cancel race


def cancel_race(
    deploy: Deploy,
    backend: str,
    n: int,
    sabotage: tuple[str, ...] = (),
    timeout: float | None = None,
) -> Report:
    """Cancel before the claim, during the call, and racing a send at random moments."""
    d = deploy(backend, sabotage=sabotage, realtime=True)
    d.start()
    producer = d.producer
    quarter = max(n // 4, 1)
    later = producer.clock.now() + timedelta(seconds=3)
    early = d.notify([spec(["ok"], i, scheduled_at=later) for i in range(quarter)])
    expect: dict[UUID, Expect] = {}
    for delivery in early:
        producer.cancel(delivery.id)
        d.inject("cancel before claim")
        expect[delivery.id] = ends(("cancelled", "cancelled"), attempts=0, calls=0)
    mid = d.notify([spec(["cancel-mid"], i) for i in range(quarter, 2 * quarter)])
    for delivery in mid:
        expect[delivery.id] = ends(("cancelled", "cancelled"), attempts=1, calls=1)
    racing = d.notify([spec(["slow"], i) for i in range(2 * quarter, n)])
    started = time.monotonic()
    rand = random.Random(n)
    moments = sorted((rand.uniform(0, 2.0), delivery.id) for delivery in racing)
    for moment, delivery_id in moments:
        time.sleep(max(0.0, started + moment - time.monotonic()))
        d.inject("cancel racing the send")
        try:
            producer.cancel(delivery_id)
        except IllegalTransitionError:
            expect[delivery_id] = ends(("succeeded", None), attempts=1, calls=1)
        else:
            expect[delivery_id] = ends(("cancelled", "cancelled"), calls=1)
    d.drain(timeout or d.drain_timeout(n))
    return d.check("8 cancel racing a send", expect=expect)


# ------------------------------------------------------------------ 9. SIGTERM


def sigterm(
    deploy: Deploy,
    backend: str,
    n: int,
    sabotage: tuple[str, ...] = (),
    graceful: bool = True,
    timeout: float | None = None,
) -> Report:
    """SIGTERM with calls in flight: each completes or is released; none stays in flight."""
    d = deploy(backend, sabotage=sabotage, realtime=True, slow=0.8)
    d.start()
    plan = [(spec(["slow"], i), ends(("succeeded", None), attempts=1, calls=1)) for i in range(n)]
    _, expect = _run(d, "sigterm", plan)
    if not d.run_until(lambda: in_flight_attempts(d.db) > 0, timeout=60):
        d.problem(None, "no call was in flight to shut down on")
    d.shutdown(graceful=graceful)
    left = in_flight_attempts(d.db)
    if left:
        d.problem(None, f"{left} attempts left in flight after the shutdown")
    with d.db.connect() as conn:
        leased = conn.execute(
            text(
                "SELECT count(*) FROM chimeway_deliveries "
                "WHERE lease_owner IS NOT NULL AND status IN ('ready', 'failed')"
            )
        ).scalar_one()
    if leased:
        d.problem(None, f"{leased} deliveries still leased after the shutdown")
    d.restart_after_shutdown()
    d.drain(timeout or d.drain_timeout(n))
    return d.check("9 graceful SIGTERM", expect=expect)


SCENARIOS: Final[dict[str, Callable[..., Report]]] = {
    "sigkill": sigkill,
    "poison": poison,
    "outbox": outbox,
    "queue_lost": queue_lost,
    "pg_terminate": pg_terminate,
    "db_outage": db_outage,
    "concurrency": concurrency,
    "cancel_race": cancel_race,
    "sigterm": sigterm,
}
