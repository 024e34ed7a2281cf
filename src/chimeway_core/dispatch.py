"""The dispatch table: from the shape of a recorded attempt to what the job does.

Theory of operation
-------------------
After an attempt is recorded (and the delivery's status moved accordingly),
the worker must tell its queue what to do. :func:`decide` answers with one
:class:`Action` (:data:`ACTION_MEANINGS` says what each one does).

The rows are data: the documented rows :data:`DISPATCH_ROWS`, then the
catch-all of the reference worker, :data:`CATCH_ALL_ROWS`: on the final
attempt (``attempt >= max_attempts``) with the delivery in ``failed`` it
converges (``EXHAUST``), on any other shape it raises
(``RAISE``, :class:`~chimeway_core.errors.UnhandledOutcomeError`). Together
they are :data:`TABLE_ROWS`; the first row that matches wins, and the last row
matches everything, so the table is total. The generated page
``docs/dispatch-table.md`` renders exactly these rows.

The rows are compiled at import time into a dict over the whole finite space
(outcome x error-class key x status x "final attempt?"), so :func:`decide`
costs argument checks plus one dict lookup. Error classes that are not
documented — any string, ``None``, any object — share one key,
:data:`~chimeway_core.outcomes.OTHER_CLASSES`. :func:`match_row` is the same
lookup, returning the row's name beside the action (the engine reports it).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

import attrs

from chimeway_core.outcomes import (
    ANY,
    OTHER_CLASSES,
    ErrorClass,
    ErrorClassKey,
    Outcome,
    _Any,
    attempt_event,
    error_class_key,
)
from chimeway_core.states import DeliveryStatus

__all__ = [
    "ACTION_MEANINGS",
    "ANY",
    "CATCH_ALL",
    "CATCH_ALL_ROWS",
    "DISPATCH_ROWS",
    "TABLE_ROWS",
    "Action",
    "AttemptRelation",
    "DispatchRow",
    "attempt_event",
    "decide",
    "match_row",
]


class Action(enum.StrEnum):
    """What the queue job does after an attempt was recorded."""

    ACK = "ack"
    RETRY = "retry"
    EXHAUST = "exhaust"
    RAISE = "raise"


#: What the engine does for each action; the generated docs show it.
ACTION_MEANINGS: Final[Mapping[Action, str]] = MappingProxyType(
    {
        Action.ACK: "the job returns normally.",
        Action.RETRY: "the next attempt is scheduled after the retry policy's delay.",
        Action.EXHAUST: "the engine writes `cancelled`/`retries_exhausted`, then acknowledges.",
        Action.RAISE: "`UnhandledOutcomeError` propagates into the queue's failure record.",
    }
)


class AttemptRelation(enum.StrEnum):
    """Where the attempt number stands relative to ``max_attempts``."""

    ANY = "any"
    BELOW_MAX = "attempt < max_attempts"
    FINAL = "attempt >= max_attempts"


@attrs.frozen
class DispatchRow:
    """One row of the dispatch table: a shape (``ANY`` matches every value) and its action."""

    name: str
    outcome: Outcome | _Any
    error_classes: frozenset[ErrorClass | None] | _Any
    status: DeliveryStatus | _Any
    attempt: AttemptRelation
    action: Action
    why: str


#: The documented rows, in priority order. Matching is on the shape *after*
#: the attempt was recorded: ``status`` is the delivery's new status.
DISPATCH_ROWS: Final[tuple[DispatchRow, ...]] = (
    DispatchRow(
        "succeeded",
        Outcome.SUCCEEDED,
        ANY,
        ANY,
        AttemptRelation.ANY,
        Action.ACK,
        "The channel accepted the notification.",
    ),
    DispatchRow(
        "permanent_or_bounced",
        Outcome.FAILED,
        frozenset({ErrorClass.PERMANENT, ErrorClass.BOUNCED}),
        DeliveryStatus.CANCELLED,
        AttemptRelation.ANY,
        Action.ACK,
        "Recording already wrote cancelled with permanent_failure or bounced.",
    ),
    DispatchRow(
        "temporary_retry",
        Outcome.FAILED,
        frozenset({ErrorClass.TEMPORARY}),
        DeliveryStatus.FAILED,
        AttemptRelation.BELOW_MAX,
        Action.RETRY,
        "Retries remain: schedule the next attempt after the backoff delay.",
    ),
    DispatchRow(
        "temporary_exhausted",
        Outcome.FAILED,
        frozenset({ErrorClass.TEMPORARY}),
        DeliveryStatus.FAILED,
        AttemptRelation.FINAL,
        Action.EXHAUST,
        "The final attempt failed: write cancelled/retries_exhausted, then ack.",
    ),
    DispatchRow(
        "unknown_retry",
        Outcome.UNKNOWN,
        ANY,
        DeliveryStatus.FAILED,
        AttemptRelation.BELOW_MAX,
        Action.RETRY,
        "At-least-once channel lost the answer: retry with the same idempotency key.",
    ),
    DispatchRow(
        "unknown_exhausted",
        Outcome.UNKNOWN,
        ANY,
        DeliveryStatus.FAILED,
        AttemptRelation.FINAL,
        Action.EXHAUST,
        "At-least-once channel lost the answer on the final attempt.",
    ),
    DispatchRow(
        "unknown_at_most_once",
        Outcome.UNKNOWN,
        ANY,
        DeliveryStatus.CANCELLED,
        AttemptRelation.ANY,
        Action.ACK,
        "At-most-once channel lost the answer: recording wrote cancelled/outcome_unknown.",
    ),
)

#: The name the catch-all rows share, in the generated docs and telemetry.
CATCH_ALL: Final = "catch_all"

#: The reference worker's catch-all, after the documented rows: it ends the table.
CATCH_ALL_ROWS: Final[tuple[DispatchRow, ...]] = (
    DispatchRow(
        CATCH_ALL,
        ANY,
        ANY,
        DeliveryStatus.FAILED,
        AttemptRelation.FINAL,
        Action.EXHAUST,
        "A shape no documented row covers (an undocumented error class, or a status the"
        " recording could not have produced), on the final attempt with the delivery in"
        " `failed`: it converges to `cancelled`/`retries_exhausted`.",
    ),
    DispatchRow(
        CATCH_ALL,
        ANY,
        ANY,
        ANY,
        AttemptRelation.ANY,
        Action.RAISE,
        "Every other shape raises `UnhandledOutcomeError` carrying all six fields — after"
        " the engine has scheduled the next attempt, so the delivery is never leaked.",
    ),
)

#: The whole table in priority order: the documented rows, then the catch-all.
TABLE_ROWS: Final[tuple[DispatchRow, ...]] = (*DISPATCH_ROWS, *CATCH_ALL_ROWS)


_ERROR_CLASS_KEYS: Final[tuple[ErrorClassKey, ...]] = (*ErrorClass, None, OTHER_CLASSES)

_Key = tuple[Outcome, ErrorClassKey, DeliveryStatus, bool]


def _row_matches(
    row: DispatchRow,
    outcome: Outcome,
    error_class_key: ErrorClassKey,
    status: DeliveryStatus,
    final: bool,
) -> bool:
    if row.outcome is not ANY and row.outcome is not outcome:
        return False
    if row.error_classes is not ANY and error_class_key not in row.error_classes:
        return False
    if row.status is not ANY and row.status is not status:
        return False
    if row.attempt is AttemptRelation.BELOW_MAX:
        return not final
    if row.attempt is AttemptRelation.FINAL:
        return final
    return True


def _compile() -> dict[_Key, tuple[Action, str]]:
    # next() without a default: a shape no row matches fails the import.
    # Plain tuples: indexing a tuple subclass (a NamedTuple) is not specialized.
    return {
        (outcome, key, status, final): next(
            (row.action, row.name)
            for row in TABLE_ROWS
            if _row_matches(row, outcome, key, status, final)
        )
        for outcome in Outcome
        for key in _ERROR_CLASS_KEYS
        for status in DeliveryStatus
        for final in (False, True)
    }


# Keyed by the enum members themselves: StrEnum members hash as their (cached)
# str value, so the key of the common shape is the arguments as they came.
# A plain dict, not a mapping proxy: the proxy costs a second lookup per call.
_TABLE: Final = _compile()


def _key(
    outcome: object, error_class: object, status: object, attempt: object, max_attempts: object
) -> _Key:
    # The one statement of what a shape is: checked arguments, normalized key.
    # Enums with members cannot be subclassed, so exact type checks are
    # isinstance checks, only cheaper.
    if type(outcome) is not Outcome:
        raise TypeError(f"outcome must be an Outcome, not {type(outcome).__name__}")
    if type(status) is not DeliveryStatus:
        raise TypeError(f"status must be a DeliveryStatus, not {type(status).__name__}")
    if type(attempt) is not int:
        raise TypeError(f"attempt must be an int, not {type(attempt).__name__}")
    if type(max_attempts) is not int:
        raise TypeError(f"max_attempts must be an int, not {type(max_attempts).__name__}")
    if attempt < 1:
        raise ValueError(f"attempt must be >= 1, got {attempt}")
    if max_attempts < 1:
        raise ValueError(f"max_attempts must be >= 1, got {max_attempts}")
    return outcome, error_class_key(error_class), status, attempt >= max_attempts


def match_row(
    outcome: Outcome,
    error_class: object,
    status: DeliveryStatus,
    attempt: int,
    max_attempts: int,
) -> tuple[Action, str]:
    """:func:`decide`, with the name of the row that chose the action.

    The same lookup in the same table; both catch-all rows are named
    ``catch_all``. Raises as :func:`decide` does. The engine calls it: the
    row's name goes into its telemetry.
    """
    return _TABLE[_key(outcome, error_class, status, attempt, max_attempts)]


def decide(
    outcome: Outcome,
    error_class: object,
    status: DeliveryStatus,
    attempt: int,
    max_attempts: int,
) -> Action:
    """Map the shape of a recorded attempt to the :class:`Action` its job takes.

    ``status`` is the delivery's status *after* the attempt was recorded;
    ``error_class`` may be any value, documented or not. Raises
    :class:`TypeError` when ``outcome`` or ``status`` is not the enum itself
    (strings are never coerced) and :class:`ValueError` naming the argument
    when ``attempt`` or ``max_attempts`` is below 1. It never raises for an
    unknown shape: it returns :attr:`Action.RAISE` and the caller raises.
    """
    # The hot path: arguments that already are a key of the table are looked
    # up as they came, with no call; every other shape takes _key().
    if (
        type(outcome) is Outcome
        and type(status) is DeliveryStatus
        and type(attempt) is int
        and type(max_attempts) is int
        and attempt >= 1
        and max_attempts >= 1
    ):
        if error_class is None or type(error_class) is ErrorClass:
            return _TABLE[outcome, error_class, status, attempt >= max_attempts][0]
        if type(error_class) is str:
            # A documented class read back from the database equals its member;
            # any other string is undocumented.
            final = attempt >= max_attempts
            row = _TABLE.get((outcome, error_class, status, final))  # type: ignore[arg-type]
            return (row or _TABLE[outcome, OTHER_CLASSES, status, final])[0]
    return _TABLE[_key(outcome, error_class, status, attempt, max_attempts)][0]
