"""The channel contract: what the engine calls to actually send a notification.

Theory of operation
-------------------
A channel is any object with a ``send(delivery, idempotency_key)`` method and
three attributes the engine reads before calling it:

- ``guarantee`` — what an *unknown* outcome means for this provider. An
  :attr:`~DeliveryGuarantee.AT_LEAST_ONCE` channel talks to a provider that
  honours idempotency keys, so a lost answer is retried with the same key. An
  :attr:`~DeliveryGuarantee.AT_MOST_ONCE` channel cannot be retried safely, so
  a lost answer cancels the delivery with reason ``outcome_unknown``.
- ``exception_class`` — how :func:`~chimeway_core.outcomes.classify` treats an
  exception the channel raises (other than
  :class:`~chimeway_core.errors.OutcomeUnknownError`).
- ``timeout`` — the longest one ``send`` call may take, in seconds; the engine
  makes the delivery's lease longer than this.

A channel may also have a ``check_delivery(delivery)`` method: ``notify()``
(and ``notify_many()``, ``resend()``) calls it with each delivery as it will be
written, before the policies and before anything is written, and it raises
:class:`~chimeway_core.errors.InvalidDeliveryError` (naming the field, never
repeating its value) for a delivery the channel could never send, which no
retry would fix. The webhook and SMTP channels refuse this way an idempotency
key that cannot be a header value (:func:`check_header_key`), and the SMTP
channel a recipient that is not one plain address. It must not do I/O: it runs on the caller's
thread, for every delivery.

``send`` returns one of the four result values of
:mod:`chimeway_core.outcomes`, or raises
:class:`~chimeway_core.errors.OutcomeUnknownError` when the request left but
its answer was lost. A channel never puts the payload or the recipient in an
exception message, a log line or a ``provider_response``: those end up in the
ledger and in operators' logs.
"""

from __future__ import annotations

import enum
import re
from typing import Final, Protocol, runtime_checkable

from chimeway_core._checks import seconds
from chimeway_core.errors import InvalidDeliveryError
from chimeway_core.outcomes import ChannelResult, ErrorClass
from chimeway_core.records import Delivery

__all__ = [
    "Channel",
    "DeliveryGuarantee",
    "check_header_key",
    "header_key_problem",
    "positive_seconds",
]

_HEADER_VALUE: Final = re.compile(r"[\x21-\x7e](?:[\x20-\x7e]*[\x21-\x7e])?")
_BAD_KEY: Final = (
    "cannot be sent as a header value: it must be printable ASCII "
    "(no CR, LF, NUL, other control or non-ASCII characters) without leading or trailing spaces"
)


def header_key_problem(key: str) -> str | None:
    """Why ``key`` cannot be sent as a header value, or ``None`` if it can."""
    return None if _HEADER_VALUE.fullmatch(key) else _BAD_KEY


def check_header_key(delivery: Delivery) -> None:
    """Refuse a delivery whose idempotency key cannot be a header value.

    Webhook and SMTP channels send the key in a header (``Idempotency-Key``,
    ``X-Idempotency-Key``): printable ASCII with no leading or trailing
    space. Raises :class:`~chimeway_core.errors.InvalidDeliveryError` on
    ``idempotency_key``, without repeating the key.
    """
    if (problem := header_key_problem(delivery.idempotency_key)) is not None:
        raise InvalidDeliveryError("idempotency_key", problem)


class DeliveryGuarantee(enum.StrEnum):
    """What a channel promises when the outcome of a call is unknown."""

    AT_LEAST_ONCE = "at_least_once"
    """The provider honours idempotency keys: an unknown outcome is retried with the same key."""
    AT_MOST_ONCE = "at_most_once"
    """An unknown outcome is cancelled (reason ``outcome_unknown``), never sent again."""


def positive_seconds(name: str, value: object) -> float:
    """``value`` as a float number of seconds; it must be finite and > 0.

    A channel's constructor checks its timeouts with it, so that a wrong one
    is named there and not met as a lease of no length in a worker.
    """
    return seconds(name, value, positive=True)


@runtime_checkable
class Channel(Protocol):
    """Anything the engine can hand a delivery to.

    ``isinstance(obj, Channel)`` checks only that the attributes and ``send``
    exist, as for every runtime-checkable protocol.
    """

    guarantee: DeliveryGuarantee
    """What an unknown outcome means for this channel."""
    exception_class: ErrorClass
    """How an exception raised by ``send`` is classified (usually temporary)."""
    timeout: float
    """The longest one ``send`` call may take, in seconds."""

    def send(self, delivery: Delivery, idempotency_key: str) -> ChannelResult:
        """Send ``delivery`` once, passing ``idempotency_key`` to the provider."""
        ...
