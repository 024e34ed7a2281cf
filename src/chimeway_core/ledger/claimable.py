"""May this delivery be claimed now: one rule, written once, in Python and in SQL.

Theory of operation
-------------------
A worker may take a delivery's lease only if the delivery is **live** (not
terminal), **due** (``scheduled_at <= now``), its **lease is free** (nobody
holds one, or the one held has lapsed) and it has **attempts left**
(``attempt_count < max_attempts``). Each of these is a :class:`Condition`
defined once here with two forms side by side: :attr:`Condition.holds`, a
Python predicate on a :class:`~chimeway_core.records.Delivery`, and
:attr:`Condition.where`, the SQLAlchemy expression on the deliveries table
that the ledger's statements put in their ``WHERE``. Rules are conditions
combined with :func:`all_of` and :func:`any_of`, which combine both forms the
same way, so the Python and the SQL of a rule cannot drift apart
(``tests/store/test_claimable.py`` checks that they agree on both databases).

- :data:`CLAIMABLE` (:func:`claimable`, :func:`claimable_where`) is the
  locked claim's rule (``SQLStore.claim``, ``LockedDelivery.claim``).
- :data:`UNCONTESTED` is the same with no lease at all, lapsed or not: a
  lapsed lease may hide an attempt still in flight, which is the rescuer's
  to resolve. It is what ``perform()`` admits, and with :data:`NOT_EXPIRED`
  what the one-statement quick claim takes (:data:`QUICKLY_CLAIMABLE`).
- ``due_unheld`` and ``expired_in_flight`` in
  :mod:`chimeway_core.ledger.statements` (the rescuer's and the gauges'
  lists) are built from the same conditions.

The database adds one guard the row alone cannot show, next to these rules
in every claim: no attempt of the delivery is in flight
(:func:`chimeway_core.ledger.statements.no_attempt_in_flight`). In Python a
claimed delivery shows it by its lease, which the record clears.

``now`` is a timezone-aware :class:`~datetime.datetime` for :attr:`holds`;
for :attr:`where` it is a datetime or a bind parameter (the prebuilt
statements bind it once per execution).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any, Final

import attrs
from sqlalchemy import ColumnElement, and_, bindparam, or_

from chimeway_core.ledger.schema import DeliveryRow, metadata
from chimeway_core.records import Delivery
from chimeway_core.states import TERMINAL_STATUSES, DeliveryStatus

__all__ = [
    "ATTEMPTS_LEFT",
    "CLAIMABLE",
    "DUE",
    "LEASE_FREE",
    "LEASE_LAPSED",
    "LIVE",
    "LIVE_STATUSES",
    "NOT_EXPIRED",
    "QUICKLY_CLAIMABLE",
    "UNCONTESTED",
    "UNLEASED",
    "Condition",
    "all_of",
    "any_of",
    "claimable",
    "claimable_where",
    "unmet",
]

_D: Final = metadata.tables[DeliveryRow.__tablename__].c

#: The statuses a delivery can still leave, in declaration order: taken from
#: :data:`chimeway_core.states.TERMINAL_STATUSES`, never listed a second time.
LIVE_STATUSES: Final = tuple(status for status in DeliveryStatus if status not in TERMINAL_STATUSES)


@attrs.frozen
class Condition:
    """One named condition on a delivery, as a Python predicate and as SQL.

    ``holds(delivery, now)`` and ``where(now)`` say the same thing: a row
    matches ``where(now)`` exactly when the delivery read from it ``holds``.
    """

    name: str
    holds: Callable[[Delivery, datetime], bool]
    where: Callable[[Any], ColumnElement[bool]]
    parts: tuple[Condition, ...] = ()
    """What a combined condition is made of (empty for a single one)."""


def all_of(name: str, *conditions: Condition) -> Condition:
    """The condition that holds when every one of ``conditions`` does (SQL ``AND``)."""
    return Condition(
        name,
        lambda delivery, now: all(c.holds(delivery, now) for c in conditions),
        lambda now: and_(*(c.where(now) for c in conditions)),
        conditions,
    )


def any_of(name: str, *conditions: Condition) -> Condition:
    """The condition that holds when one of ``conditions`` does (SQL ``OR``)."""
    return Condition(
        name,
        lambda delivery, now: any(c.holds(delivery, now) for c in conditions),
        lambda now: or_(*(c.where(now) for c in conditions)),
        conditions,
    )


def _is_live(_now: Any) -> ColumnElement[bool]:
    # One bound parameter per status, not in_(values): a list renders as an
    # expanding parameter, which SQLAlchemy rewrites into the SQL text again
    # at every execution.
    return _D.status.in_([bindparam(f"b_live_{s.value}", s.value) for s in LIVE_STATUSES])


LIVE: Final = Condition("live", lambda d, _now: d.status in LIVE_STATUSES, _is_live)
DUE: Final = Condition(
    "due", lambda d, now: d.scheduled_at <= now, lambda now: _D.scheduled_at <= now
)
UNLEASED: Final = Condition(
    "unleased", lambda d, _now: d.lease_owner is None, lambda _now: _D.lease_owner.is_(None)
)
# A NULL lease end compares to NULL in SQL, which WHERE treats as false.
LEASE_LAPSED: Final = Condition(
    "lease lapsed",
    lambda d, now: d.lease_expires_at is not None and d.lease_expires_at <= now,
    lambda now: _D.lease_expires_at <= now,
)
LEASE_FREE: Final = any_of("lease free", UNLEASED, LEASE_LAPSED)
ATTEMPTS_LEFT: Final = Condition(
    "attempts left",
    lambda d, _now: d.attempt_count < d.max_attempts,
    lambda _now: _D.attempt_count < _D.max_attempts,
)
NOT_EXPIRED: Final = Condition(
    "not expired",
    lambda d, now: d.expires_at is None or d.expires_at > now,
    lambda now: or_(_D.expires_at.is_(None), _D.expires_at > now),
)

#: What the locked claim takes: live, due, lease free, attempts left.
CLAIMABLE: Final = all_of("claimable", LIVE, DUE, LEASE_FREE, ATTEMPTS_LEFT)
#: What ``perform()`` admits: :data:`CLAIMABLE` with no lease at all.
UNCONTESTED: Final = all_of("uncontested", LIVE, DUE, UNLEASED, ATTEMPTS_LEFT)
#: What the one-statement quick claim takes: :data:`UNCONTESTED`, not expired.
QUICKLY_CLAIMABLE: Final = all_of(
    "quickly claimable", LIVE, DUE, UNLEASED, ATTEMPTS_LEFT, NOT_EXPIRED
)


def claimable(delivery: Delivery, now: datetime) -> bool:
    """Whether ``delivery``, as read, may be claimed at ``now`` (:data:`CLAIMABLE`)."""
    return CLAIMABLE.holds(delivery, now)


def claimable_where(now: Any) -> ColumnElement[bool]:
    """:func:`claimable` as SQL on the deliveries table: the claim's ``WHERE``."""
    return CLAIMABLE.where(now)


def unmet(delivery: Delivery, now: datetime, rule: Condition = CLAIMABLE) -> Condition | None:
    """The first part of ``rule`` that ``delivery`` fails at ``now``, or ``None``.

    For a caller that acts on why a delivery may not be claimed:
    ``perform()`` ignores a terminal one, defers one not due, and so on.
    """
    for condition in rule.parts or (rule,):
        if not condition.holds(delivery, now):
            return condition
    return None
