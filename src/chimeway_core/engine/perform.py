"""Perform: one queue job for one delivery, admit -> claim -> call -> classify -> record -> decide.

Theory of operation
-------------------
:class:`Performer` is the queue-agnostic port of the reference Oban worker
(``shared/reference/oban_worker.ex``):

1. **Admit.** A missing, terminal or leased delivery acknowledges with no
   side effect; one not yet due is deferred to its ``scheduled_at``. The
   policies decide: suppress (terminal, with the policy's reason), defer
   (``scheduled_at`` moves, no attempt consumed) or proceed.
2. **Claim.** One transaction takes a lease and writes the attempt row
   *before* the channel is called. A job that loses the claim does not call
   the channel. Admit and claim share one transaction that reads the row
   for update (:meth:`Performer.admit` decides inside it, and
   :meth:`Performer.settle` acts once it committed); on PostgreSQL an engine
   with no policy but expiry first tries
   :meth:`~chimeway_core.store.SQLStore.quick_claim`, one statement that
   claims only a delivery nothing stands in the way of, and any other goes
   to the lock.
3. **Call** the channel with the delivery's stable idempotency key (the
   backend is told first, :meth:`~chimeway_core.backend.Backend.before_call`), and
   **classify** what it returns or raises. What the backend raises to stop
   a job (its ``interrupts``) propagates, the attempt left in flight.
4. **Decide** (:meth:`Performer.decide`, before anything is written): the
   event the shape makes, the status it leads to, the dispatch table's
   ACK, RETRY, EXHAUST or RAISE, and the next run's time for a retry.
5. **Record** the attempt's outcome and the status transition together,
   fenced by the lease's version, then act on the decision. RAISE has
   scheduled the next attempt (``run_at`` on the error), exactly as Oban
   retries a job that raised, so a delivery is never left live without a
   scheduled run; on the final attempt the catch-all converges.

The rescuer records a lost attempt through the same :meth:`Performer.record`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import assert_never
from uuid import UUID

import attrs

from chimeway_core.channels.base import Channel, DeliveryGuarantee
from chimeway_core.clock import Clock
from chimeway_core.dispatch import Action, attempt_event, match_row
from chimeway_core.engine.settings import Settings, ended, meta, policy_context
from chimeway_core.errors import IllegalTransitionError, LeaseLostError, UnhandledOutcomeError
from chimeway_core.jobs import JobKind, JobResult
from chimeway_core.ledger import claimable as rules
from chimeway_core.ledger.protocol import Ledger, LockedRow
from chimeway_core.outcomes import Classification, classify
from chimeway_core.policies import (
    Defer,
    ExpiryPolicy,
    PolicyPhase,
    Proceed,
    Suppress,
    apply_deferral_bound,
    evaluate_policies,
)
from chimeway_core.records import Claim, Delivery
from chimeway_core.states import DeliveryStatus, Transition, apply_event
from chimeway_core.telemetry import Telemetry, TelemetryEvent

__all__ = ["Performer"]

logger = logging.getLogger("chimeway")


@attrs.frozen
class _Claimed:
    """The lease is taken and the attempt written: call the channel."""

    claim: Claim
    channel: Channel


@attrs.frozen
class _Ignored:
    """Nothing to do for this job (duplicate, terminal, leased...)."""

    why: str


@attrs.frozen
class _NotDue:
    """The delivery's ``scheduled_at`` is still ahead: run the job again then."""


@attrs.frozen
class _Exhausted:
    """No attempt was left: the delivery was cancelled as exhausted."""

    before: Delivery
    after: Delivery


@attrs.frozen
class _Suppressed:
    """A policy suppressed the delivery."""

    after: Delivery
    reason: str
    policy: str | None


@attrs.frozen
class _Deferred:
    """A policy moved the delivery's ``scheduled_at``."""

    after: Delivery
    reason: str


_Admission = _Claimed | _Ignored | _NotDue | _Exhausted | _Suppressed | _Deferred
"""What perform() decided inside the lock, acted on after it committed."""


@attrs.frozen
class _Decision:
    """What a classified attempt leads to, decided before it is recorded."""

    transition: Transition
    """The move the attempt's event makes from the claimed status."""
    action: Action
    row: str
    next_run_at: datetime | None


