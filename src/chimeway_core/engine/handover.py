"""Hand-over: delivery ids go to the backend, on their channel's queue.

Theory of operation
-------------------
``notify()`` writes a delivery and its outbox row in one transaction. Once
that transaction has committed, :meth:`HandOver.hand_over` queues the id
(now, or at its ``scheduled_at``) and remembers it in the engine's
:class:`Queued` buffer; the outbox rows of remembered ids are deleted in
batches (:meth:`HandOver.flush_outbox`, every :data:`OUTBOX_FLUSH_AT` ids and
before each relay). With the caller's ``session``, the hand-over waits for
that session's outermost commit (:meth:`HandOver.after_commit`); a rollback
drops what it rolled back, a savepoint's included. A session that writes in a
transaction someone else owns (Django's, see :mod:`chimeway_core.django`)
carries that owner's commit hook under :data:`ON_COMMIT`: the hand-over is
given to it instead.

A crash between commit and enqueue loses nothing: :meth:`HandOver.relay`
hands every outbox row older than a grace period to the backend, whose job
ids dedupe. Every job of a channel goes to that channel's route, else to
the backend's default queue: ``queue=`` is passed only when routed, so a
backend that takes no ``queue`` still serves an engine without routes.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Final, cast
from uuid import UUID

import attrs
from sqlalchemy import event
from sqlalchemy.orm import Session, SessionTransaction

from chimeway_core._checks import seconds, whole
from chimeway_core.clock import Clock
from chimeway_core.engine.settings import Settings
from chimeway_core.jobs import Backend, Enqueued
from chimeway_core.ledger.outbox import OutboxItem
from chimeway_core.ledger.protocol import Ledger
from chimeway_core.records import Delivery

__all__ = ["ON_COMMIT", "OUTBOX_FLUSH_AT", "RELAY_BATCH", "HandOver", "Queued"]

_SESSION_KEY: Final = "chimeway.pending_enqueue"

#: The ``Session.info`` key of a commit hook: a callable that runs the callable
#: it is given once the transaction the session writes in commits, and never
#: if it rolls back (Django's ``transaction.on_commit``). A session carrying one
#: never commits itself; its hand-over is given to the hook.
ON_COMMIT: Final = "chimeway.on_commit"

#: How many queued ids wait before their outbox rows are deleted.
OUTBOX_FLUSH_AT: Final = 200

#: How many outbox rows a relay hands over per transaction unless told.
RELAY_BATCH: Final = 500


class Queued:
    """The ids an engine has queued whose outbox rows are not deleted yet.

    One per engine, shared by every thread (hence the lock), and kept when a
    collaborator is swapped.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.ids: list[UUID] = []


class _Pending:
    """A session's deliveries awaiting its commit, each with the transaction it was written in.

    ``handover`` is the engine's hand-over as of the last delivery added: an
    engine whose backend was replaced since hands over through the new one.
    """

    def __init__(self, handover: HandOver) -> None:
        self.handover = handover
        self.entries: list[tuple[SessionTransaction | None, Delivery]] = []

    def committed(self, session: Session) -> None:
        """Hand over what the outermost commit made visible."""
        # SQLAlchemy fires after_commit for a released savepoint too, with the
        # savepoint still current: only the outermost commit makes rows visible.
        if session.in_nested_transaction() or not self.entries:
            return
        handed = [delivery for _, delivery in self.entries]
        self.entries.clear()
        self.handover.hand_over(handed, self.handover.clock.now())

    def rolled_back(self, _session: Session, previous: SessionTransaction) -> None:
        """Forget what the rolled-back transaction (or savepoint) took with it."""
        # The rollback of a flush's subtransaction rolls back the nearest
        # savepoint or the outermost transaction around it.
        boundary = previous
        while boundary.parent is not None and not boundary.nested:
            boundary = boundary.parent
        if boundary.parent is None:
            self.entries.clear()
        else:
            self.entries[:] = [
                (owner, delivery)
                for owner, delivery in self.entries
                if not _within(owner, boundary)
            ]

    def ended(self, _session: Session, transaction: SessionTransaction) -> None:
        """Forget everything when the outermost transaction ends, however it ends."""
        # After a commit they were handed over already; after a rollback or a
        # close() without commit they were never written.
        if transaction.parent is None:
            self.entries.clear()


def _within(owner: SessionTransaction | None, boundary: SessionTransaction) -> bool:
    """Whether ``owner`` is ``boundary`` or a transaction begun inside it."""
    while owner is not None:
        if owner is boundary:
            return True
        owner = owner.parent
    return False


