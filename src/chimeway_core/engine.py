"""The engine: ``notify()`` writes a delivery, ``perform()`` runs one job for it.

Theory of operation
-------------------
``notify()`` validates its input, evaluates the policies on the delivery as it
is about to be written (its id included), then writes the delivery and its
outbox row in one transaction (the caller's, when a
``session`` is given). Once that transaction has committed, the id is handed
to the backend; the outbox row is deleted later, in batches. A crash between
commit and enqueue loses nothing: :meth:`Chimeway.relay` (run by
:meth:`Chimeway.rescue` and by workers) hands every outbox row older than a
grace period to the backend, whose job ids dedupe.

``perform()`` is the queue-agnostic port of the reference Oban worker
(``shared/reference/oban_worker.ex``):

1. A missing, terminal or leased delivery acknowledges with no side effect;
   one not yet due is deferred to its ``scheduled_at``.
2. Policies decide: suppress (terminal, with the policy's reason), defer
   (``scheduled_at`` moves, no attempt consumed) or proceed.
3. The delivery is claimed: one transaction takes a lease and writes the
   attempt row *before* the channel is called. A job that loses the claim
   does not call the channel. Steps 1 to 3 share one transaction that reads
   the row for update; on PostgreSQL an engine with no policy but expiry
   first tries :meth:`SQLStore.quick_claim`, one statement that claims only
   a delivery nothing stands in the way of, and any other goes to the lock.
4. The channel is called with the delivery's stable idempotency key; what it
   returns or raises is classified.
5. The attempt's outcome and the status transition commit together, fenced by
   the lease's version.
6. :func:`~chimeway_core.dispatch.decide` picks ACK, RETRY, EXHAUST or RAISE.
   RAISE schedules the next attempt first (``run_at`` on the error), exactly
   as Oban retries a job that raised, so a delivery is never left live
   without a scheduled run; on the final attempt the catch-all converges.

One delivery costs three commits end to end: the notify, the claim with its
write-ahead attempt, and the record.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import Any, Final, assert_never
from uuid import UUID

import attrs
from sqlalchemy import event
from sqlalchemy.orm import Session

from chimeway_core._checks import seconds, whole
from chimeway_core.backend import SupportsEnqueue, as_backend
from chimeway_core.channels.base import Channel, DeliveryGuarantee
from chimeway_core.clock import Clock, SystemClock, ensure_aware
from chimeway_core.dispatch import Action, attempt_event, match_row
from chimeway_core.errors import (
    DeliveryNotFoundError,
    IllegalTransitionError,
    LeaseLostError,
    UnhandledOutcomeError,
    UnknownChannelError,
)
from chimeway_core.explain import explain
from chimeway_core.jobs import Backend, JobKind, JobResult
from chimeway_core.outcomes import Classification, Outcome, classify
from chimeway_core.policies import (
    MAX_DEFERRALS,
    Defer,
    ExpiryPolicy,
    Policy,
    PolicyContext,
    PolicyPhase,
    Proceed,
    RateLimitPolicy,
    RecentAttempts,
    Suppress,
    apply_deferral_bound,
    evaluate_policies,
)
from chimeway_core.records import Claim, Delivery, DeliveryHistory, NewDelivery, Resent
from chimeway_core.retry import RetryPolicy
from chimeway_core.states import DeliveryStatus, apply_event
from chimeway_core.store import LockedDelivery, SQLStore
from chimeway_core.telemetry import Telemetry, TelemetryEvent

__all__ = ["Chimeway", "RescueReport"]

logger = logging.getLogger("chimeway")

_SESSION_KEY = "chimeway.pending_enqueue"
_OUTBOX_FLUSH_AT = 200


@attrs.frozen
class RescueReport:
    """What one :meth:`Chimeway.rescue` pass did."""

    resolved: int
    """In-flight attempts of dead workers resolved as ``unknown``."""
    requeued: int
    """Due live deliveries handed to the backend again."""
    relayed: int
    """Outbox rows handed to the backend."""
    pruned: int = 0
    """Deliveries deleted for the engine's ``retention`` (none without one)."""

    @property
    def idle(self) -> bool:
        """Whether the pass found nothing to do (workers log only the passes that did)."""
        return not (self.resolved or self.requeued or self.relayed or self.pruned)


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


#: The settings :class:`Chimeway` checks against each other when built, and so
#: refuses to rebind afterwards. Its collaborators (store, backend, clock,
#: telemetry) stay assignable: a test swaps in a double.
_FIXED: Final = frozenset(
    {
        "channels",
        "routes",
        "policies",
        "retry",
        "channel_retry",
        "lease_margin",
        "max_deferrals",
        "relay_grace",
        "requeue_after",
        "retention",
    }
)

_Admission = _Claimed | _Ignored | _NotDue | _Exhausted | _Suppressed | _Deferred
"""What perform() decided inside the lock, acted on after it committed."""


