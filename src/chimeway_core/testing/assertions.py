"""Assertion helpers, in the spirit of ``Oban.Testing``.

Each raises :class:`AssertionError` with a message that says what was
expected and what the ledger or the queue holds instead. Their arguments are
checked first, so a mistake in the test is never a passing or confusing
assertion: a ``delivery_id`` that is not a :class:`uuid.UUID`, a ``status``
that is not a :class:`~chimeway_core.states.DeliveryStatus` or a count that
is not an ``int``, or an ``engine`` whose backend cannot say what is
enqueued, is a :class:`TypeError`, a negative count a
:class:`ValueError`, and an id the ledger does not hold
:class:`~chimeway_core.errors.DeliveryNotFoundError`.
"""

from __future__ import annotations

from typing import Protocol
from uuid import UUID

from chimeway_core._checks import whole
from chimeway_core.engine import Chimeway
from chimeway_core.records import DeliveryHistory
from chimeway_core.states import DeliveryStatus

__all__ = ["assert_attempts", "assert_delivery", "assert_enqueued", "assert_not_enqueued"]

_UNSET = object()


class _Inspectable(Protocol):
    def is_enqueued(self, delivery_id: UUID) -> bool: ...


def _queue(engine: Chimeway) -> _Inspectable:
    backend = engine.backend
    if not hasattr(backend, "is_enqueued"):
        raise TypeError(
            f"engine's backend {type(backend).__name__} cannot say what is enqueued"
            " (it has no is_enqueued)"
        )
    return backend  # type: ignore[return-value]


def assert_enqueued(engine: Chimeway, delivery_id: UUID) -> None:
    """Assert the delivery has a pending job (queued or scheduled) on the engine's backend.

    The delivery must exist in the engine's ledger.
    """
    queue = _queue(engine)
    engine.get(delivery_id)  # a wrong or unknown id is the test's mistake, not "no job"
    if not queue.is_enqueued(delivery_id):
        raise AssertionError(f"expected a pending job for delivery {delivery_id}, found none")


def assert_not_enqueued(engine: Chimeway, delivery_id: UUID) -> None:
    """Assert the delivery has no pending job on the engine's backend.

    The delivery must exist in the engine's ledger.
    """
    queue = _queue(engine)
    engine.get(delivery_id)  # a wrong or unknown id would otherwise pass
    if queue.is_enqueued(delivery_id):
        raise AssertionError(f"expected no pending job for delivery {delivery_id}, found one")


def assert_delivery(
    engine: Chimeway,
    delivery_id: UUID,
    *,
    status: DeliveryStatus,
    reason: str | object | None = _UNSET,
    attempts: int | None = None,
) -> DeliveryHistory:
    """Assert the delivery's final status (and reason and attempt count, when given).

    ``attempts=None`` (the default) does not check the count. Returns the
    history for further checks.
    """
    if not isinstance(status, DeliveryStatus):
        raise TypeError(f"status must be a DeliveryStatus, not {type(status).__name__}")
    if attempts is not None:
        whole("attempts", attempts, minimum=0)
    history = engine.get(delivery_id)
    delivery = history.delivery
    problems = []
    if delivery.status is not status:
        problems.append(f"status {delivery.status.value!r} (expected {status.value!r})")
    if reason is not _UNSET and delivery.reason != reason:
        problems.append(f"reason {delivery.reason!r} (expected {reason!r})")
    if attempts is not None and len(history.attempts) != attempts:
        problems.append(f"{len(history.attempts)} attempts (expected {attempts})")
    if problems:
        raise AssertionError(f"delivery {delivery_id}: " + ", ".join(problems))
    return history


def assert_attempts(engine: Chimeway, delivery_id: UUID, expected: int) -> None:
    """Assert how many attempts the ledger holds for the delivery."""
    whole("expected", expected, minimum=0)
    actual = len(engine.get(delivery_id).attempts)
    if actual != expected:
        raise AssertionError(f"delivery {delivery_id}: {actual} attempts (expected {expected})")
