"""A seeded PostgreSQL ledger for the console's browser tests: every status and reason.

The shapes come from the real engine: one delivery per :data:`SCENARIOS`
entry is notified and performed by a :class:`~chimeway_core.Chimeway` on the
memory backend, with a scripted channel (each notification key scripts what
its channel answers) and the stock policies, on a virtual clock. Volume then
comes from SQL: every template delivery is copied, with its attempts and
journal, shifted back in time, in three ``INSERT ... SELECT`` statements.

Every payload holds :data:`PAYLOAD_CANARY` and every recipient
:data:`RECIPIENT_CANARY` after its first character (so the default mask
hides it); one recipient is :data:`HOSTILE_RECIPIENT`, and the failures carry
HTML, control characters and a URL with :data:`SECRET_CANARY` as its password.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any, Final
from uuid import UUID

import attrs
from sqlalchemy import text

from chimeway_backends.memory import MemoryBackend
from chimeway_core import (
    Bounced,
    Chimeway,
    Defer,
    DeliveryGuarantee,
    OutcomeUnknownError,
    PermanentFailure,
    PreferencePolicy,
    Proceed,
    ReadStatePolicy,
    RetryPolicy,
    Sent,
    TemporaryFailure,
    VirtualClock,
)
from chimeway_core.policies import PolicyContext, PolicyDecision
from chimeway_core.records import Delivery
from chimeway_core.states import DeliveryStatus, Reason
from chimeway_core.store import SQLStore
from chimeway_core.testing import FakeChannel

PAYLOAD_CANARY: Final = "PAYLOADCANARY7f3a"
RECIPIENT_CANARY: Final = "rcptcanary9b2e"
SECRET_CANARY: Final = "hunter2secret"
HOSTILE_RECIPIENT: Final = "<script>window.__pwned=1</script>@x.test"
HTML_ERROR: Final = '451 <img src=x onerror="window.__pwned=1"> <b>greylisted</b>'
HTML_RESPONSE: Final = {
    "body": "<script>window.__pwned=1</script><i>try later</i>",
    "raw": "bell\x07 escape\x1b[31m red",
}
SECRET_URL: Final = f"smtp://mailer:{SECRET_CANARY}@smtp.example.test:587"


class SimulatedCrashError(BaseException):
    """Kills a perform() mid-call, as a worker dying would: the attempt stays in flight."""


@attrs.frozen
class Scenario:
    """One template delivery: its key (which scripts the channel) and where it must end."""

    key: str
    channel: str
    status: DeliveryStatus
    reason: str | None
    performs: int = 1
    max_attempts: int = 3
    copied: bool = True


SCENARIOS: Final = (
    Scenario("receipt", "email", DeliveryStatus.SUCCEEDED, None),
    Scenario("retry-then-sent", "email", DeliveryStatus.SUCCEEDED, None, performs=2),
    Scenario("greylisted", "email", DeliveryStatus.FAILED, None),
    Scenario("pending", "email", DeliveryStatus.READY, None, performs=0),
    Scenario("quiet", "sms", DeliveryStatus.READY, Reason.QUIET_HOURS),
    Scenario("throttled", "sms", DeliveryStatus.READY, Reason.RATE_LIMITED),
    Scenario("invalid-address", "email", DeliveryStatus.CANCELLED, Reason.PERMANENT_FAILURE),
    Scenario("bounce", "email", DeliveryStatus.CANCELLED, Reason.BOUNCED),
    Scenario("lost", "sms", DeliveryStatus.CANCELLED, Reason.OUTCOME_UNKNOWN),
    Scenario(
        "flaky",
        "email",
        DeliveryStatus.CANCELLED,
        Reason.RETRIES_EXHAUSTED,
        performs=2,
        max_attempts=2,
    ),
    Scenario("reminder", "email", DeliveryStatus.CANCELLED, Reason.CANCELLED, performs=0),
    Scenario("marketing", "email", DeliveryStatus.SUPPRESSED, Reason.OPTED_OUT, performs=0),
    Scenario("chat", "email", DeliveryStatus.SUPPRESSED, Reason.ALREADY_READ, performs=0),
    Scenario("expiring", "sms", DeliveryStatus.SUPPRESSED, Reason.EXPIRED),
    Scenario("digest", "sms", DeliveryStatus.SUPPRESSED, Reason.TOO_MANY_DEFERRALS, performs=2),
    # A worker died mid-call: an attempt in flight, its lease long expired.
    Scenario("crash", "email", DeliveryStatus.READY, None, copied=False),
)


def recipient(key: str, n: int = 0) -> str:
    """A masked-by-default address carrying the recipient canary."""
    return f"r{RECIPIENT_CANARY}.{key}.{n}@example.test"


def _answer(delivery: Delivery) -> object:
    """What the scripted provider answers, by notification key and attempt."""
    attempt = delivery.attempt_count
    match delivery.notification_key:
        case "receipt" | "hostile":
            return Sent(provider_response={"id": f"msg-{attempt}", "echo": HTML_RESPONSE["body"]})
        case "retry-then-sent" if attempt >= 2:
            return Sent(provider_response={"id": "msg-late"})
        case "retry-then-sent" | "flaky" | "greylisted":
            return TemporaryFailure(HTML_ERROR, provider_response=HTML_RESPONSE)
        case "invalid-address":
            return PermanentFailure(f"550 <b>no such user</b> at {SECRET_URL}")
        case "bounce":
            return Bounced("mailbox <full> & closed")
        case "lost":
            return OutcomeUnknownError("the answer was lost after the request left")
        case "crash":
            raise SimulatedCrashError
        case _:
            return Sent()


@attrs.frozen
class _DeferByKey:
    """Defers the ``quiet``, ``throttled`` and ``digest`` deliveries by a minute each time."""

    clock: VirtualClock
    name: str = "schedule"

    def evaluate(self, delivery: Delivery, context: PolicyContext) -> PolicyDecision:
        reasons = {"quiet": Reason.QUIET_HOURS, "throttled": Reason.RATE_LIMITED}
        key = delivery.notification_key or ""
        if key in reasons or key == "digest":
            return Defer(context.now + timedelta(minutes=1), reasons.get(key, Reason.QUIET_HOURS))
        return Proceed()


def build_engine(store: SQLStore, clock: VirtualClock) -> Chimeway:
    """The engine the templates go through: two scripted channels and the stock policies."""
    return Chimeway(
        store,
        MemoryBackend(clock),
        {
            "email": FakeChannel(_answer, clock=clock),
            "sms": FakeChannel(_answer, clock=clock, guarantee=DeliveryGuarantee.AT_MOST_ONCE),
        },
        policies=[
            PreferencePolicy(lambda d: d.notification_key != "marketing"),
            ReadStatePolicy(lambda d: d.notification_key == "chat"),
            _DeferByKey(clock),
        ],
        retry=RetryPolicy(max_attempts=3, initial_delay=60.0, backoff_factor=1.0, jitter=0.0),
        clock=clock,
        max_deferrals=1,
    )


@attrs.frozen
class Seeded:
    """What the seed made: ids by template key, and the total."""

    templates: Mapping[str, UUID]
    hostile: UUID
    total: int


def _notify(engine: Chimeway, scenario: Scenario, clock: VirtualClock) -> UUID:
    expires = clock.now() + timedelta(seconds=30) if scenario.key == "expiring" else None
    delivery = engine.notify(
        scenario.channel,
        recipient(scenario.key),
        {"subject": f"{scenario.key} for you", "body": f"secret body {PAYLOAD_CANARY}"},
        notification_key=scenario.key,
        idempotency_key=f"{scenario.key}-template",
        max_attempts=scenario.max_attempts,
        expires_at=expires,
        metadata={"tenant": "acme", "scenario": scenario.key},
    )
    return delivery.id


def _play(engine: Chimeway, scenario: Scenario, delivery_id: UUID, clock: VirtualClock) -> None:
    if scenario.key == "reminder":
        engine.cancel(delivery_id)
    if scenario.key in {"expiring", "digest", "quiet", "throttled"}:
        clock.advance(120)
    for _ in range(scenario.performs):
        with contextlib.suppress(SimulatedCrashError):
            engine.perform(delivery_id)
        clock.advance(61)


def seed(store: SQLStore, *, start: datetime, total: int = 3_000) -> Seeded:
    """Write the templates through the engine, then copy them up to about ``total`` rows.

    ``start`` is the virtual time of the first template (tz-aware); the
    copies go back from the templates' times, about a minute apart.
    """
    clock = VirtualClock(start)
    engine = build_engine(store, clock)
    templates: dict[str, UUID] = {}
    for scenario in SCENARIOS:
        templates[scenario.key] = _notify(engine, scenario, clock)
        _play(engine, scenario, templates[scenario.key], clock)
        clock.advance(7)
    hostile = engine.notify(
        "email",
        HOSTILE_RECIPIENT,
        {"body": PAYLOAD_CANARY},
        notification_key="hostile",
        idempotency_key="<b>hostile</b>\x07key",
    ).id
    engine.perform(hostile)
    wrong = {
        s.key: got
        for s in SCENARIOS
        if (got := _where(engine, templates[s.key])) != (s.status, s.reason)
    }
    if wrong:
        raise AssertionError(f"templates that did not end where their scenario says: {wrong}")
    copied = [templates[s.key] for s in SCENARIOS if s.copied]
    copies = max(0, -(-(total - len(templates) - 1) // len(copied)))
    _copy(store, copied, copies)
    with store.engine.connect() as conn:
        count = conn.execute(text("SELECT count(*) FROM chimeway_deliveries")).scalar_one()
    return Seeded(templates=templates, hostile=hostile, total=int(count))


def _where(engine: Chimeway, delivery_id: UUID) -> tuple[DeliveryStatus, str | None]:
    delivery = engine.get(delivery_id).delivery
    return delivery.status, delivery.reason


_DELIVERY_COLUMNS: Final = (
    "channel, payload, notification_key, status, reason, attempt_count, max_attempts, "
    'expires_at, lease_owner, version, deferral_count, "metadata", trace_context'
)


def _copy(store: SQLStore, sources: list[UUID], copies: int) -> None:
    """Copy each source delivery ``copies`` times with its attempts and journal, in SQL."""
    shift = "c.n * interval '41 seconds'"
    statements = [
        "CREATE TEMP TABLE seed_copies ON COMMIT DROP AS "
        "SELECT s.id AS source, gen_random_uuid() AS id, g AS n "
        "FROM chimeway_deliveries s CROSS JOIN generate_series(1, :copies) g "
        "WHERE s.id = ANY(:sources)",
        f"INSERT INTO chimeway_deliveries (id, recipient, idempotency_key, scheduled_at, "
        f"lease_expires_at, created_at, updated_at, {_DELIVERY_COLUMNS}) "
        f"SELECT c.id, replace(d.recipient, '@', '.c' || c.n || '@'), "
        f"d.idempotency_key || ':copy:' || c.n, d.scheduled_at - {shift}, "
        f"d.lease_expires_at - {shift}, d.created_at - {shift}, d.updated_at - {shift}, "
        f"{', '.join('d.' + col for col in _DELIVERY_COLUMNS.split(', '))} "
        "FROM seed_copies c JOIN chimeway_deliveries d ON d.id = c.source",
        "INSERT INTO chimeway_delivery_attempts (delivery_id, number, started_at, finished_at, "
        "outcome, error_class, provider_response, error, worker) "
        f"SELECT c.id, a.number, a.started_at - {shift}, a.finished_at - {shift}, a.outcome, "
        "a.error_class, a.provider_response, a.error, a.worker "
        "FROM seed_copies c JOIN chimeway_delivery_attempts a ON a.delivery_id = c.source",
        "INSERT INTO chimeway_delivery_journal (delivery_id, at, kind, event, from_status, "
        "to_status, reason, detail) "
        f"SELECT c.id, j.at - {shift}, j.kind, j.event, j.from_status, j.to_status, j.reason, "
        "j.detail FROM seed_copies c JOIN chimeway_delivery_journal j ON j.delivery_id = c.source "
        "ORDER BY c.n, j.id",
        "ANALYZE",
    ]
    parameters: dict[str, Any] = {"copies": copies, "sources": sources}
    with store.engine.begin() as conn:
        for statement in statements:
            conn.execute(text(statement), parameters)
