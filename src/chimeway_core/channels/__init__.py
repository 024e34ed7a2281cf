"""The built-in channels, and the contract every channel meets.

Importing this package never imports an optional dependency: the webhook
channel imports ``httpx`` only when constructed.
"""

from __future__ import annotations

from chimeway_core.channels._destinations import DestinationPolicy, system_resolver
from chimeway_core.channels.base import Channel, DeliveryGuarantee
from chimeway_core.channels.callable import CallableChannel
from chimeway_core.channels.log import LogChannel
from chimeway_core.channels.smtp import SMTPChannel
from chimeway_core.channels.webhook import WebhookChannel

__all__ = [
    "Channel",
    "DeliveryGuarantee",
    "CallableChannel",
    "LogChannel",
    "SMTPChannel",
    "WebhookChannel",
    "DestinationPolicy",
    "system_resolver",
]