@attrs.frozen
class HandOver:
    """Queues delivery ids on their channels' queues and keeps the outbox short."""

    settings: Settings
    store: Ledger
    backend: Backend
    clock: Clock
    queued: Queued

    def enqueue(self, delivery_id: UUID, channel: str, *, at: datetime | None) -> Enqueued:
        """Queue one job on its channel's queue; ``queue=`` only when routed. Says what it did.

        A backend that overrides ``enqueue`` and returns ``None`` did what it was asked.
        """
        queue = self.settings.queue_for(channel)
        if queue is None:
            returned = self.backend.enqueue(delivery_id, at=at)
        else:
            returned = self.backend.enqueue(delivery_id, at=at, queue=queue)
        done = cast("Enqueued | None", returned)  # None from an override written before
        if done is None:
            later = at is not None and at > self.clock.now()
            return Enqueued.SCHEDULED if later else Enqueued.QUEUED
        return done

    def enqueue_many(self, jobs: Sequence[tuple[UUID, str]]) -> list[Enqueued]:
        """Queue due jobs of ``(delivery id, channel)``, one call per queue, in their order.

        Returns what became of each job, in the order of ``jobs`` (all queued when
        a backend that overrides ``enqueue_many`` returns ``None``).
        """
        by_queue: dict[str | None, list[int]] = {}
        for index, (_, channel) in enumerate(jobs):
            by_queue.setdefault(self.settings.queue_for(channel), []).append(index)
        outcomes = [Enqueued.QUEUED] * len(jobs)
        for queue, indexes in by_queue.items():
            ids = [jobs[index][0] for index in indexes]
            done: Sequence[Enqueued] | None
            if queue is None:
                done = self.backend.enqueue_many(ids)
            else:
                done = self.backend.enqueue_many(ids, queue=queue)
            for index, outcome in zip(indexes, done or [], strict=False):
                outcomes[index] = outcome
        return outcomes

    def hand_over(self, deliveries: Sequence[Delivery], now: datetime) -> None:
        """Queue committed live deliveries: the due ones at once, the others at their time."""
        if not deliveries:
            return
        self.enqueue_many([(d.id, d.channel) for d in deliveries if d.scheduled_at <= now])
        for delivery in deliveries:
            if delivery.scheduled_at > now:
                self.enqueue(delivery.id, delivery.channel, at=delivery.scheduled_at)
        with self.queued.lock:
            self.queued.ids.extend(d.id for d in deliveries)
            flush = len(self.queued.ids) >= OUTBOX_FLUSH_AT
        if flush:
            self.flush_outbox()

    def after_commit(self, session: Session, deliveries: Sequence[Delivery]) -> None:
        """Hand ``deliveries`` over once ``session``'s outermost transaction commits.

        A rollback forgets them: the outermost transaction's, or a savepoint's
        that was open when they were written (the savepoint they were written
        in, or one around it). Releasing a savepoint hands nothing over yet.
        A session whose ``info`` holds an :data:`ON_COMMIT` hook gives the
        hand-over to that hook instead, which keeps the same promise.
        """
        on_commit: Callable[[Callable[[], None]], object] | None = session.info.get(ON_COMMIT)
        if on_commit is not None:
            if deliveries:
                handed = list(deliveries)
                on_commit(lambda: self.hand_over(handed, self.clock.now()))
            return
        key = (_SESSION_KEY, self.queued)
        pending: _Pending | None = session.info.get(key)
        if pending is None:
            pending = session.info[key] = _Pending(self)
            event.listen(session, "after_commit", pending.committed)
            event.listen(session, "after_soft_rollback", pending.rolled_back)
            event.listen(session, "after_transaction_end", pending.ended)
        pending.handover = self
        owner = session.get_nested_transaction() or session.get_transaction()
        pending.entries.extend((owner, delivery) for delivery in deliveries)

    def flush_outbox(self) -> None:
        """Delete the outbox rows of deliveries this engine has already queued."""
        with self.queued.lock:
            ids, self.queued.ids = self.queued.ids, []
        if ids:
            self.store.delete_outbox(ids)

    def relay(self, *, batch_size: int, grace: float | None) -> int:
        """Hand committed outbox rows older than ``grace`` seconds to the backend.

        See :meth:`Chimeway.relay <chimeway_core.engine.Chimeway.relay>`, which
        delegates here; ``None`` means the engine's ``relay_grace``.
        """
        if grace is not None:
            seconds("grace", grace)
        whole("batch_size", batch_size, minimum=1)
        self.flush_outbox()
        now = self.clock.now()
        window = self.settings.relay_grace if grace is None else timedelta(seconds=grace)
        before = now - window + timedelta(microseconds=1)
        total = 0

        def hand(items: Sequence[OutboxItem]) -> None:
            self.enqueue_many([(item.delivery_id, item.channel) for item in items])

        while True:
            sent = self.store.relay_outbox(
                hand,
                batch_size=batch_size,
                created_before=before,
                due_before=before,
            )
            total += sent
            if sent < batch_size:
                return total
