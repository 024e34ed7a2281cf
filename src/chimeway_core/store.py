"""The delivery ledger: moved to :mod:`chimeway_core.ledger`, re-exported here.

``from chimeway_core.store import SQLStore`` keeps working, as do the names
the test suite reaches for (the SQLite connection listener, the tables).
New code imports from :mod:`chimeway_core.ledger`.
"""

from __future__ import annotations

from chimeway_core.ledger.claimable import LIVE_STATUSES
from chimeway_core.ledger.create import Created, Draft
from chimeway_core.ledger.dialects import SUPPORTED_BACKENDS, configure_sqlite, sqlite_on_connect
from chimeway_core.ledger.locked import LockedDelivery
from chimeway_core.ledger.outbox import OutboxItem
from chimeway_core.ledger.store import SQLStore

__all__ = ["SUPPORTED_BACKENDS", "Created", "Draft", "LockedDelivery", "OutboxItem", "SQLStore"]

_LIVE = tuple(status.value for status in LIVE_STATUSES)
_configure_sqlite = configure_sqlite
_sqlite_on_connect = sqlite_on_connect
