"""chimeway's web console for operators (the optional extra ``web``).

Server-rendered pages over the delivery ledger: the overview, the
deliveries (filtered, a page at a time), one delivery's whole history, the
channels' health, and the operator's actions behind a confirmation. See
``docs/console.md``.
"""

from __future__ import annotations

__all__: list[str] = []
