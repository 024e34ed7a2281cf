"""Fixtures for the ledger tests.

The ``store`` fixture, which runs every store test on SQLite (file, WAL) and
PostgreSQL, lives in ``tests/conftest.py``: the engine and backend tests use
the same one.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

NOW = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def now() -> datetime:
    """A fixed, tz-aware 'now' the tests pass to every write."""
    return NOW
