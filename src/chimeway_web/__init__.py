"""chimeway's web console for operators (the optional extra ``web``).

Server-rendered pages over the delivery ledger: the overview, the
deliveries (filtered, a page at a time), one delivery's whole history, the
channels' health, and the operator's actions behind a confirmation. Mount
:attr:`Console.wsgi` or :attr:`Console.asgi` in your application, or run
``chimeway web``. See ``docs/console.md``.
"""

from __future__ import annotations

from chimeway_web.console import Console
from chimeway_web.http import Request, Response
from chimeway_web.safety import mask_recipient

__all__ = ["Console", "Request", "Response", "mask_recipient"]
