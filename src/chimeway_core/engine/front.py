"""The front door: :class:`Chimeway`, built once, delegating to the stages.

Theory of operation
-------------------
Construction checks every setting and part (:func:`~.settings.build_settings`)
and wires the stages: :class:`~.notify.Notifier`, :class:`~.handover.HandOver`,
:class:`~.perform.Performer` and :class:`~.upkeep.Upkeep`, each holding the
frozen :class:`~.settings.Settings` and the collaborators it uses. Each
public method is one delegation to a stage.

The settings are fixed once built (assigning one raises). The collaborators
(``store``, ``backend``, ``clock``, ``telemetry``) stay assignable, as a test
swaps in a double: assigning one wires the stages again with it, while the
ids queued but not yet flushed from the outbox (:class:`~.handover.Queued`)
stay the engine's.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, Final
from uuid import UUID

from sqlalchemy.orm import Session, scoped_session

from chimeway_core.backend import SupportsEnqueue, as_backend
from chimeway_core.channels.base import Channel
from chimeway_core.clock import Clock, SystemClock
from chimeway_core.engine import operate
from chimeway_core.engine.handover import RELAY_BATCH, HandOver, Queued
from chimeway_core.engine.notify import Notifier
from chimeway_core.engine.perform import Performer, _Admission
from chimeway_core.engine.settings import Settings, build_settings
from chimeway_core.engine.upkeep import RescueReport, Upkeep
from chimeway_core.explain import explain
from chimeway_core.jobs import Backend, JobResult
from chimeway_core.ledger.protocol import LockedRow
from chimeway_core.policies import MAX_DEFERRALS, Policy
from chimeway_core.records import Claim, Delivery, DeliveryHistory, NewDelivery, Resent
from chimeway_core.retry import RetryPolicy
from chimeway_core.store import SQLStore
from chimeway_core.telemetry import Telemetry, TelemetryEvent

__all__ = ["Chimeway"]

#: The settings :class:`Chimeway` checks against each other when built, and so
#: refuses to rebind afterwards.
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

#: The collaborators: assignable, and the stages are wired again with the new one.
_PARTS: Final = frozenset({"store", "backend", "clock", "telemetry"})


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

    store: SQLStore
    backend: Backend | SupportsEnqueue
    clock: Clock
    telemetry: Telemetry

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
        self._settings: Settings = build_settings(
            store,
            backend,
            channels,
            routes=routes,
            policies=policies,
            retry=retry,
            channel_retry=channel_retry,
            clock=clock,
            telemetry=telemetry,
            lease_margin=lease_margin,
            max_deferrals=max_deferrals,
            relay_grace=relay_grace,
            requeue_after=requeue_after,
            retention=retention,
            rand=rand,
        )
        self.store = store
        self.backend = backend
        self.clock = clock or SystemClock()
        self.telemetry = telemetry or Telemetry()
        self._queued = Queued()
        self._assemble()
        self._built = True

    def _assemble(self) -> None:
        """Wire the stages with the settings and the current collaborators."""
        settings = self._settings
        # What the engine calls: the backend, or one that only looks like a
        # Backend wrapped once (it passes queue= only when a route asks).
        backend = as_backend(self.backend)
        handover = HandOver(settings, self.store, backend, self.clock, self._queued)
        performer = Performer(
            settings, self.store, self.clock, self.telemetry, before_call=backend.before_call
        )
        self._handover = handover
        self._notifier = Notifier(settings, self.store, self.clock, self.telemetry, handover)
        self._performer = performer
        self._upkeep = Upkeep(settings, self.store, self.clock, self.telemetry, performer, handover)

    def __setattr__(self, name: str, value: object) -> None:
        # The checks above hold for the engine's life: a setting is not rebound
        # afterwards, past them (a retention below min_retention, say).
        built = getattr(self, "_built", False)
        if name in _FIXED and built:
            raise AttributeError(
                f"Chimeway.{name} is fixed when the engine is built; build another engine"
            )
        object.__setattr__(self, name, value)
        if name in _PARTS and built:
            self._assemble()

    def __repr__(self) -> str:
        return f"Chimeway(store={self.store!r}, channels={sorted(self.channels)})"

    # ------------------------------------------------------------------ settings

    @property
    def channels(self) -> Mapping[str, Channel]:
        """Channel name → :class:`~chimeway_core.channels.Channel` (read-only)."""
        return self._settings.channels

    @property
    def routes(self) -> Mapping[str, str]:
        """Channel name → the queue its jobs go to (read-only)."""
        return self._settings.routes

    @property
    def policies(self) -> tuple[Policy, ...]:
        """:class:`~chimeway_core.policies.ExpiryPolicy`, then the policies given, in order."""
        return self._settings.policies

    @property
    def retry(self) -> RetryPolicy:
        """The default :class:`RetryPolicy`."""
        return self._settings.retry

    @property
    def channel_retry(self) -> Mapping[str, RetryPolicy]:
        """Channel name → its own :class:`RetryPolicy` (read-only)."""
        return self._settings.channel_retry

    @property
    def lease_margin(self) -> float:
        """Seconds added to a channel's ``timeout`` to make its lease."""
        return self._settings.lease_margin

    @property
    def max_deferrals(self) -> int:
        """Deferrals after which a delivery is suppressed ``too_many_deferrals``."""
        return self._settings.max_deferrals

    @property
    def relay_grace(self) -> timedelta:
        """How old an outbox row must be before a relay hands it over."""
        return self._settings.relay_grace

    @property
    def requeue_after(self) -> timedelta:
        """How long a live, due delivery stays untouched before the rescuer requeues it."""
        return self._settings.requeue_after

    @property
    def retention(self) -> float | None:
        """Seconds a terminal delivery is kept before :meth:`rescue` prunes it (``None``: kept)."""
        return self._settings.retention

    @property
    def min_retention(self) -> float:
        """The shortest ``older_than`` :meth:`prune` accepts, in seconds.

        The longest lease a worker can hold (a channel's ``timeout`` plus
        ``lease_margin``), so that no worker is still calling a channel for a
        delivery as it is deleted, and the longest window of a
        :class:`~chimeway_core.policies.RateLimitPolicy` or
        :class:`~chimeway_core.policies.RecipientRateLimitPolicy` among the
        engine's policies, whose counts take in the attempts of terminal
        deliveries.
        """
        return self._settings.min_retention

    @property
    def queues(self) -> tuple[str, ...]:
        """The queues :attr:`routes` names, each once, sorted (the default queue is not one)."""
        return tuple(sorted(set(self.routes.values())))

    def worker_queues(self, default: str) -> list[str]:
        """The queues a worker serves unless told: ``default`` (its backend's), then the routed."""
        return list(dict.fromkeys([default, *self.queues]))

    def queue_for(self, channel: str) -> str | None:
        """The queue a ``channel``'s jobs go to: its route, or ``None`` for the default."""
        return self._settings.queue_for(channel)

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
        session: Session | scoped_session[Any] | None = None,
    ) -> Delivery:
        """Record a delivery and queue it; return the delivery as written.

        Idempotent on ``(channel, idempotency_key)``: a repeat of the same
        request returns the existing delivery (its
        :attr:`~chimeway_core.records.Delivery.found_existing` is ``True``)
        and queues nothing. The same
        request has the same ``recipient``, ``payload`` (compared as JSON:
        ``1``, ``1.0`` and ``true`` differ, key order does not),
        ``notification_key`` and ``metadata``; ``scheduled_at``,
        ``expires_at`` and ``max_attempts`` stay the first request's, whatever
        a repeat says (they are often computed from the clock or the engine's
        settings at each call). A repeat of a different request raises
        :class:`~chimeway_core.errors.IdempotencyKeyConflictError`, naming the
        key and nothing of either request, and writes, queues and emits
        nothing. A key starting with ``chimeway.resend:`` is reserved for
        resend copies (:func:`~chimeway_core.records.resend_key`) and refused.
        The channel may refuse a delivery it could never send (its
        ``check_delivery``; the webhook channel, a key that cannot be an HTTP
        header value). A delivery a policy suppresses is
        still recorded, terminal, with the policy's reason. With ``session``
        the rows are written in the caller's transaction and the job is queued
        only after its outermost transaction commits; a rollback leaves no
        delivery and no job. A ``scoped_session`` (Flask-SQLAlchemy's
        ``db.session``) stands for its current session. Invalid input raises
        a :class:`~chimeway_core.errors.ChimewayError` subclass (a bad field
        :class:`~chimeway_core.errors.InvalidDeliveryError`, by name; an
        unknown channel :class:`~chimeway_core.errors.UnknownChannelError`)
        and writes nothing;
        a ``session`` that is neither a :class:`~sqlalchemy.orm.Session` nor a
        :class:`~sqlalchemy.orm.scoped_session` is a :class:`TypeError`.
        """
        return self._notifier.notify(
            channel,
            recipient,
            payload,
            notification_key=notification_key,
            idempotency_key=idempotency_key,
            max_attempts=max_attempts,
            scheduled_at=scheduled_at,
            expires_at=expires_at,
            metadata=metadata,
            session=session,
        )

    def notify_many(
        self, specs: Iterable[NewDelivery], *, session: Session | scoped_session[Any] | None = None
    ) -> list[Delivery]:
        """Record and queue many deliveries in a handful of statements.

        Same guarantees as :meth:`notify`, per spec, in order. One invalid
        spec writes none of them; so does one spec whose key holds a different
        request (the :class:`~chimeway_core.errors.IdempotencyKeyConflictError`
        names every such key, a later spec reusing a key of the batch for
        another request included).
        """
        return self._notifier.notify_many(specs, session=session)

    def resend(
        self,
        delivery_id: UUID,
        *,
        session: Session | scoped_session[Any] | None = None,
        by: str | None = None,
    ) -> Resent:
        """Send a delivery that ended unsent (cancelled or suppressed) again, as a copy.

        Nothing leaves a terminal state: the original stays as it is, with a
        ``resent`` journal entry naming the copy. The copy is a new delivery
        with the original's channel, recipient, payload, notification key,
        ``max_attempts``, ``expires_at`` and metadata, due now, with attempts
        (and a provider idempotency key) of its own; it is notified like any
        other, so the policies see it. Idempotent: a delivery has at most one
        copy, and resending it again returns that copy (``created=False``) and
        queues nothing (a delivery holding the copy's key that the original's
        journal does not name as its copy raises
        :class:`~chimeway_core.errors.IdempotencyKeyConflictError`); a copy
        that ends unsent is resent by its own id.
        ``session`` works as in :meth:`notify`. An unknown id raises
        :class:`~chimeway_core.errors.DeliveryNotFoundError`; a live or
        succeeded delivery :class:`~chimeway_core.errors.NotResendableError`; a
        channel this engine no longer has
        :class:`~chimeway_core.errors.UnknownChannelError`. Each writes nothing.
        ``by`` names who resent it, in the original's ``resent`` journal entry
        (``detail["by"]``).
        """
        return self._notifier.resend(delivery_id, session=session, by=by)

    # ------------------------------------------------------------------ hand-over

    def flush_outbox(self) -> None:
        """Delete the outbox rows of deliveries this engine has already queued."""
        self._handover.flush_outbox()

    def relay(self, *, batch_size: int = RELAY_BATCH, grace: float | None = None) -> int:
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
        relayed = self._handover.relay(batch_size=batch_size, grace=grace)
        if relayed:
            self.telemetry.emit(TelemetryEvent.RELAYED, {"count": relayed})
        return relayed

    # ------------------------------------------------------------------ perform

    def perform(self, delivery_id: UUID) -> JobResult:
        """Run one queue job for ``delivery_id``; see :mod:`chimeway_core.engine.perform`.

        Returns the :class:`JobResult` the backend translates; raises
        :class:`UnhandledOutcomeError` (after scheduling the next run) for a
        shape the dispatch table does not cover, and :class:`TypeError` for a
        ``delivery_id`` that is no :class:`uuid.UUID` (backends parse theirs
        with :func:`~chimeway_core.jobs.parse_delivery_id`).
        """
        return self._performer.perform(delivery_id)

    # ------------------------------------------------------------------ operators

    def get(self, delivery_id: UUID) -> DeliveryHistory:
        """The delivery with its attempts and journal; raises if it does not exist."""
        return operate.history(self.store, delivery_id)

    def cancel(self, delivery_id: UUID, *, by: str | None = None) -> Delivery:
        """Cancel a live delivery (reason ``cancelled``); a leased worker is fenced off.

        A terminal delivery raises :class:`IllegalTransitionError`; an unknown
        id :class:`DeliveryNotFoundError`. ``by`` names who cancelled it, in
        the journal entry's ``detail["by"]``.
        """
        now = self.clock.now()
        return operate.cancel(self.store, self.telemetry, delivery_id, now=now, by=by).after

    def explain(self, delivery_id: UUID) -> list[str]:
        """Why the delivery is where it is: one line per attempt and journal entry."""
        return explain(self.get(delivery_id))

    # ------------------------------------------------------------------ upkeep

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
        return self._upkeep.prune(older_than, batch_size=batch_size)

    def count_prunable(self, older_than: float) -> int:
        """How many deliveries :meth:`prune` with this ``older_than`` would delete now."""
        return self._upkeep.count_prunable(older_than)

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
        return self._upkeep.rescue(now, limit=limit, catch_up=catch_up, resolve=self._resolve_lost)

    # ------------------------------------------------------------------ for tests
    # Private names the test suites reach for (fault injection patches
    # _resolve_lost on the class), each one delegation to its stage.

    def _resolve_lost(self, claim: Claim, now: datetime) -> bool:
        return self._upkeep.resolve_lost(claim, now)

    def _admit(self, locked: LockedRow, delivery: Delivery, now: datetime) -> _Admission:
        return self._performer.admit(locked, delivery, now)

    def _quick_claim(self, delivery_id: UUID) -> Claim | None:
        return self._performer.quick_claim(delivery_id)

    def _claims_quickly(self) -> bool:
        return self._performer.claims_quickly()

    def _owner(self) -> str:
        return self._settings.owner()

    @property
    def _enqueued_lock(self) -> threading.Lock:
        return self._queued.lock

    @property
    def _enqueued(self) -> list[UUID]:
        return self._queued.ids

    @_enqueued.setter
    def _enqueued(self, ids: list[UUID]) -> None:
        self._queued.ids = ids
