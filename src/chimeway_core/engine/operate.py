"""What an operator does to one delivery: read its history, cancel it.

Theory of operation
-------------------
These act on the ledger directly and need no channel, so the command line
runs them with no application loaded (``chimeway show``, ``chimeway
cancel``): :func:`cancel` is the one function both
:meth:`Chimeway.cancel <chimeway_core.engine.Chimeway.cancel>` and ``chimeway
cancel`` call, so both write the same row and emit the same telemetry.
"""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

import attrs

from chimeway_core.engine.settings import ended, meta
from chimeway_core.errors import DeliveryNotFoundError
from chimeway_core.ledger.protocol import Ledger
from chimeway_core.records import Delivery, DeliveryHistory
from chimeway_core.telemetry import Telemetry, TelemetryEvent

__all__ = ["Cancelled", "cancel", "history"]


@attrs.frozen
class Cancelled:
    """A cancelled delivery, as it was just before and as it is now."""

    before: Delivery | None
    """``None`` only if the delivery appeared between the read and the cancel."""
    after: Delivery


def history(store: Ledger, delivery_id: UUID) -> DeliveryHistory:
    """The delivery with its attempts and journal; :class:`DeliveryNotFoundError` if none."""
    found = store.history(delivery_id)
    if found is None:
        raise DeliveryNotFoundError(delivery_id)
    return found


def cancel(
    store: Ledger,
    telemetry: Telemetry,
    delivery_id: UUID,
    *,
    now: datetime,
    by: str | None = None,
) -> Cancelled:
    """Cancel a live delivery (reason ``cancelled``) and report the transition.

    ``by`` names who cancelled it, in the journal entry's ``detail["by"]``.

    A leased worker is fenced off. A terminal delivery raises
    :class:`~chimeway_core.errors.IllegalTransitionError`, an unknown id
    :class:`~chimeway_core.errors.DeliveryNotFoundError`; either writes and
    emits nothing.
    """
    before = store.get(delivery_id)
    after = store.cancel(delivery_id, now=now, by=by)
    telemetry.emit(
        TelemetryEvent.STATUS_TRANSITION,
        meta(after)
        | ended(after)
        | {
            "from_status": before.status.value if before else None,
            "to_status": after.status.value,
            "reason": after.reason,
        },
    )
    return Cancelled(before, after)