class Chimeway:
    """The delivery engine an application constructs once.

    Everything it uses is passed in; it keeps no process-global state.

    - ``store``: the ledger; ``backend``: the job queue it hands ids to.
    - ``channels``: channel name → :class:`~chimeway_core.channels.Channel`.
    - ``routes``: channel name → the name of the backend's queue its
      deliveries go to (every job of theirs: notify, relay, rescue, retries);
      the other channels' go to the backend's default queue. A slow or
      bulky channel on a queue of its own cannot hold up the others' jobs.
    - ``policies``: run in order at notify time and at perform time;
      :class:`~chimeway_core.policies.ExpiryPolicy` always runs first.
    - ``retry``: the default :class:`RetryPolicy`; ``channel_retry``
      overrides it per channel.
    - ``clock``: where time is read (a ``VirtualClock`` in tests);
      ``telemetry``: where events go.
    - ``lease_margin`` (seconds): added to a channel's ``timeout`` to make
      the lease, so a live call never outlasts its lease.
    - ``max_deferrals``: a delivery deferred this many times is suppressed
      with ``too_many_deferrals``.
    - ``relay_grace`` (seconds): a relay leaves younger outbox rows to the
      process that wrote them. ``requeue_after`` (seconds): the rescuer
      requeues live, due deliveries untouched this long.
    - ``retention`` (seconds, or ``None``): with it, every :meth:`rescue`
      pass also prunes up to its ``limit`` deliveries terminal for longer
      (:meth:`prune`); at least :attr:`min_retention`.
    - ``rand``: the jitter's random source (seed it for determinism).

    The settings are fixed once built: assigning ``channels``, ``routes``,
    ``policies``, ``retry``, ``channel_retry``, ``lease_margin``,
    ``max_deferrals``, ``relay_grace``, ``requeue_after`` or ``retention``
    raises :class:`AttributeError`, and ``channels``, ``routes`` and
    ``channel_retry`` are read-only mappings, so the checks made here (and :attr:`min_retention`)
    hold for the engine's life; a channel is added by building a new engine.
    The collaborators (``store``, ``backend``, ``clock``, ``telemetry``) may
    be replaced, as a test does with a double.

    A setting out of range raises :class:`ValueError` naming it, and a part
    of the wrong kind (a channel without ``send``, a ``channel_retry`` for a
    channel the engine does not have) raises at construction, not in a
    worker later.
    """

    _queue: Backend  # what the engine calls: self.backend, adopted by as_backend()

    def __init__(
        self,
        store: SQLStore,
        backend: Backend | SupportsEnqueue,
        channels: Mapping[str, Channel],
        *,
        routes: Mapping[str, str] | None = None,
        policies: Sequence[Policy] = (),
        retry: RetryPolicy | None = None,
        channel_retry: Mapping[str, RetryPolicy] | None = None,
        clock: Clock | None = None,
        telemetry: Telemetry | None = None,
        lease_margin: float = 30.0,
        max_deferrals: int = MAX_DEFERRALS,
        relay_grace: float = 10.0,
        requeue_after: float = 300.0,
        retention: float | None = None,
        rand: Callable[[], float] = random.random,
    ) -> None:
        seconds("lease_margin", lease_margin, positive=True)
        seconds("relay_grace", relay_grace)
        seconds("requeue_after", requeue_after)
        whole("max_deferrals", max_deferrals, minimum=0)
        _check_parts(store, backend, clock, telemetry, rand)
        _check_channels(channels)
        for policy in policies:
            if not isinstance(policy, Policy):
                raise TypeError(
                    f"a policy must have a name and evaluate(), not {type(policy).__name__}"
                )
        _check_retries(retry, channel_retry, channels)
        _check_routes(routes, channels, as_backend(backend), type(backend).__qualname__)
        self.store = store
        self.backend = backend
        # Read-only views: the checks above (and min_retention) hold for the engine's life.
        self.channels: Mapping[str, Channel] = MappingProxyType(dict(channels))
        self.routes: Mapping[str, str] = MappingProxyType(dict(routes or {}))
        self.policies: tuple[Policy, ...] = (ExpiryPolicy(), *policies)
        self.retry = retry or RetryPolicy()
        self.channel_retry: Mapping[str, RetryPolicy] = MappingProxyType(dict(channel_retry or {}))
        self.clock = clock or SystemClock()
        self.telemetry = telemetry or Telemetry()
        self.lease_margin = lease_margin
        self.max_deferrals = max_deferrals
        self.relay_grace = timedelta(seconds=relay_grace)
        self.requeue_after = timedelta(seconds=requeue_after)
        if retention is not None:  # checked now, as every rescue() will use it
            self._prune_cutoff("retention", retention, self.clock.now())
        self.retention = retention
        self._rand = rand
        self._identity = f"{socket.gethostname()}:{uuid.uuid4().hex[:8]}"
        self._enqueued_lock = threading.Lock()
        self._enqueued: list[UUID] = []
        self._built = True

    def __setattr__(self, name: str, value: object) -> None:
        # The checks above hold for the engine's life: a setting is not rebound
        # afterwards, past them (a retention below min_retention, say).
        if name in _FIXED and getattr(self, "_built", False):
            raise AttributeError(
                f"Chimeway.{name} is fixed when the engine is built; build another engine"
            )
        object.__setattr__(self, name, value)
        if name == "backend":  # what the engine calls: the backend, or a non-subclass wrapped
            object.__setattr__(self, "_queue", as_backend(value))  # type: ignore[arg-type]

    def __repr__(self) -> str:
        return f"Chimeway(store={self.store!r}, channels={sorted(self.channels)})"

    # ------------------------------------------------------------------ notify

    def notify(
        self,
        channel: str,
        recipient: str,
        payload: Any = None,
        *,
        notification_key: str | None = None,
        idempotency_key: str | None = None,
        max_attempts: int | None = None,
        scheduled_at: datetime | None = None,
        expires_at: datetime | None = None,
        metadata: Mapping[str, Any] | None = None,
        session: Session | None = None,
    ) -> Delivery:
        """Record a delivery and queue it; return the delivery as written.

        Idempotent on ``(channel, idempotency_key)``: a repeat returns the
        existing delivery and queues nothing. A delivery a policy suppresses is
        still recorded, terminal, with the policy's reason. With ``session``
        the rows are written in the caller's transaction and the job is queued
        only after it commits; a rollback leaves no delivery and no job.
        Invalid input raises a :class:`~chimeway_core.errors.ChimewayError`
        subclass (a bad field :class:`~chimeway_core.errors.InvalidDeliveryError`,
        by name; an unknown channel
        :class:`~chimeway_core.errors.UnknownChannelError`) and writes nothing;
        a ``session`` that is no :class:`~sqlalchemy.orm.Session` is a
        :class:`TypeError`.
        """
        spec = NewDelivery(
            channel=channel,
            recipient=recipient,
            payload=payload,
            notification_key=notification_key,
            idempotency_key=idempotency_key,
            max_attempts=max_attempts
            if max_attempts is not None
            # A channel that is no str is refused by the store, by name.
            else self._retry(channel if isinstance(channel, str) else "").max_attempts,
            scheduled_at=scheduled_at,
            expires_at=expires_at,
            metadata={} if metadata is None else metadata,
        )
        return self.notify_many([spec], session=session)[0]

    def notify_many(
        self, specs: Iterable[NewDelivery], *, session: Session | None = None
    ) -> list[Delivery]:
        """Record and queue many deliveries in a handful of statements.

        Same guarantees as :meth:`notify`, per spec, in order; one invalid spec
        writes none.
        """
        now = self.clock.now()
        specs = list(specs)
        # The store validates every spec first; then each delivery, as it is
        # about to be written, must name a channel of this engine and is shown
        # to the policies. Bad input is an InvalidDeliveryError, never a
        # policy (or a lookup) failing on it; nothing is written before.
        created = self.store.create_many(
            specs, now=now, session=session, suppress_if=self._suppression(now)
        )
        self._created([(c.delivery, c.created) for c in created], now, session)
        return [c.delivery for c in created]

    def resend(self, delivery_id: UUID, *, session: Session | None = None) -> Resent:
        """Send a delivery that ended unsent (cancelled or suppressed) again, as a copy.

        Nothing leaves a terminal state: the original stays as it is, with a
        ``resent`` journal entry naming the copy. The copy is a new delivery
        with the original's channel, recipient, payload, notification key,
        ``max_attempts``, ``expires_at`` and metadata, due now, with attempts
        (and a provider idempotency key) of its own; it is notified like any
        other, so the policies see it. Idempotent: a delivery has at most one
        copy, and resending it again returns that copy (``created=False``) and
        queues nothing; a copy that ends unsent is resent by its own id.
        ``session`` works as in :meth:`notify`. An unknown id raises
        :class:`~chimeway_core.errors.DeliveryNotFoundError`; a live or
        succeeded delivery :class:`~chimeway_core.errors.NotResendableError`; a
        channel this engine no longer has
        :class:`~chimeway_core.errors.UnknownChannelError`. Each writes nothing.
        """
        now = self.clock.now()
        resent = self.store.resend(
            delivery_id, now=now, session=session, suppress_if=self._suppression(now)
        )
        if resent.created:
            self.telemetry.emit(
                TelemetryEvent.RESENT, _meta(resent.original) | {"copy_id": resent.copy.id}
            )
        self._created([(resent.copy, resent.created)], now, session)
        return resent

    def _suppression(self, now: datetime) -> Callable[[Delivery], str | None]:
        """What the store asks of each delivery about to be written: a suppression reason."""
        context = self._context(now, PolicyPhase.NOTIFY)

        def suppression(delivery: Delivery) -> str | None:
            self._channel(delivery.channel)
            return _suppression_at_notify(self.policies, delivery, context)

        return suppression

    def _created(
        self, results: Sequence[tuple[Delivery, bool]], now: datetime, session: Session | None
    ) -> None:
        """Report what a create wrote, and hand the new live deliveries to the backend."""
        for delivery, created in results:
            if not created:
                self.telemetry.emit(TelemetryEvent.DUPLICATE_IGNORED, _meta(delivery))
            elif delivery.status is DeliveryStatus.SUPPRESSED:
                self.telemetry.emit(
                    TelemetryEvent.SUPPRESSED, {**_meta(delivery), "reason": delivery.reason}
                )
        fresh = [delivery for delivery, created in results if created and not delivery.is_terminal]
        if session is None:
            self._hand_over(fresh, now)
        else:
            self._after_commit(session, fresh)

    def _hand_over(self, deliveries: Sequence[Delivery], now: datetime) -> None:
        if not deliveries:
            return
        self._enqueue_many([(d.id, d.channel) for d in deliveries if d.scheduled_at <= now])
        for delivery in deliveries:
            if delivery.scheduled_at > now:
                self._enqueue(delivery.id, delivery.channel, at=delivery.scheduled_at)
        with self._enqueued_lock:
            self._enqueued.extend(d.id for d in deliveries)
            flush = len(self._enqueued) >= _OUTBOX_FLUSH_AT
        if flush:
            self.flush_outbox()

    def _after_commit(self, session: Session, deliveries: Sequence[Delivery]) -> None:
        pending: list[Delivery] | None = session.info.get(_SESSION_KEY)
        if pending is None:
            pending = session.info[_SESSION_KEY] = []

            def committed(sess: Session) -> None:
                handed = sess.info.pop(_SESSION_KEY, [])
                self._hand_over(handed, self.clock.now())

            def rolled_back(sess: Session, _previous: object) -> None:
                sess.info.pop(_SESSION_KEY, None)

            event.listen(session, "after_commit", committed, once=True)
            event.listen(session, "after_soft_rollback", rolled_back, once=True)
        pending.extend(deliveries)

    @property
    def queues(self) -> tuple[str, ...]:
        """The queues :attr:`routes` names, each once, sorted (the default queue is not one)."""
        return tuple(sorted(set(self.routes.values())))

    def worker_queues(self, default: str) -> list[str]:
        """The queues a worker serves unless told: ``default`` (its backend's), then the routed."""
        return list(dict.fromkeys([default, *self.queues]))

    def queue_for(self, channel: str) -> str | None:
        """The queue a ``channel``'s jobs go to: its route, or ``None`` for the default."""
        return self.routes.get(channel)

    def _enqueue(self, delivery_id: UUID, channel: str, *, at: datetime | None) -> None:
        """Queue one job on its channel's queue; ``queue=`` only when routed."""
        queue = self.queue_for(channel)
        if queue is None:
            self._queue.enqueue(delivery_id, at=at)
        else:
            self._queue.enqueue(delivery_id, at=at, queue=queue)

    def _enqueue_many(self, jobs: Sequence[tuple[UUID, str]]) -> None:
        """Queue due jobs of ``(delivery id, channel)``, one call per queue, in their order."""
        by_queue: dict[str | None, list[UUID]] = {}
        for delivery_id, channel in jobs:
            by_queue.setdefault(self.queue_for(channel), []).append(delivery_id)
        for queue, ids in by_queue.items():
            if queue is None:
                self._queue.enqueue_many(ids)
            else:
                self._queue.enqueue_many(ids, queue=queue)

    def flush_outbox(self) -> None:
        """Delete the outbox rows of deliveries this engine has already queued."""
        with self._enqueued_lock:
            ids, self._enqueued = self._enqueued, []
        if ids:
            self.store.delete_outbox(ids)

    # ------------------------------------------------------------------ perform

    def perform(self, delivery_id: UUID) -> JobResult:
        """Run one queue job for ``delivery_id``; see the module docstring.

        Returns the :class:`JobResult` the backend translates; raises
        :class:`UnhandledOutcomeError` (after scheduling the next run) for a
        shape the dispatch table does not cover, and :class:`TypeError` for a
        ``delivery_id`` that is no :class:`uuid.UUID` (backends parse theirs
        with :func:`~chimeway_core.jobs.parse_delivery_id`).
        """
        quick = self._quick_claim(delivery_id) if self._claims_quickly() else None
        if quick is not None:
            delivery = quick.delivery
            admitted: _Admission = _Claimed(quick, self.channels[quick.delivery.channel])
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
                admitted = self._admit(locked, delivery, now)
        with self.telemetry.span("perform", _meta(delivery)) as span:
            result = self._settle(delivery, admitted)
            span["job_kind"] = result.kind.value
            return result

    def _quick_claim(self, delivery_id: UUID) -> Claim | None:
        """One statement claiming a delivery that is plainly claimable, or ``None``.

        Nothing to ask but expiry, which the claim checks itself. Anything else
        (not found, not due, leased, expired, exhausted, unknown channel) is
        left to the locked path, which says why.
        """
        return self.store.quick_claim(
            delivery_id,
            owner=self._owner(),
            lease_seconds={
                name: channel.timeout + self.lease_margin for name, channel in self.channels.items()
            },
            now=self.clock.now(),
        )

    def _claims_quickly(self) -> bool:
        """Whether perform() may try :meth:`SQLStore.quick_claim` before the lock.

        Only when the store claims in one statement and the policies are the
        built-in expiry alone: any other policy must see the row under the
        lock before anything is claimed.
        """
        return (
            self.store.claims_in_one_statement
            and len(self.policies) == 1
            and type(self.policies[0]) is ExpiryPolicy
        )

    def _admit(self, locked: LockedDelivery, delivery: Delivery, now: datetime) -> _Admission:
        """Decide, inside the lock, what this job does; write it through ``locked``."""
        if delivery.is_terminal:
            return _Ignored("delivery is terminal")
        if delivery.scheduled_at > now:
            return _NotDue()
        if delivery.lease_owner is not None:
            # A live lease: another worker is calling. An expired one: a worker
            # died mid-call and its in-flight attempt is the rescuer's to
            # resolve (it queues the delivery again when it retries).
            live = delivery.lease_expires_at is not None and delivery.lease_expires_at > now
            why = "claimed by another worker" if live else "awaiting rescue of a lost attempt"
            return _Ignored(why)
        channel = self._channel(delivery.channel)
        if delivery.attempt_count >= delivery.max_attempts:
            # Crashed between recording the final failure and exhausting.
            return _Exhausted(delivery, locked.exhaust(now=now))
        decision, policy_name = evaluate_policies(
            self.policies, delivery, self._context(now, PolicyPhase.PERFORM, locked)
        )
        decision = apply_deferral_bound(decision, delivery, self.max_deferrals)
        match decision:
            case Suppress(reason=reason):
                return _Suppressed(locked.suppress(reason, now=now), reason, policy_name)
            case Defer(until=until, reason=reason):
                return _Deferred(locked.defer(until, reason, now=now), reason)
            case Proceed():
                pass
            case _:
                assert_never(decision)
        claim = locked.claim(
            owner=self._owner(), lease_seconds=channel.timeout + self.lease_margin, now=now
        )
        if claim is None:
            return _Ignored("claim lost")
        return _Claimed(claim, channel)

    def _settle(self, delivery: Delivery, admitted: _Admission) -> JobResult:
        """After the lock committed: emit what was written, or make the attempt."""
        match admitted:
            case _Claimed(claim=claim, channel=channel):
                return self._attempt(claim, channel)
            case _Ignored(why=why):
                return self._ignored(delivery.id, delivery, why)
            case _NotDue():
                return JobResult(
                    delivery_id=delivery.id,
                    kind=JobKind.DEFER,
                    run_at=delivery.scheduled_at,
                    detail="not yet due",
                    queue=self.queue_for(delivery.channel),
                )
            case _Exhausted(before=before, after=after):
                return self._exhausted(before, after)
            case _Suppressed(after=after, reason=reason, policy=policy):
                self.telemetry.emit(
                    TelemetryEvent.SUPPRESSED, _meta(after) | {"reason": reason, "row": policy}
                )
                return JobResult(
                    delivery_id=after.id, kind=JobKind.ACK, detail=f"suppressed: {reason}"
                )
            case _Deferred(after=after, reason=reason):
                self.telemetry.emit(TelemetryEvent.DEFERRED, _meta(after) | {"reason": reason})
                return JobResult(
                    delivery_id=after.id,
                    kind=JobKind.DEFER,
                    run_at=after.scheduled_at,
                    detail=reason,
                    queue=self.queue_for(after.channel),
                )
            case _:
                assert_never(admitted)

    def _attempt(self, claim: Claim, channel: Channel) -> JobResult:
        delivery = claim.delivery
        try:
            result: object = channel.send(delivery, delivery.idempotency_key)
        except self._queue.interrupts:
            raise  # the queue stopped the job mid-call: left in flight for the rescuer
        except Exception as error:  # every other exception is classified, none escapes
            result = error
        shape = classify(result, exception_class=channel.exception_class)
        try:
            return self._record(claim, shape, channel.guarantee, self.clock.now())
        except LeaseLostError:
            # Cancelled, rescued or taken over while we were calling: the
            # ledger already says what happened; our late write is fenced off.
            return self._ignored(delivery.id, delivery, "lease lost before recording")

    def _record(
        self,
        claim: Claim,
        shape: Classification,
        guarantee: DeliveryGuarantee,
        now: datetime,
    ) -> JobResult:
        before = claim.delivery
        number = claim.attempt.number
        event_ = attempt_event(
            shape.outcome,
            shape.error_class,
            retry_unknown=guarantee is DeliveryGuarantee.AT_LEAST_ONCE,
        )
        status_after = apply_event(before.status, event_).dest
        action, row = match_row(
            shape.outcome, shape.error_class, status_after, number, before.max_attempts
        )
        next_run_at = None
        if action in {Action.RETRY, Action.RAISE} and status_after is DeliveryStatus.FAILED:
            delay = self._retry(before.channel).delay_for(
                number, shape.retry_after, rand=self._rand
            )
            next_run_at = now + timedelta(seconds=delay)
        after = self.store.record_attempt(
            claim, shape, event=event_, now=now, next_run_at=next_run_at
        )
        meta = _meta(after) | {
            "attempt": number,
            "outcome": shape.outcome.value,
            "error_class": None if shape.error_class is None else str(shape.error_class),
            "action": action.value,
            "row": row,
        }
        self.telemetry.emit(TelemetryEvent.ATTEMPT_RECORDED, meta)
        self.telemetry.emit(
            TelemetryEvent.STATUS_TRANSITION,
            meta | {"from_status": before.status.value, "to_status": after.status.value},
        )
        match action:
            case Action.ACK:
                return JobResult(delivery_id=after.id, kind=JobKind.ACK, detail=row)
            case Action.RETRY:
                assert next_run_at is not None
                return JobResult(
                    delivery_id=after.id,
                    kind=JobKind.RETRY,
                    run_at=next_run_at,
                    detail=row,
                    queue=self.queue_for(after.channel),
                )
            case Action.EXHAUST:
                return self._exhaust(after, now)
            case Action.RAISE:
                self.telemetry.emit(TelemetryEvent.UNHANDLED_OUTCOME, meta)
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
                    queue=None if next_run_at is None else self.queue_for(after.channel),
                )
            case _:
                assert_never(action)

    def _exhaust(self, delivery: Delivery, now: datetime) -> JobResult:
        try:
            after = self.store.exhaust(delivery.id, expected_version=delivery.version, now=now)
        except (LeaseLostError, IllegalTransitionError):
            return self._ignored(delivery.id, delivery, "moved on before exhausting")
        return self._exhausted(delivery, after)

    def _exhausted(self, before: Delivery, after: Delivery) -> JobResult:
        meta = _meta(after) | {"reason": after.reason, "attempt": after.attempt_count}
        self.telemetry.emit(TelemetryEvent.EXHAUSTED, meta)
        self.telemetry.emit(
            TelemetryEvent.STATUS_TRANSITION,
            meta | {"from_status": before.status.value, "to_status": after.status.value},
        )
        return JobResult(delivery_id=after.id, kind=JobKind.ACK, detail="exhausted")

    def _ignored(self, delivery_id: UUID, delivery: Delivery | None, why: str) -> JobResult:
        meta = _meta(delivery) if delivery else {"delivery_id": str(delivery_id)}
        self.telemetry.emit(TelemetryEvent.DUPLICATE_IGNORED, meta | {"reason": why})
        return JobResult(delivery_id=delivery_id, kind=JobKind.ACK, detail=why)

    # ------------------------------------------------------------------ operators

    def get(self, delivery_id: UUID) -> DeliveryHistory:
        """The delivery with its attempts and journal; raises if it does not exist."""
        history = self.store.history(delivery_id)
        if history is None:
            raise DeliveryNotFoundError(delivery_id)
        return history

    def cancel(self, delivery_id: UUID) -> Delivery:
        """Cancel a live delivery (reason ``cancelled``); a leased worker is fenced off.

        A terminal delivery raises :class:`IllegalTransitionError`; an unknown
        id :class:`DeliveryNotFoundError`.
        """
        before = self.store.get(delivery_id)
        after = self.store.cancel(delivery_id, now=self.clock.now())
        self.telemetry.emit(
            TelemetryEvent.STATUS_TRANSITION,
            _meta(after)
            | {
                "from_status": before.status.value if before else None,
                "to_status": after.status.value,
                "reason": after.reason,
            },
        )
        return after

    def explain(self, delivery_id: UUID) -> list[str]:
        """Why the delivery is where it is: one line per attempt and journal entry."""
        return explain(self.get(delivery_id))

    def relay(self, *, batch_size: int = 500, grace: float | None = None) -> int:
        """Hand committed outbox rows older than ``grace`` seconds to the backend.

        The row of a delivery scheduled for later waits until it has been
        due for ``grace`` seconds too: its job was handed over when it was
        written, and the worker that claims it deletes the row, so a relay
        before then would only send a second job. Returns the number
        relayed. Safe with several relays at once.
        ``batch_size`` must be an int >= 1 (0 would loop for ever: a batch
        ends the relay only when it is short) and ``grace`` a finite number of
        seconds >= 0; otherwise :class:`TypeError` (not a number) or
        :class:`ValueError` (out of range), before anything is sent.
        """
        if grace is not None:
            seconds("grace", grace)
        whole("batch_size", batch_size, minimum=1)
        self.flush_outbox()
        now = self.clock.now()
        window = self.relay_grace if grace is None else timedelta(seconds=grace)
        before = now - window + timedelta(microseconds=1)
        total = 0
        while True:
            sent = self.store.relay_outbox(
                lambda items: self._enqueue_many(
                    [(item.delivery_id, item.channel) for item in items]
                ),
                batch_size=batch_size,
                created_before=before,
                due_before=before,
            )
            total += sent
            if sent < batch_size:
                return total

    @property
    def min_retention(self) -> float:
        """The shortest ``older_than`` :meth:`prune` accepts, in seconds.

        The longest lease a worker can hold (a channel's ``timeout`` plus
        ``lease_margin``), so that no worker is still calling a channel for a
        delivery as it is deleted, and the longest window of a
        :class:`~chimeway_core.policies.RateLimitPolicy` among the engine's
        policies, whose counts take in the attempts of terminal deliveries.
        """
        leases = [channel.timeout + self.lease_margin for channel in self.channels.values()]
        windows = [
            policy.per.total_seconds()
            for policy in self.policies
            if isinstance(policy, RateLimitPolicy)
        ]
        return max([self.lease_margin, *leases, *windows])

    def prune(self, older_than: float, *, batch_size: int = 1000) -> int:
        """Delete deliveries terminal for ``older_than`` seconds or more; return how many.

        Succeeded, cancelled and suppressed deliveries created and last
        written more than ``older_than`` seconds ago go, with their attempts,
        journal and outbox rows, ``batch_size`` per transaction, oldest first
        (:meth:`SQLStore.prune <chimeway_core.store.SQLStore.prune>`). Live
        deliveries stay, however old. A deleted delivery's idempotency key
        can be used again. ``older_than`` below :attr:`min_retention` is a
        :class:`ValueError`; a policy of your own that looks back at the
        ledger (``context.recent_attempts``) needs ``older_than`` at least as
        long as it looks back. Safe to run from several processes at once.
        """
        before = self._prune_cutoff("older_than", older_than, self.clock.now())
        return self.store.prune(before=before, batch_size=batch_size)

    def count_prunable(self, older_than: float) -> int:
        """How many deliveries :meth:`prune` with this ``older_than`` would delete now."""
        before = self._prune_cutoff("older_than", older_than, self.clock.now())
        return self.store.count_prunable(before=before)

    def _prune_cutoff(self, name: str, age: object, now: datetime) -> datetime:
        """``now`` less ``age`` seconds, which must be at least :attr:`min_retention`."""
        checked = seconds(name, age, positive=True)
        shortest = self.min_retention
        if checked < shortest:
            raise ValueError(
                f"{name} must be at least the engine's min_retention ({shortest:g} s: "
                f"its longest lease or rate-limit window), got {age!r}"
            )
        try:
            return now - timedelta(seconds=checked)
        except OverflowError:
            raise ValueError(f"{name} reaches back before the year 1, got {age!r}") from None

    def rescue(
        self, now: datetime | None = None, *, limit: int = 500, catch_up: bool = False
    ) -> RescueReport:
        """Resolve dead workers' attempts, requeue stranded deliveries, relay the outbox.

        An attempt left in flight past its lease becomes outcome ``unknown``:
        retried with the same idempotency key on an at-least-once channel,
        cancelled ``outcome_unknown`` on an at-most-once one (the table
        decides). Up to ``limit`` live, due deliveries untouched for
        ``requeue_after`` seconds are queued again (a lost or flushed queue);
        the backend's job ids dedupe. With a ``retention``, up to ``limit``
        deliveries terminal for longer are pruned. Safe with several
        rescuers at once.

        ``catch_up`` is for a queue known to hold none of the ledger's jobs
        (a new in-memory queue, as in ``chimeway worker --backend memory
        --burst``): due deliveries are queued again however recently they
        were written, and the outbox is relayed without ``relay_grace``.
        """
        now = ensure_aware(now, "now") if now is not None else self.clock.now()
        resolved = 0
        for claim in self.store.expired_claims(now=now, limit=limit):
            if self._resolve_lost(claim, now):
                resolved += 1
        untouched = None if catch_up else now - self.requeue_after
        stranded = self.store.due(now=now, limit=limit, not_touched_since=untouched)
        self._enqueue_many([(d.id, d.channel) for d in stranded])
        relayed = self.relay(grace=0.0 if catch_up else None)
        pruned = 0
        if self.retention is not None:
            before = self._prune_cutoff("retention", self.retention, now)
            pruned = self.store.prune(before=before, batch_size=limit, limit=limit)
        return RescueReport(
            resolved=resolved, requeued=len(stranded), relayed=relayed, pruned=pruned
        )

    def _resolve_lost(self, claim: Claim, now: datetime) -> bool:
        channel = self.channels.get(claim.delivery.channel)
        guarantee = channel.guarantee if channel else DeliveryGuarantee.AT_MOST_ONCE
        shape = Classification(
            Outcome.UNKNOWN, None, {}, None, "worker lost: lease expired with the call in flight"
        )
        try:
            result = self._record(claim, shape, guarantee, now)
        except LeaseLostError:  # another rescuer, or the worker itself, got there first
            return False
        self.telemetry.emit(
            TelemetryEvent.RESCUED, _meta(claim.delivery) | {"attempt": claim.attempt.number}
        )
        if result.kind is not JobKind.ACK:
            assert result.run_at is not None
            self._enqueue(result.delivery_id, claim.delivery.channel, at=result.run_at)
        return True

    # ------------------------------------------------------------------ helpers

    def _channel(self, name: str) -> Channel:
        try:
            return self.channels[name]
        except KeyError:
            raise UnknownChannelError(name, tuple(sorted(self.channels))) from None

    def _retry(self, channel: str) -> RetryPolicy:
        return self.channel_retry.get(channel, self.retry)

    def _owner(self) -> str:
        return f"{self._identity}:{os.getpid()}:{threading.get_ident()}"

    def _context(
        self, now: datetime, phase: PolicyPhase, locked: LockedDelivery | None = None
    ) -> PolicyContext:
        # At perform time, counts run inside the lock's transaction (one
        # connection: SQLite in memory has only one).
        recent: RecentAttempts = (
            locked.recent_attempts
            if locked is not None
            else lambda channel, recipient, since: self.store.count_recent_attempts(
                channel=channel, recipient=recipient, since=since
            )
        )
        return PolicyContext(now=now, phase=phase, recent_attempts=recent)


