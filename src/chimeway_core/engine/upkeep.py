"""Upkeep: what keeps the ledger converging when workers and queues fail.

Theory of operation
-------------------
A :meth:`~Upkeep.rescue` pass runs on a schedule (``chimeway rescue``, or a
worker's rescue timer), safely from several processes at once:

1. An attempt left in flight past its lease (a worker died mid-call) is
   recorded as outcome ``unknown`` through the same
   :meth:`~chimeway_core.engine.perform.Performer.record` a job uses, so the
   dispatch table decides: retried with the same idempotency key on an
   at-least-once channel, cancelled ``outcome_unknown`` on an at-most-once one.
2. Live, due deliveries untouched for ``requeue_after`` are queued again (a
   lost or flushed queue); the backend's job ids dedupe. The report counts
   as ``requeued`` only the jobs the backend put on a queue
   (:attr:`~chimeway_core.backend.Enqueued.QUEUED`), and as ``pending`` those
   whose job it found already queued, running or waiting for later.
3. The outbox is relayed (:meth:`~chimeway_core.engine.handover.HandOver.relay`).
4. With a ``retention``, deliveries terminal for longer are pruned.

:meth:`~Upkeep.prune` deletes terminal deliveries older than an age that is
at least the engine's ``min_retention``, so no worker is still calling a
channel for a delivery as it is deleted, and no rate limit loses a count.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

import attrs

from chimeway_core.channels.base import DeliveryGuarantee
from chimeway_core.clock import Clock, ensure_aware
from chimeway_core.engine.handover import RELAY_BATCH, HandOver
from chimeway_core.engine.perform import Performer
from chimeway_core.engine.settings import Settings, meta
from chimeway_core.errors import LeaseLostError
from chimeway_core.jobs import Enqueued, JobKind
from chimeway_core.ledger.protocol import Ledger
from chimeway_core.outcomes import Classification, Outcome
from chimeway_core.records import Claim
from chimeway_core.telemetry import Telemetry, TelemetryEvent

__all__ = ["RescueReport", "Upkeep"]


@attrs.frozen
class RescueReport:
    """What one :meth:`Chimeway.rescue` pass did."""

    resolved: int
    """In-flight attempts of dead workers resolved as ``unknown``."""
    requeued: int
    """Stranded deliveries (due, live, untouched) whose job the backend put on a queue."""
    relayed: int
    """Outbox rows handed to the backend."""
    pruned: int = 0
    """Deliveries deleted for the engine's ``retention`` (none without one)."""
    pending: int = 0
    """Stranded deliveries whose job the backend found pending and did not queue again:
    already queued or running, or (a backend that cannot queue it now) waiting for later."""

    @property
    def idle(self) -> bool:
        """Whether the pass found nothing to do (workers log only the passes that did)."""
        return not (self.resolved or self.requeued or self.relayed or self.pruned or self.pending)


#: How one lost attempt is resolved: ``True`` when this pass resolved it.
Resolver = Callable[[Claim, datetime], bool]


@attrs.frozen
class Upkeep:
    """Rescues lost attempts and stranded deliveries, relays the outbox, prunes."""

    settings: Settings
    store: Ledger
    clock: Clock
    telemetry: Telemetry
    performer: Performer
    handover: HandOver

    def rescue(
        self,
        now: datetime | None = None,
        *,
        limit: int = 500,
        catch_up: bool = False,
        resolve: Resolver | None = None,
    ) -> RescueReport:
        """One rescue pass (see ``Chimeway.rescue``).

        Each expired claim goes to ``resolve`` (default :meth:`resolve_lost`):
        the engine passes its own ``_resolve_lost`` so that a fault-injection
        test can replace it on the class.
        """
        resolve = resolve or self.resolve_lost
        now = ensure_aware(now, "now") if now is not None else self.clock.now()
        resolved = 0
        for claim in self.store.expired_claims(now=now, limit=limit):
            if resolve(claim, now):
                resolved += 1
        untouched = None if catch_up else now - self.settings.requeue_after
        stranded = self.store.due(now=now, limit=limit, not_touched_since=untouched)
        handed = self.handover.enqueue_many([(d.id, d.channel) for d in stranded])
        requeued = sum(outcome is Enqueued.QUEUED for outcome in handed)
        relayed = self.handover.relay(batch_size=RELAY_BATCH, grace=0.0 if catch_up else None)
        if relayed:
            self.telemetry.emit(TelemetryEvent.RELAYED, {"count": relayed})
        pruned = 0
        if self.settings.retention is not None:
            before = self.settings.prune_cutoff("retention", self.settings.retention, now)
            pruned = self.store.prune(before=before, batch_size=limit, limit=limit)
        return RescueReport(
            resolved=resolved,
            requeued=requeued,
            relayed=relayed,
            pruned=pruned,
            pending=len(handed) - requeued,
        )

    def resolve_lost(self, claim: Claim, now: datetime) -> bool:
        """Record a dead worker's in-flight attempt as ``unknown``; requeue a retry."""
        channel = self.settings.channels.get(claim.delivery.channel)
        guarantee = channel.guarantee if channel else DeliveryGuarantee.AT_MOST_ONCE
        shape = Classification(
            Outcome.UNKNOWN, None, {}, None, "worker lost: lease expired with the call in flight"
        )
        # The rescue event says what the record left: the status after it and
        # the lost attempt's outcome, action and dispatch row.
        report: dict[str, object] = {}
        try:
            result = self.performer.record(claim, shape, guarantee, now, report)
        except LeaseLostError:  # another rescuer, or the worker itself, got there first
            return False
        self.telemetry.emit(
            TelemetryEvent.RESCUED,
            meta(claim.delivery) | report | {"attempt": claim.attempt.number},
        )
        if result.kind is not JobKind.ACK:
            assert result.run_at is not None
            self.handover.enqueue(result.delivery_id, claim.delivery.channel, at=result.run_at)
        return True

    def prune(self, older_than: float, *, batch_size: int = 1000) -> int:
        """Delete deliveries terminal for ``older_than`` seconds (see ``Chimeway.prune``)."""
        before = self.settings.prune_cutoff("older_than", older_than, self.clock.now())
        return self.store.prune(before=before, batch_size=batch_size)

    def count_prunable(self, older_than: float) -> int:
        """How many deliveries :meth:`prune` with this ``older_than`` would delete now."""
        before = self.settings.prune_cutoff("older_than", older_than, self.clock.now())
        return self.store.count_prunable(before=before)
