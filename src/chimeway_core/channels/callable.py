"""A channel made from any function."""

from __future__ import annotations

from collections.abc import Callable

from chimeway_core.channels.base import DeliveryGuarantee, positive_seconds
from chimeway_core.outcomes import ChannelResult, ErrorClass
from chimeway_core.records import Delivery

__all__ = ["CallableChannel", "SendFunction"]

#: The signature a :class:`CallableChannel` wraps.
SendFunction = Callable[[Delivery, str], ChannelResult]


class CallableChannel:
    """Calls ``fn(delivery, idempotency_key)`` and returns what it returns.

    Promises nothing beyond the function's own behaviour: its return value and
    its exceptions go to the engine unchanged, where
    :func:`~chimeway_core.outcomes.classify` sorts them (an exception is
    classified as ``exception_class``). The guarantee defaults to
    at-least-once, which is only right if the function passes the idempotency
    key to a provider that honours it; say ``AT_MOST_ONCE`` otherwise.
    ``timeout`` is what the function promises to respect, not enforced here.
    """

    def __init__(
        self,
        fn: SendFunction,
        *,
        guarantee: DeliveryGuarantee = DeliveryGuarantee.AT_LEAST_ONCE,
        exception_class: ErrorClass = ErrorClass.TEMPORARY,
        timeout: float = 30.0,
    ) -> None:
        if not callable(fn):
            raise TypeError(f"fn must be callable, not {type(fn).__name__}")
        self.timeout = positive_seconds("timeout", timeout)
        self.fn = fn
        self.guarantee = DeliveryGuarantee(guarantee)
        self.exception_class = ErrorClass(exception_class)

    def send(self, delivery: Delivery, idempotency_key: str) -> ChannelResult:
        """Call the wrapped function once."""
        return self.fn(delivery, idempotency_key)

    def __repr__(self) -> str:
        name = getattr(self.fn, "__qualname__", type(self.fn).__qualname__)
        return f"CallableChannel({name}, guarantee={self.guarantee.value})"