def _check_parts(
    store: object, backend: object, clock: object, telemetry: object, rand: object
) -> None:
    """Raise TypeError for an engine part that is not of the kind it must be."""
    if not isinstance(store, SQLStore):
        raise TypeError(f"store must be a SQLStore, not {type(store).__name__}")
    if not isinstance(backend, Backend):
        raise TypeError(
            f"backend must have enqueue() and enqueue_many() (chimeway_core.jobs.Backend), "
            f"not {type(backend).__name__}"
        )
    if clock is not None and not isinstance(clock, Clock):
        raise TypeError(f"clock must have now() (chimeway_core.Clock), not {type(clock).__name__}")
    if telemetry is not None and not isinstance(telemetry, Telemetry):
        raise TypeError(f"telemetry must be a Telemetry, not {type(telemetry).__name__}")
    if not callable(rand):
        raise TypeError(f"rand must be callable, not {type(rand).__name__}")


def _check_routes(
    routes: Mapping[str, object] | None,
    channels: Mapping[str, object],
    backend: Backend,
    kind: str,
) -> None:
    """Raise for routes other than this engine's channels to queue names, or unfollowable.

    ``backend`` says whether it follows routes; ``kind`` names the class the user gave.
    """
    if routes is None:
        return
    _check_per_channel("routes", routes, channels, "queue names")
    for channel, queue in routes.items():
        if not isinstance(queue, str):
            raise TypeError(f"routes[{channel!r}] must be a queue name, not {type(queue).__name__}")
        if not queue:
            raise ValueError(f"routes[{channel!r}] must be a non-empty queue name")
    if routes and not backend.follows_routes:
        raise TypeError(
            f"routes need a backend whose enqueue() and enqueue_many() take queue=; {kind}'s do not"
        )


