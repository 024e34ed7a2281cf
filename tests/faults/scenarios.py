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
import logging
import random
import secrets
import time
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any, Final
from uuid import UUID

from sqlalchemy import text
from sqlalchemy.orm import Session

from chimeway_core.errors import ChimewayError, IllegalTransitionError
from chimeway_core.jobs import Backend
from chimeway_core.records import NewDelivery
from chimeway_core.schema import DeliveryRow
from tests.faults.app import RETRY
from tests.faults.deployments import FOREIGN_CANARY, Deployment
from tests.faults.history import SUCCEEDED, Expect, Report, in_flight_attempts
from tests.faults.provider import recipient

Deploy = Callable[..., Deployment]
MAX: Final = RETRY.max_attempts


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


def _notify(
    deployment: Deployment, plan: Sequence[tuple[NewDelivery, Expect]]
) -> tuple[list[UUID], dict[UUID, Expect]]:
    """Notify the plan's deliveries; return their ids and what each is expected to end as."""
    made = deployment.notify([item for item, _ in plan])
    expect = {delivery.id: wanted for delivery, (_, wanted) in zip(made, plan, strict=True)}
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
    _, expect = _notify(d, plan)
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
    _, expect = _notify(d, plan)
    d.drain(timeout or d.drain_timeout(n * MAX))  # a run, and a worker death, per attempt
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
    _, expect = _notify(d, plan)
    for fraction in (4, 2):

        def far_enough(fraction: int = fraction) -> bool:
            return _calls(d) >= n // fraction

        d.run_until(far_enough, timeout=60)
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
    _, expect = _notify(d, plan)
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
    _, expect = _notify(d, plan)
    d.run_until(lambda: _calls(d) >= n // 4, timeout=60)
    proxy = d.db_proxy
    assert proxy is not None
    dropped_before = proxy.dropped
    proxy.disable()
    d.inject("database unreachable", post_accept=True)
    if proxy.dropped == dropped_before:
        d.problem(None, "the outage cut no database connection: the workers bypassed the proxy")
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
    options: dict[str, Any] = {
        "rq": {"job_timeout": 6, "workers": 4},
        "celery-redis": {"workers": 2},
        "celery-rabbitmq": {"workers": 2},
        "dramatiq-rabbitmq": {"workers": 3},
    }.get(backend, {})
    d = deploy(backend, sabotage=sabotage, **options)
    d.start()
    once = ends(("succeeded", None), attempts=1, calls=1)
    # First duplicates and redeliveries, with workers to spare; then the
    # overruns, each holding a worker past its lease.
    kinds = [(["ok"], once), (["redeliver"], once)]
    plan = [(spec(kinds[i % 2][0], i), kinds[i % 2][1]) for i in range(n - n // 3)]
    ids, expect = _notify(d, plan)
    d.inject("duplicate jobs")
    d.duplicate(ids[::2], copies=5)
    d.drain(timeout or d.drain_timeout(n))
    # An overrun nobody took over in time (every worker busy) records its own
    # success, legitimately: one attempt or two.
    plan = [
        (spec(["overrun", "ok"], i), ends(("succeeded", None), calls=2))
        for i in range(n - n // 3, n)
    ]
    overruns, more = _notify(d, plan)
    expect |= more
    d.drain(timeout or d.drain_timeout(n))
    with d.db.connect() as conn:
        taken_over = sum(
            1
            for delivery_id, count in conn.execute(
                text(f"SELECT id, attempt_count FROM {DeliveryRow.__tablename__}")
            )
            if delivery_id in set(overruns) and count == 2
        )
    if overruns and not taken_over:
        d.problem(None, "no call that outlived its lease was taken over: fencing went untested")
    redelivered = {str(i) for i in ids[1::2]}
    overlapped = {
        job["d"]
        for job in d.files.jobs.read()
        if job["d"] in redelivered and job.get("detail") == "claimed by another worker"
    }
    if redelivered and not overlapped:
        d.problem(None, "no redelivery overlapped the first run: the lease went untested")
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
    _, expect = _notify(d, plan)
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


# ------------------------------------------------------------- 10. hostile input

#: SQL metacharacters, quoting and placeholder syntax, for every string field.
SQL_TEXTS: Final = (
    "'; DROP TABLE chimeway_deliveries; --",
    '" OR 1=1 --',
    "\\'; SELECT pg_sleep(10); --",
    "$$; DELETE FROM chimeway_outbox; $$",
    "%s %(x)s {0} ?",
    "Robert'); TRUNCATE chimeway_delivery_journal CASCADE;--",
)
#: How deep a payload that must be accepted is nested.
NESTED_OK: Final = 50


def _nested(depth: int, leaf: object) -> object:
    value = leaf
    for level in range(depth):
        value = {"k": value} if level % 2 else [value]
    return value


def _refused_inputs(canary: str) -> list[tuple[str, dict[str, Any]]]:
    """Inputs ``notify`` must refuse with a ChimewayError, writing nothing."""
    big = "x" * (300 * 1024)
    return [
        ("oversized payload", {"payload": {"blob": big, "secret": canary}}),
        ("payload nested 100000 deep", {"payload": _nested(100_000, canary)}),
        ("dict payload nested 995 deep", {"payload": _nested_dicts(995, canary)}),
        ("NUL in the recipient", {"recipient": f"fx/ok/0/{canary}\x00@example.com"}),
        ("NUL in a payload string", {"payload": {"secret": f"{canary}\x00"}}),
        ("NUL in a payload key", {"payload": {f"{canary}\x00": 1}}),
        ("NUL in the idempotency key", {"idempotency_key": f"key\x00{canary}"}),
        ("lone surrogate in the recipient", {"recipient": f"fx/ok/0/{canary}\udcff"}),
        ("lone surrogate in metadata", {"metadata": {"note": f"{canary}\ud800"}}),
        ("invalid UTF-8 bytes in the payload", {"payload": {"raw": b"\xff\xfe" + canary.encode()}}),
        ("NaN in the payload", {"payload": {"n": float("nan"), "secret": canary}}),
        ("an unknown channel named in SQL", {"channel": SQL_TEXTS[0]}),
    ]


def _nested_dicts(depth: int, leaf: object) -> object:
    value = leaf
    for _ in range(depth):
        value = {"k": value}
    return value


def hostile(
    deploy: Deploy,
    backend: str,
    n: int,
    sabotage: tuple[str, ...] = (),
    timeout: float | None = None,
) -> Report:
    """Tampered and pickled jobs, refused inputs, SQL metacharacters and canary secrets.

    Valid deliveries carry a canary secret in their payload, recipient and
    metadata through every outcome path, or SQL metacharacters in every
    string field; invalid inputs must be refused with a ChimewayError that
    writes nothing; hostile jobs are pushed into the queue. Afterwards the
    canary must be in no log, telemetry event, job record, exception message,
    stored provider response, attempt error or journal entry, the pickle
    canary file must not exist, and every string must be stored verbatim.
    """
    d = deploy(backend, sabotage=sabotage)
    d.start()
    canary = f"CANARY-{secrets.token_hex(8)}"
    canary_file = d.files.directory / "pickle-canary"
    d.watch_broker(canary.encode())
    captured = _LogCapture()
    logging.getLogger().addHandler(captured)
    try:
        expect = _hostile_deliveries(d, n, canary)
        _refuse(d, canary)
        target = next(iter(expect))
        pushed = d.hostile_jobs(canary_file, target)
        d.drain(timeout or d.drain_timeout(n))
        if not d.run_until(lambda: d.hostile_settled(pushed), timeout=60):
            d.problem(None, f"the queue did not deal with {len(pushed)} hostile jobs in 60 s")
        d.stop()
    finally:
        logging.getLogger().removeHandler(captured)
    if canary_file.exists():
        d.problem(None, "a pickle payload ran: the canary file exists")
    if canary_file.with_name(FOREIGN_CANARY).exists():
        d.problem(None, "a job naming another function than chimeway's ran: its canary exists")
    if d.restarts:
        d.problem(None, f"hostile jobs killed {d.restarts} worker processes")
    for where in _canary_sightings(d, canary, captured.text()):
        d.problem(None, f"the canary secret leaked into {where}")
    with d.db.connect() as conn:
        if conn.execute(text("SELECT to_regclass('chimeway_deliveries')")).scalar_one() is None:
            d.problem(None, "the deliveries table is gone")
    for job in pushed:
        d.inject(f"hostile job: {job}")
    return d.check("10 hostile input", expect=expect)


def _hostile_deliveries(d: Deployment, n: int, canary: str) -> dict[UUID, Expect]:
    paths = [
        (["5xx", "ok"], ("succeeded", None)),
        (["4xx"], ("cancelled", "permanent_failure")),
        (["drop", "ok"], ("succeeded", None)),
        (["bounce"], ("cancelled", "bounced")),
        (["hang", "ok"], ("succeeded", None)),
        (["deep"], ("succeeded", None)),
    ]
    plan: list[tuple[NewDelivery, Expect]] = []
    for i in range(max(n // 2, len(paths))):
        steps, end = paths[i % len(paths)]
        plan.append(
            (
                NewDelivery(
                    channel="provider",
                    recipient=recipient(steps, i, f"{canary}@example.com"),
                    payload={"secret": canary, "nested": _nested(NESTED_OK, canary)},
                    metadata={"note": canary},
                    notification_key=f"note-{i}",
                    max_attempts=MAX,
                ),
                ends(end, attempts=len(steps)),
            )
        )
    sql: list[NewDelivery] = []
    for i in range(max(n - len(plan), len(SQL_TEXTS))):
        evil = SQL_TEXTS[i % len(SQL_TEXTS)]
        sql.append(
            NewDelivery(
                channel="provider",
                recipient=recipient(["ok"], 1000 + i, evil),
                payload={evil: evil, "list": [evil]},
                metadata={evil: evil},
                notification_key=evil,
                idempotency_key=f"{evil}#{i}",
                max_attempts=MAX,
            )
        )
        plan.append((sql[-1], SUCCEEDED))
    made = d.notify([item for item, _ in plan])
    for delivery, spec_ in zip(made[-len(sql) :], sql, strict=True):
        stored = d.producer.store.get(delivery.id)
        assert stored is not None
        wanted = (spec_.recipient, spec_.payload, spec_.metadata, spec_.notification_key)
        if wanted != (stored.recipient, stored.payload, stored.metadata, stored.notification_key):
            d.problem(delivery.id, "SQL metacharacters were not stored verbatim")
        if stored.idempotency_key != spec_.idempotency_key:
            d.problem(delivery.id, "the idempotency key was not stored verbatim")
    return {delivery.id: wanted for delivery, (_, wanted) in zip(made, plan, strict=True)}


def _refuse(d: Deployment, canary: str) -> None:
    for what, fields in _refused_inputs(canary):
        values = {"channel": "provider", "recipient": recipient(["ok"], 0), **fields}
        before = _count(d)
        d.inject(f"refused input: {what}")
        try:
            d.producer.notify(
                values.pop("channel"), values.pop("recipient"), max_attempts=MAX, **values
            )
        except ChimewayError as error:
            if canary in str(error):
                d.problem(None, f"{what}: the refusal's message carries the canary")
        except Exception as error:  # any other exception breaks notify's contract
            d.problem(None, f"{what}: refused with {type(error).__qualname__}, not a ChimewayError")
        else:
            d.problem(None, f"{what}: accepted")
        if _count(d) != before:
            d.problem(None, f"{what}: refused, but a delivery was written")


def _count(d: Deployment) -> int:
    with d.db.connect() as conn:
        return int(conn.execute(text("SELECT count(*) FROM chimeway_deliveries")).scalar_one())


class _LogCapture(logging.Handler):
    """Every record logged in the test process, formatted with its traceback."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        """Keep the formatted record."""
        self.records.append(self.format(record))

    def text(self) -> str:
        """Everything captured."""
        return "\n".join(self.records)


def _canary_sightings(d: Deployment, canary: str, logged: str) -> list[str]:
    found = []
    if canary in logged:
        found.append("the test process's logs")
    found += [
        path.name
        for path in sorted(d.files.directory.iterdir())
        if path.is_file() and canary.encode() in path.read_bytes()
    ]
    with d.db.connect() as conn:
        for table, column in [
            ("chimeway_delivery_attempts", "provider_response::text"),
            ("chimeway_delivery_attempts", "error"),
            ("chimeway_delivery_journal", "detail::text"),
            ("chimeway_delivery_journal", "reason"),
        ]:
            hits = conn.execute(
                text(f"SELECT count(*) FROM {table} WHERE {column} LIKE :pattern"),
                {"pattern": f"%{canary}%"},
            ).scalar_one()
            if hits:
                found.append(f"{table}.{column} ({hits} rows)")
    found += [f"the broker: {where}" for where in d.broker_sightings(canary.encode())]
    return found
