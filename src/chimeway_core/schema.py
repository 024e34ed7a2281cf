"""The ledger's tables: moved to :mod:`chimeway_core.ledger.schema`, re-exported here.

Kept so that ``from chimeway_core.schema import metadata`` (an application's
Alembic ``env.py``, the documentation) keeps working.
"""

from __future__ import annotations

from chimeway_core.ledger.schema import (
    CHANNEL_LENGTH,
    ERROR_CLASS_LENGTH,
    KEY_LENGTH,
    NAMING_CONVENTION,
    OWNER_LENGTH,
    REASON_LENGTH,
    RECIPIENT_LENGTH,
    STATUS_LENGTH,
    AttemptRow,
    Base,
    DeliveryRow,
    JournalRow,
    OutboxRow,
    UTCDateTime,
    metadata,
)

__all__ = [
    "NAMING_CONVENTION",
    "AttemptRow",
    "Base",
    "DeliveryRow",
    "JournalRow",
    "OutboxRow",
    "UTCDateTime",
    "metadata",
    "CHANNEL_LENGTH",
    "ERROR_CLASS_LENGTH",
    "KEY_LENGTH",
    "OWNER_LENGTH",
    "REASON_LENGTH",
    "RECIPIENT_LENGTH",
    "STATUS_LENGTH",
]
