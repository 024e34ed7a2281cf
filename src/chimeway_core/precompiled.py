"""Statements compiled once per dialect: moved to :mod:`chimeway_core.ledger.precompiled`.

This path re-exports :class:`Precompiled`.
"""

from __future__ import annotations

from chimeway_core.ledger.precompiled import Precompiled

__all__ = ["Precompiled"]
