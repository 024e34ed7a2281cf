"""Notify: a delivery is validated, shown to the policies, written, then handed over.

Theory of operation
-------------------
:meth:`Notifier.notify_many` has the store validate every spec and draft
each delivery as it will write it (its id and defaults filled in; bad input
is an :class:`~chimeway_core.errors.InvalidDeliveryError`, never a policy
failing on it, and nothing is written). Each draft must then name a channel
of the engine, which may refuse it (``check_delivery``: a delivery it could
never send), and is shown to the policies; only a suppression is applied at
notify time, and the delivery is still recorded, terminal, with the policy's
reason. The store then writes the drafts with the reasons decided here:
decisions go up, execution goes down, and the ledger never calls back into
the engine. The delivery and its outbox row are written in one transaction
(the caller's, with ``session``); once it commits, the new live deliveries
go to :class:`~chimeway_core.engine.handover.HandOver`.

:meth:`Notifier.resend` writes a copy of a delivery that ended unsent the
same way: the policies see the copy, and the original stays as it is.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, assert_never
from uuid import UUID

import attrs
from sqlalchemy.orm import Session

from chimeway_core.clock import Clock
from chimeway_core.engine.handover import HandOver
from chimeway_core.engine.settings import Settings, ended, meta, policy_context
from chimeway_core.errors import InvalidDeliveryError
from chimeway_core.ledger import Draft
from chimeway_core.ledger.protocol import Ledger
from chimeway_core.ledger.validation import AnySession, check_session
from chimeway_core.policies import (
    Defer,
    Policy,
    PolicyContext,
    PolicyPhase,
    Proceed,
    Suppress,
    evaluate_policies,
)
from chimeway_core.records import Delivery, NewDelivery, Resent
from chimeway_core.states import DeliveryStatus
from chimeway_core.telemetry import Telemetry, TelemetryEvent

__all__ = ["Notifier"]


@attrs.frozen
class Notifier:
    """Writes new deliveries (and copies of unsent ones) and hands them over."""

    settings: Settings
    store: Ledger
    clock: Clock
    telemetry: Telemetry
    handover: HandOver

    def notify(
        self,
        channel: str,
        recipient: str,
        payload: Any,
        *,
        notification_key: str | None,
        idempotency_key: str | None,
        max_attempts: int | None,
        scheduled_at: datetime | None,
        expires_at: datetime | None,
        metadata: Mapping[str, Any] | None,
        session: AnySession | None,
    ) -> Delivery:
        """One delivery: :meth:`notify_many` of one spec (see ``Chimeway.notify``)."""
        spec = NewDelivery(
            channel=channel,
            recipient=recipient,
            payload=payload,
            notification_key=notification_key,
            idempotency_key=idempotency_key,
            max_attempts=max_attempts
            if max_attempts is not None
            # A channel that is no str is refused by the store, by name.
            else self.settings.retry_for(channel if isinstance(channel, str) else "").max_attempts,
            scheduled_at=scheduled_at,
            expires_at=expires_at,
            metadata={} if metadata is None else metadata,
        )
        return self.notify_many([spec], session=session)[0]

    def notify_many(
        self, specs: Iterable[NewDelivery], *, session: AnySession | None = None
    ) -> list[Delivery]:
        """Record and queue many deliveries (see ``Chimeway.notify_many``)."""
        specs = list(specs)
        with self.telemetry.span("notify", {"count": len(specs)}) as span:
            delivered = self._notify_many(specs, session)
            if len(delivered) == 1:
                span.update(meta(delivered[0]))
            return delivered

    def _notify_many(self, specs: list[NewDelivery], session: AnySession | None) -> list[Delivery]:
        now = self.clock.now()
        if session is not None:
            session = check_session(session)  # before the policies are asked
        # The store validates every spec and drafts each delivery as it will
        # write it (id, defaults); then each must name a channel of this
        # engine and is shown to the policies; then the store writes the
        # drafts with the reasons decided here. Bad input is an
        # InvalidDeliveryError, never a policy (or a lookup) failing on it;
        # nothing is written before both steps pass.
        # The trace this call runs in (the notify span's) goes with each
        # delivery, for the jobs that send it to continue.
        trace_context = self.telemetry.trace_context()
        drafts = self.store.draft_many(specs, now=now)
        if trace_context is not None:  # untraced, the drafts are written as they are
            drafts = [draft.traced(trace_context) for draft in drafts]
        self._check(drafts)
        suppressions = self._suppressions(drafts, now)
        created = self.store.create_many(
            drafts,
            now=now,
            session=session,
            suppress_reasons=[reason for reason, _ in suppressions],
            suppressed_by=[policy for _, policy in suppressions],
        )
        self._created([(c.delivery, c.created) for c in created], now, session)
        return [
            c.delivery if c.created else attrs.evolve(c.delivery, found_existing=True)
            for c in created
        ]

    def resend(
        self, delivery_id: UUID, *, session: AnySession | None = None, by: str | None = None
    ) -> Resent:
        """Write a copy of a delivery that ended unsent (see ``Chimeway.resend``)."""
        now = self.clock.now()
        if session is not None:
            session = check_session(session)
        copy = self.store.draft_resend(delivery_id, now=now, session=session).traced(
            self.telemetry.trace_context()
        )
        self._check([copy])
        [(reason, policy)] = self._suppressions([copy], now)
        resent = self.store.resend(
            copy, now=now, session=session, suppress_reason=reason, suppressed_by=policy, by=by
        )
        if resent.created:
            self.telemetry.emit(
                TelemetryEvent.RESENT, meta(resent.original) | {"copy_id": resent.copy.id}
            )
        self._created([(resent.copy, resent.created)], now, session)
        return resent

    def _check(self, drafts: Sequence[Draft]) -> None:
        """Raise unless each draft names a channel of this engine that can send it.

        An unknown channel is an :class:`~chimeway_core.errors.UnknownChannelError`;
        a channel with a ``check_delivery`` method (see
        :mod:`chimeway_core.channels.base`) is asked, and the
        :class:`~chimeway_core.errors.InvalidDeliveryError` it raises propagates,
        naming the spec in a batch. Before the policies, and before anything is
        written: a delivery the channel can never send is bad input, not a
        failure to retry or an outcome left unknown.
        """
        single = len(drafts) == 1
        for index, draft in enumerate(drafts):
            check = getattr(self.settings.channel(draft.delivery.channel), "check_delivery", None)
            if check is None:
                continue
            try:
                check(draft.delivery)
            except InvalidDeliveryError as error:
                if single:
                    raise
                raise InvalidDeliveryError(
                    f"specs[{index}].{error.field}", error.problem
                ) from error

    def _suppressions(
        self, drafts: Sequence[Draft], now: datetime
    ) -> list[tuple[str | None, str | None]]:
        """Why each drafted delivery is born suppressed, and which policy said so, in order.

        ``(None, None)`` for a delivery no policy suppresses. Each must name a
        channel of this engine (else
        :class:`~chimeway_core.errors.UnknownChannelError`); a policy that
        raises propagates. Asked before anything is written.
        """
        context = policy_context(self.store, now, PolicyPhase.NOTIFY)
        reasons: list[tuple[str | None, str | None]] = []
        for draft in drafts:
            self.settings.channel(draft.delivery.channel)
            reasons.append(_suppression_at_notify(self.settings.policies, draft.delivery, context))
        return reasons

    def _created(
        self, results: Sequence[tuple[Delivery, bool]], now: datetime, session: Session | None
    ) -> None:
        """Report what a create wrote, and hand the new live deliveries to the backend."""
        # Each event's metadata is built only for someone to see it.
        for delivery, created in results if self.telemetry.handlers else ():
            if not created:
                self.telemetry.emit(TelemetryEvent.DUPLICATE_IGNORED, meta(delivery))
                continue
            self.telemetry.emit(TelemetryEvent.CREATED, meta(delivery))
            if delivery.status is DeliveryStatus.SUPPRESSED:
                self.telemetry.emit(TelemetryEvent.SUPPRESSED, meta(delivery) | ended(delivery))
        fresh = [delivery for delivery, created in results if created and not delivery.is_terminal]
        if session is None:
            self.handover.hand_over(fresh, now)
        else:
            self.handover.after_commit(session, fresh)


def _suppression_at_notify(
    policies: Sequence[Policy], delivery: Delivery, context: PolicyContext
) -> tuple[str | None, str | None]:
    """The reason the policies suppress ``delivery`` with at notify time, and the policy."""
    # Only a suppression is applied at notify time. A deferral is left to
    # perform(), where it is journaled with its reason and counted against
    # the deferral bound; the policies run again there anyway.
    decision, policy = evaluate_policies(policies, delivery, context)
    match decision:
        case Suppress(reason=reason):
            return reason, policy
        case Defer() | Proceed():
            return None, None
        case _:
            assert_never(decision)
