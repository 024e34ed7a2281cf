"""Dramatiq's encoder must be JSON: :func:`refuse_unsafe_encoder` and its error.

A Dramatiq worker decodes every message it reads with one process-wide
encoder (``dramatiq.set_encoder``) before any actor sees it, so the actor's
own refusal of foreign arguments comes too late for a pickle payload: the
encoder itself is checked, when a :class:`~chimeway_backends.dramatiq.DramatiqBackend`
is built and when a worker of its broker boots.
"""

from __future__ import annotations

import dramatiq
from dramatiq.middleware import MiddlewareError

from chimeway_core.errors import ChimewayError

__all__ = ["UnsafeEncoderError", "refuse_unsafe_encoder"]


class UnsafeEncoderError(ChimewayError, MiddlewareError):
    """Dramatiq's encoder is not JSON: chimeway's backend and its workers refuse to start.

    Dramatiq decodes every message a worker reads with one process-wide
    encoder (``dramatiq.set_encoder``), before any actor sees it; a
    :class:`dramatiq.PickleEncoder` runs code from the queue as it decodes,
    so anyone who can write to the broker could run code in the worker.
    chimeway's messages are JSON and never need it. Raised by
    :func:`refuse_unsafe_encoder`: when a ``DramatiqBackend`` is built,
    and when a worker of its broker boots, before it consumes. ``encoder``
    is the encoder's class name. Also Dramatiq's ``MiddlewareError``, which
    Dramatiq lets through from a middleware: the worker process exits.
    """

    def __init__(self, encoder: str) -> None:
        self.encoder = encoder
        super().__init__(
            f"chimeway refuses Dramatiq's {encoder}: a worker decodes every message with it "
            "before any actor runs, and a pickle message runs code in the worker. chimeway's "
            "messages are JSON: remove the dramatiq.set_encoder() call, or call "
            "dramatiq.set_encoder(dramatiq.JSONEncoder())"
        )

    def __reduce__(self) -> tuple[object, ...]:
        """Rebuild from ``encoder`` (the message is derived)."""
        return (type(self), (self.encoder,))


def refuse_unsafe_encoder() -> None:
    """Raise :class:`UnsafeEncoderError` unless Dramatiq's encoder is a ``dramatiq.JSONEncoder``.

    A subclass of ``JSONEncoder`` is taken as JSON (its point is to encode
    more types). Called by ``DramatiqBackend`` and by every worker of
    its broker as it boots (``ChimewayMiddleware``).
    """
    encoder = dramatiq.get_encoder()
    if not isinstance(encoder, dramatiq.JSONEncoder):
        raise UnsafeEncoderError(type(encoder).__qualname__)