def _check_per_channel(
    name: str, mapping: object, channels: Mapping[str, object], values: str
) -> None:
    """Raise unless ``mapping`` is a mapping whose keys are all channels of this engine."""
    if not isinstance(mapping, Mapping):
        raise TypeError(
            f"{name} must be a mapping of channel names to {values}, not {type(mapping).__name__}"
        )
    unknown = sorted(str(key) for key in mapping if key not in channels)
    if unknown:
        # Most likely a typo: the channel would silently keep the default.
        raise ValueError(
            f"{name} names channels this engine does not have: {unknown}; "
            f"its channels are {sorted(channels)}"
        )


def _check_channels(channels: object) -> None:
    """Raise for channels that are no mapping of names to channels with a usable timeout."""
    if not isinstance(channels, Mapping):
        raise TypeError(
            f"channels must be a mapping of names to channels, not {type(channels).__name__}"
        )
    for name, channel in channels.items():
        if not isinstance(name, str) or not name:
            raise TypeError(f"a channel name must be a non-empty str, not {name!r}")
        if not isinstance(channel, Channel):
            raise TypeError(
                f"channel {name!r} must have guarantee, exception_class, timeout and send() "
                f"(chimeway_core.channels.Channel), not {type(channel).__name__}"
            )
        # The lease is the timeout plus the margin: it must be a real, positive time.
        seconds(f"channel {name!r}: timeout", channel.timeout, positive=True)


