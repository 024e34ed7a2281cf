"""The store's transitions of a delivery named by id: exhaust, suppress, cancel, defer; notes.

Each is one write transaction that reads the row for update
(:func:`~chimeway_core.ledger.locked.read_for_write`, a compare-and-set on
``expected_version`` when given) and applies the move
(:func:`~chimeway_core.ledger.locked.transition_on` or
:func:`~chimeway_core.ledger.locked.defer_on`), journaled with it.
Mixed into :class:`~chimeway_core.ledger.store.SQLStore`, which provides
its write transactions. :meth:`Transitions.note_revealed` journals what an
operator saw without moving the delivery.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from datetime import datetime
from typing import Final
from uuid import UUID

from sqlalchemy import Connection, select

from chimeway_core.errors import DeliveryNotFoundError, StaleDeliveryError
from chimeway_core.ledger import statements as sql
from chimeway_core.ledger.locked import defer_on, read_for_write, transition_on
from chimeway_core.ledger.rows import journal_values
from chimeway_core.ledger.schema import REASON_LENGTH
from chimeway_core.ledger.validation import aware, check_id, check_text
from chimeway_core.records import Delivery, JournalKind
from chimeway_core.states import Event

__all__ = ["Transitions"]

# How often cancel() reads again after a racing write moved the version.
_CANCEL_TRIES: Final = 10


class Transitions:
    """The store's transitions by id, each one write transaction (``_write``)."""

    def _write(self) -> AbstractContextManager[Connection]:
        raise NotImplementedError  # pragma: no cover - SQLStore provides it

    def _transition(
        self,
        delivery_id: UUID,
        event: Event,
        *,
        reason: str | None,
        expected_version: int | None,
        now: datetime,
        by: str | None = None,
    ) -> Delivery:
        check_id(delivery_id)
        now = aware(now, "now")
        detail = None if by is None else {"by": by}
        with self._write() as conn:
            current = read_for_write(conn, delivery_id, expected_version)
            return transition_on(conn, current, event, reason=reason, now=now, detail=detail)

    def exhaust(self, delivery_id: UUID, *, expected_version: int, now: datetime) -> Delivery:
        """Move a ``failed`` delivery to ``cancelled`` / ``retries_exhausted``.

        Compare-and-set on ``expected_version`` (:class:`StaleDeliveryError`
        if it moved); :class:`IllegalTransitionError` from any other status;
        :class:`DeliveryNotFoundError` for an unknown id.
        """
        return self._transition(
            delivery_id, Event.EXHAUST, reason=None, expected_version=expected_version, now=now
        )

    def suppress(
        self, delivery_id: UUID, reason: str, *, expected_version: int | None, now: datetime
    ) -> Delivery:
        """Move a live delivery to ``suppressed`` with the policy's ``reason``.

        With ``expected_version`` it is a compare-and-set
        (:class:`StaleDeliveryError` if the version moved); without, it
        applies to whatever version it reads (still fenced against a write
        racing it). Terminal deliveries raise :class:`IllegalTransitionError`.
        """
        check_text(reason, "reason", max_length=REASON_LENGTH)
        return self._transition(
            delivery_id, Event.SUPPRESS, reason=reason, expected_version=expected_version, now=now
        )

    def cancel(self, delivery_id: UUID, *, now: datetime, by: str | None = None) -> Delivery:
        """Cancel a live delivery (reason ``cancelled``), even while it is leased.

        Bumping ``version`` fences the leased worker off: its
        ``record_attempt`` raises :class:`LeaseLostError`. A racing write
        makes cancel re-read and try again. Terminal deliveries raise
        :class:`IllegalTransitionError`; unknown ids
        :class:`DeliveryNotFoundError`. ``by`` (who cancelled it) goes into the
        journal entry's ``detail["by"]``.
        """
        for _ in range(_CANCEL_TRIES - 1):
            try:
                return self._transition(
                    delivery_id, Event.CANCEL, reason=None, expected_version=None, now=now, by=by
                )
            except StaleDeliveryError:
                continue
        return self._transition(
            delivery_id, Event.CANCEL, reason=None, expected_version=None, now=now, by=by
        )

    def note_revealed(self, delivery_id: UUID, *, now: datetime, by: str) -> None:
        """Journal that ``by`` was shown the delivery's payload (a ``revealed`` entry).

        The delivery itself is not written. An unknown id raises
        :class:`DeliveryNotFoundError` and writes nothing.
        """
        check_id(delivery_id)
        now = aware(now, "now")
        check_text(by, "by", max_length=REASON_LENGTH)
        with self._write() as conn:
            if not conn.execute(select(sql.D.id).where(sql.D.id == delivery_id)).first():
                raise DeliveryNotFoundError(delivery_id)
            conn.execute(
                sql.INSERT_JOURNAL,
                journal_values(delivery_id, now, JournalKind.REVEALED, detail={"by": by}),
            )

    def defer(
        self,
        delivery_id: UUID,
        until: datetime,
        reason: str,
        *,
        expected_version: int | None,
        now: datetime,
    ) -> Delivery:
        """Push a live delivery to ``until`` for ``reason`` (a policy decision).

        Sets ``scheduled_at`` and ``reason``, bumps ``deferral_count`` and
        ``version`` and journals a ``deferred`` entry; never touches the status
        or ``attempt_count``. Compare-and-set like :meth:`suppress`; a terminal
        delivery raises :class:`DeliveryTerminalError`.
        """
        check_id(delivery_id)
        now = aware(now, "now")
        until = aware(until, "until")
        check_text(reason, "reason", max_length=REASON_LENGTH)
        with self._write() as conn:
            current = read_for_write(conn, delivery_id, expected_version)
            return defer_on(conn, current, until, reason, now=now)
