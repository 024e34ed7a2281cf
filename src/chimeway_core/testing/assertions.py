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

from collections.abc import Mapping
from typing import Any, Final, Protocol
from uuid import UUID

from chimeway_core._checks import whole
from chimeway_core.engine import Chimeway
from chimeway_core.records import Delivery, DeliveryHistory
from chimeway_core.states import DeliveryStatus

__all__ = [
    "assert_attempts",
    "assert_delivery",
    "assert_enqueued",
    "assert_not_enqueued",
    "assert_notified",
    "refute_notified",
]

#: How many deliveries :func:`assert_notified` reads at most; a test holding
#: more is told so rather than given an answer about some of them.
NOTIFIED_LIMIT: Final = 10_000

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


def assert_notified(
    engine: Chimeway,
    *,
    channel: str | None = None,
    recipient: str | None = None,
    payload: object = _UNSET,
    status: DeliveryStatus | None = None,
    count: int | None = None,
) -> Delivery:
    """Assert the ledger holds a delivery matching every filter given; return the newest.

    Like Oban's ``assert_enqueued``: ``channel``, ``recipient`` and
    ``status`` match exactly; ``payload`` matches as a subset, so
    ``payload={"order": 7}`` matches ``{"order": 7, "total": 12}`` (mappings
    recursively, key by key; anything else, lists included, by equality).
    ``count`` asks for exactly that many matches. Any status counts unless
    ``status`` says which: a suppressed notification was still notified.
    The failure message lists the deliveries that matched everything but the
    payload, so the test shows what was sent instead.
    """
    if count is not None:
        whole("count", count, minimum=1)
    found, near = _matching(engine, channel, recipient, payload, status)
    if found and (count is None or len(found) == count):
        return found[0]
    wanted = _describe(channel, recipient, payload, status)
    if not found:
        raise AssertionError(f"expected a delivery {wanted}; found none{_near(near)}")
    raise AssertionError(f"expected {count} deliveries {wanted}; found {len(found)}")


def refute_notified(
    engine: Chimeway,
    *,
    channel: str | None = None,
    recipient: str | None = None,
    payload: object = _UNSET,
    status: DeliveryStatus | None = None,
) -> None:
    """Assert the ledger holds no delivery matching every filter given.

    The filters match as :func:`assert_notified`'s do.
    """
    found, _ = _matching(engine, channel, recipient, payload, status)
    if found:
        wanted = _describe(channel, recipient, payload, status)
        raise AssertionError(f"expected no delivery {wanted}; found {_listed(found)}")


def _matching(
    engine: Chimeway,
    channel: str | None,
    recipient: str | None,
    payload: object,
    status: DeliveryStatus | None,
) -> tuple[list[Delivery], list[Delivery]]:
    """The deliveries matching every filter, and those matching all but the payload."""
    for name, value in (("channel", channel), ("recipient", recipient)):
        if value is not None and not isinstance(value, str):
            raise TypeError(f"{name} must be a str, not {type(value).__name__}")
    if channel is not None and channel not in engine.channels:
        raise ValueError(
            f"engine has no channel {channel!r} (it has {', '.join(sorted(engine.channels))})"
        )
    near = engine.store.find(
        channel=channel, recipient=recipient, status=status, limit=NOTIFIED_LIMIT + 1
    )
    if len(near) > NOTIFIED_LIMIT:
        raise AssertionError(
            f"the ledger holds more than {NOTIFIED_LIMIT} candidate deliveries: narrow the filters"
        )
    if payload is _UNSET:
        return near, near
    return [d for d in near if _contains(d.payload, payload)], near


def _contains(actual: object, expected: object) -> bool:
    """Whether ``expected`` is a subset of ``actual``: mappings key by key, the rest equal."""
    if isinstance(expected, Mapping):
        return isinstance(actual, Mapping) and all(
            key in actual and _contains(actual[key], value) for key, value in expected.items()
        )
    return bool(actual == expected)


def _describe(
    channel: str | None, recipient: str | None, payload: object, status: DeliveryStatus | None
) -> str:
    parts: list[str] = []
    if channel is not None:
        parts.append(f"on channel {channel!r}")
    if recipient is not None:
        parts.append(f"to {recipient!r}")
    if payload is not _UNSET:
        parts.append(f"with a payload containing {payload!r}")
    if status is not None:
        parts.append(f"in status {status.value!r}")
    return " ".join(parts) or "at all"


def _listed(deliveries: list[Delivery]) -> str:
    """The first five deliveries shown, and how many more there are."""
    shown = ", ".join(_show(delivery) for delivery in deliveries[:5])
    more = f" and {len(deliveries) - 5} more" if len(deliveries) > 5 else ""
    return f"{shown}{more}"


def _show(delivery: Delivery) -> str:
    payload: Any = delivery.payload
    return (
        f"[{delivery.channel} to {delivery.recipient!r}, {delivery.status.value}, "
        f"payload {payload!r}]"
    )


def _near(near: list[Delivery]) -> str:
    if not near:
        return ""
    return f"; deliveries matching all but the payload: {_listed(near)}"