@attrs.frozen
class Performer:
    """Runs the jobs: admits, claims, calls, classifies, records and decides.

    ``before_call`` is the backend's :meth:`~chimeway_core.backend.Backend.before_call`.
    """

    settings: Settings
    store: Ledger
    clock: Clock
    telemetry: Telemetry
    before_call: Callable[[str, float, float], None] | None = None

    def perform(self, delivery_id: UUID) -> JobResult:
        """Run one queue job for ``delivery_id`` (see ``Chimeway.perform``)."""
        quick = self.quick_claim(delivery_id) if self.claims_quickly() else None
        if quick is not None:
            delivery = quick.delivery
            admitted: _Admission = _Claimed(quick, self.settings.channels[quick.delivery.channel])
        else:
            # One transaction reads the delivery for update, asks the policies
            # and writes what they decide (the claim with its attempt, a
            # suppression, a deferral): one commit where a separate read would
            # cost two.
            with self.store.lock(delivery_id) as locked:
                # Read once the row is ours: time spent waiting for the lock must
                # not come out of the lease the claim is about to take.
                now = self.clock.now()
                if locked.delivery is None:
                    return self._ignored(delivery_id, None, "delivery not found")
                delivery = locked.delivery
                admitted = self.admit(locked, delivery, now)
        with self.telemetry.span("perform", meta(delivery)) as span:
            # settle() writes what the job changed into the span's metadata, so
            # the stop (or exception) event says the status after the attempt.
            result = self.settle(delivery, admitted, report=span)
            span["job_kind"] = result.kind.value
            return result

    def quick_claim(self, delivery_id: UUID) -> Claim | None:
        """One statement claiming a delivery that is plainly claimable, or ``None``.

        Nothing to ask but expiry, which the claim checks itself. Anything else
        (not found, not due, leased, expired, exhausted, unknown channel) is
        left to the locked path, which says why.
        """
        return self.store.quick_claim(
            delivery_id,
            owner=self.settings.owner(),
            lease_seconds={
                name: channel.timeout + self.settings.lease_margin
                for name, channel in self.settings.channels.items()
            },
            now=self.clock.now(),
        )

    def claims_quickly(self) -> bool:
        """Whether perform() may try :meth:`SQLStore.quick_claim` before the lock.

        Only when the store claims in one statement and the policies are the
        built-in expiry alone: any other policy must see the row under the
        lock before anything is claimed.
        """
        policies = self.settings.policies
        return (
            self.store.claims_in_one_statement
            and len(policies) == 1
            and type(policies[0]) is ExpiryPolicy
        )

    def admit(self, locked: LockedRow, delivery: Delivery, now: datetime) -> _Admission:
        """Decide, inside the lock, what this job does; write it through ``locked``.

        What may be claimed is :data:`~chimeway_core.ledger.claimable.UNCONTESTED`,
        the rule the ledger's claims are built from; the first part of it the
        delivery fails says what this job does instead.
        """
        unmet = rules.unmet(delivery, now, rules.UNCONTESTED)
        if unmet is rules.LIVE:
            return _Ignored("delivery is terminal")
        if unmet is rules.DUE:
            return _NotDue()
        if unmet is rules.UNLEASED:
            # A live lease: another worker is calling. A lapsed one: a worker
            # died mid-call and its in-flight attempt is the rescuer's to
            # resolve (it queues the delivery again when it retries).
            live = delivery.lease_expires_at is not None and not rules.LEASE_LAPSED.holds(
                delivery, now
            )
            why = "claimed by another worker" if live else "awaiting rescue of a lost attempt"
            return _Ignored(why)
        channel = self.settings.channel(delivery.channel)
        if unmet is rules.ATTEMPTS_LEFT:
            # Crashed between recording the final failure and exhausting.
            return _Exhausted(delivery, locked.exhaust(now=now))
        decision, policy_name = evaluate_policies(
            self.settings.policies,
            delivery,
            policy_context(self.store, now, PolicyPhase.PERFORM, locked),
        )
        decision = apply_deferral_bound(decision, delivery, self.settings.max_deferrals)
        match decision:
            case Suppress(reason=reason):
                return _Suppressed(
                    locked.suppress(reason, now=now, policy=policy_name), reason, policy_name
                )
            case Defer(until=until, reason=reason):
                return _Deferred(locked.defer(until, reason, now=now, policy=policy_name), reason)
            case Proceed():
                pass
            case _:
                assert_never(decision)
        claim = locked.claim(
            owner=self.settings.owner(),
            lease_seconds=channel.timeout + self.settings.lease_margin,
            now=now,
        )
        if claim is None:
            return _Ignored("claim lost")
        return _Claimed(claim, channel)

    def settle(
        self, delivery: Delivery, admitted: _Admission, report: dict[str, object] | None = None
    ) -> JobResult:
        """After the lock committed: emit what was written, or make the attempt.

        ``report``, when given, receives the metadata of what the job changed
        (the status after it, and an attempt's number, outcome, error class,
        action and dispatch row), also when the attempt raises.
        """
        report = {} if report is None else report
        match admitted:
            case _Claimed(claim=claim, channel=channel):
                return self._call(claim, channel, report)
            case _Ignored(why=why):
                return self._ignored(delivery.id, delivery, why)
            case _NotDue():
                return JobResult(
                    delivery_id=delivery.id,
                    kind=JobKind.DEFER,
                    run_at=delivery.scheduled_at,
                    detail="not yet due",
                    queue=self.settings.queue_for(delivery.channel),
                )
            case _Exhausted(before=before, after=after):
                return self._exhausted(before, after, report)
            case _Suppressed(after=after, reason=reason, policy=policy):
                report.update(meta(after) | {"reason": reason})
                self.telemetry.emit(
                    TelemetryEvent.SUPPRESSED,
                    meta(after) | ended(after) | {"reason": reason, "row": policy},
                )
                return JobResult(
                    delivery_id=after.id, kind=JobKind.ACK, detail=f"suppressed: {reason}"
                )
            case _Deferred(after=after, reason=reason):
                report.update(meta(after) | {"reason": reason})
                self.telemetry.emit(TelemetryEvent.DEFERRED, meta(after) | {"reason": reason})
                return JobResult(
                    delivery_id=after.id,
                    kind=JobKind.DEFER,
                    run_at=after.scheduled_at,
                    detail=reason,
                    queue=self.settings.queue_for(after.channel),
                )
            case _:
                assert_never(admitted)

    def _call(self, claim: Claim, channel: Channel, report: dict[str, object]) -> JobResult:
        """Call the channel for a claimed delivery, classify the result, record it."""
        delivery = claim.delivery
        self._tell_backend(delivery.channel, channel.timeout)
        started = time.perf_counter()
        try:
            result: object = channel.send(delivery, delivery.idempotency_key)
        except self.settings.interrupts:
            raise  # the queue stopped the job mid-call: left in flight for the rescuer
        except Exception as error:  # every other exception is classified, none escapes
            result = error
        call_duration = time.perf_counter() - started
        shape = classify(result, exception_class=channel.exception_class)
        try:
            return self.record(
                claim, shape, channel.guarantee, self.clock.now(), report, call_duration
            )
        except LeaseLostError:
            # Cancelled, rescued or taken over while we were calling: the
            # ledger already says what happened; our late write is fenced off.
            return self._ignored(delivery.id, delivery, "lease lost before recording")

    def _tell_backend(self, name: str, timeout: float) -> None:
        if self.before_call is None:
            return
        try:
            self.before_call(name, timeout, timeout + self.settings.lease_margin)
        except Exception:  # the backend's limit is a safeguard: the call goes on without it
            logger.exception("backend.before_call failed for channel %r; calling it anyway", name)

    def decide(
        self, claim: Claim, shape: Classification, guarantee: DeliveryGuarantee, now: datetime
    ) -> _Decision:
        """The event, status, dispatch row and next run a classified attempt leads to."""
        before = claim.delivery
        number = claim.attempt.number
        event = attempt_event(
            shape.outcome,
            shape.error_class,
            retry_unknown=guarantee is DeliveryGuarantee.AT_LEAST_ONCE,
        )
        transition = apply_event(before.status, event)
        status_after = transition.dest
        action, row = match_row(
            shape.outcome, shape.error_class, status_after, number, before.max_attempts
        )
        next_run_at = None
        if action in {Action.RETRY, Action.RAISE} and status_after is DeliveryStatus.FAILED:
            delay = self.settings.retry_for(before.channel).delay_for(
                number, shape.retry_after, rand=self.settings.rand
            )
            next_run_at = now + timedelta(seconds=delay)
        return _Decision(transition, action, row, next_run_at)

    def record(
        self,
        claim: Claim,
        shape: Classification,
        guarantee: DeliveryGuarantee,
        now: datetime,
        report: dict[str, object] | None = None,
        call_duration: float | None = None,
    ) -> JobResult:
        """Decide, write the attempt and its transition (fenced), then act on the decision.

        Raises :class:`LeaseLostError` when the claim was fenced off, and
        :class:`UnhandledOutcomeError` (after writing the next run) for RAISE.
        ``report`` (see :meth:`settle`) receives the attempt's metadata;
        ``call_duration`` is how long the channel call took, in seconds
        (``None`` for an attempt the rescuer records).
        """
        report = {} if report is None else report
        decided = self.decide(claim, shape, guarantee, now)
        before = claim.delivery
        number = claim.attempt.number
        next_run_at = decided.next_run_at
        after = self.store.record_attempt(
            claim, shape, transition=decided.transition, now=now, next_run_at=next_run_at
        )
        meta_ = meta(after) | {
            "attempt": number,
            "outcome": shape.outcome.value,
            "error_class": None if shape.error_class is None else str(shape.error_class),
            "action": decided.action.value,
            "row": decided.row,
            "call_duration": call_duration,
        }
        report.update(meta_)
        self.telemetry.emit(TelemetryEvent.ATTEMPT_RECORDED, meta_)
        self.telemetry.emit(
            TelemetryEvent.STATUS_TRANSITION,
            meta_
            | ended(after)
            | {"from_status": before.status.value, "to_status": after.status.value},
        )
        match decided.action:
            case Action.ACK:
                return JobResult(delivery_id=after.id, kind=JobKind.ACK, detail=decided.row)
            case Action.RETRY:
                assert next_run_at is not None
                return JobResult(
                    delivery_id=after.id,
                    kind=JobKind.RETRY,
                    run_at=next_run_at,
                    detail=decided.row,
                    queue=self.settings.queue_for(after.channel),
                )
            case Action.EXHAUST:
                return self._exhaust(after, now, report)
            case Action.RAISE:
                self.telemetry.emit(TelemetryEvent.UNHANDLED_OUTCOME, meta_)
                logger.error(
                    "unhandled delivery outcome: delivery_id=%s outcome=%s error_class=%r "
                    "status=%s attempt=%d/%d",
                    after.id,
                    shape.outcome.value,
                    shape.error_class,
                    after.status.value,
                    number,
                    after.max_attempts,
                )
                raise UnhandledOutcomeError(
                    delivery_id=after.id,
                    outcome=shape.outcome,
                    error_class=shape.error_class,
                    status=after.status,
                    attempt=number,
                    max_attempts=after.max_attempts,
                    run_at=next_run_at,
                    queue=None if next_run_at is None else self.settings.queue_for(after.channel),
                )
            case _:
                assert_never(decided.action)

    def _exhaust(self, delivery: Delivery, now: datetime, report: dict[str, object]) -> JobResult:
        try:
            after = self.store.exhaust(delivery.id, expected_version=delivery.version, now=now)
        except (LeaseLostError, IllegalTransitionError):
            return self._ignored(delivery.id, delivery, "moved on before exhausting")
        return self._exhausted(delivery, after, report)

    def _exhausted(self, before: Delivery, after: Delivery, report: dict[str, object]) -> JobResult:
        meta_ = meta(after) | ended(after) | {"attempt": after.attempt_count}
        report.update(meta_)
        self.telemetry.emit(TelemetryEvent.EXHAUSTED, meta_)
        self.telemetry.emit(
            TelemetryEvent.STATUS_TRANSITION,
            meta_ | {"from_status": before.status.value, "to_status": after.status.value},
        )
        return JobResult(delivery_id=after.id, kind=JobKind.ACK, detail="exhausted")

    def _ignored(self, delivery_id: UUID, delivery: Delivery | None, why: str) -> JobResult:
        meta_ = meta(delivery) if delivery else {"delivery_id": str(delivery_id)}
        self.telemetry.emit(TelemetryEvent.DUPLICATE_IGNORED, meta_ | {"reason": why})
        return JobResult(delivery_id=delivery_id, kind=JobKind.ACK, detail=why)