def _check_retries(
    retry: object, channel_retry: Mapping[str, object] | None, channels: Mapping[str, object]
) -> None:
    """Raise for a retry policy that is none, or one given for a channel that does not exist."""
    if retry is not None and not isinstance(retry, RetryPolicy):
        raise TypeError(f"retry must be a RetryPolicy, not {type(retry).__name__}")
    if channel_retry is None:
        return
    _check_per_channel("channel_retry", channel_retry, channels, "RetryPolicy")
    for name, policy in channel_retry.items():
        if not isinstance(policy, RetryPolicy):
            raise TypeError(
                f"channel_retry[{name!r}] must be a RetryPolicy, not {type(policy).__name__}"
            )


def _meta(delivery: Delivery) -> dict[str, object]:
    return {
        "delivery_id": str(delivery.id),
        "channel": delivery.channel,
        "notification_key": delivery.notification_key,
        "status": delivery.status.value,
        "max_attempts": delivery.max_attempts,
    }


def _suppression_at_notify(
    policies: Sequence[Policy], delivery: Delivery, context: PolicyContext
) -> str | None:
    """The reason the policies suppress ``delivery`` with at notify time, or ``None``."""
    # Only a suppression is applied at notify time. A deferral is left to
    # perform(), where it is journaled with its reason and counted against
    # the deferral bound; the policies run again there anyway.
    decision, _ = evaluate_policies(policies, delivery, context)
    match decision:
        case Suppress(reason=reason):
            return reason
        case Defer() | Proceed():
            return None
        case _:
            assert_never(decision)
