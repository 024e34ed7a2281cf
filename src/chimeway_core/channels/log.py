"""A channel that only writes a log line: for development and demos."""

from __future__ import annotations

import logging

from chimeway_core.channels.base import DeliveryGuarantee
from chimeway_core.outcomes import ChannelResult, ErrorClass, Sent
from chimeway_core.records import Delivery

__all__ = ["LogChannel"]


class LogChannel:
    """Logs that a delivery was "sent" and returns :class:`Sent`.

    The line carries safe metadata only — delivery id, channel, notification
    key and idempotency key — both in the message and as
    ``extra={"chimeway": {...}}``. The payload and the recipient are never
    logged. Nothing leaves the process, so an unknown outcome cannot happen;
    the guarantee is at-least-once (logging twice is harmless).
    """

    guarantee = DeliveryGuarantee.AT_LEAST_ONCE
    exception_class = ErrorClass.TEMPORARY
    timeout = 5.0

    def __init__(self, logger: logging.Logger | None = None, level: int = logging.INFO) -> None:
        if logger is not None and not isinstance(logger, logging.Logger):
            raise TypeError(f"logger must be a logging.Logger, not {type(logger).__name__}")
        if isinstance(level, bool) or not isinstance(level, int):
            raise TypeError(f"level must be an int (logging.INFO), not {level!r}")
        self.logger = logger if logger is not None else logging.getLogger("chimeway.channels.log")
        self.level = level

    def send(self, delivery: Delivery, idempotency_key: str) -> ChannelResult:
        """Write one log line about ``delivery`` and report it sent."""
        meta = {
            "delivery_id": str(delivery.id),
            "channel": delivery.channel,
            "notification_key": delivery.notification_key,
            "idempotency_key": idempotency_key,
        }
        self.logger.log(
            self.level,
            "chimeway log channel: delivery_id=%s channel=%s notification_key=%s "
            "idempotency_key=%s",
            meta["delivery_id"],
            meta["channel"],
            meta["notification_key"],
            meta["idempotency_key"],
            extra={"chimeway": meta},
        )
        return Sent(provider_response={"logged": True})
