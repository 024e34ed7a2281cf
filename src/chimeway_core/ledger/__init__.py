"""The delivery ledger: the rows that say where every delivery is, and why.

Theory of operation
-------------------
The database decides. :class:`SQLStore` is the front door: it checks its
arguments, opens one short transaction per operation and hands it to the
module that does the work. Reading the package top-down follows a delivery:

- :mod:`~chimeway_core.ledger.schema`: the four tables;
  :mod:`chimeway_core.migrations` ships them as Alembic migrations;
- :mod:`~chimeway_core.ledger.rows`: rows to records and back, by column name;
- :mod:`~chimeway_core.ledger.validation`: what is checked before a write;
- :mod:`~chimeway_core.ledger.claimable`: may a delivery be claimed now, in
  Python and in SQL, from the same named conditions;
- :mod:`~chimeway_core.ledger.statements`: every prebuilt statement and
  predicate, by name (:mod:`~chimeway_core.ledger.precompiled` runs the hot ones);
- :mod:`~chimeway_core.ledger.dialects`: one object per database
  (PostgreSQL, SQLite) for everything they do differently;
- :mod:`~chimeway_core.ledger.create`: drafts, create and resend;
- :mod:`~chimeway_core.ledger.locked`: claim, record, transition, defer on
  one delivery read for update;
- :mod:`~chimeway_core.ledger.queries`, :mod:`~chimeway_core.ledger.outbox`,
  :mod:`~chimeway_core.ledger.retention`: reads and gauges, the relay, prune;
- :mod:`~chimeway_core.ledger.protocol`: :class:`Ledger`, what the engine
  calls on a store.
"""

from __future__ import annotations

from chimeway_core.ledger.create import Created, Draft
from chimeway_core.ledger.dialects import SUPPORTED_BACKENDS
from chimeway_core.ledger.locked import LockedDelivery
from chimeway_core.ledger.outbox import OutboxItem
from chimeway_core.ledger.protocol import Ledger, LockedRow
from chimeway_core.ledger.store import SQLStore

__all__ = [
    "SUPPORTED_BACKENDS",
    "Created",
    "Draft",
    "Ledger",
    "LockedDelivery",
    "LockedRow",
    "OutboxItem",
    "SQLStore",
]
