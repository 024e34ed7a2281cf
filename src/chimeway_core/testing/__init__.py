"""The testing kit: test an application's notifications the way chimeway tests its own.

- :class:`FakeChannel`: scripted results, every call recorded.
- :class:`ScriptedChannel`: results scripted by the recipient address itself,
  so a worker in another process behaves exactly like the test expects.
- :class:`Hang` and :class:`LoseResponse`: script steps for a call that
  times out, and for a provider that acts but whose answer is lost.
- :class:`~chimeway_core.clock.VirtualClock`: time that moves only when told.
- :func:`make_delivery`: a delivery snapshot for unit tests of channels
  and policies.
- ``assert_*`` and ``refute_notified``: assertion helpers in the spirit of
  ``Oban.Testing`` (``assert_notified`` is its ``assert_enqueued``).
- :func:`engine_with_fakes`: the application's engine with fake channels,
  on a test ledger and queue (the plugin's ``chimeway_engine`` with
  ``chimeway_app``).
- :mod:`chimeway_core.testing.strategies`: hypothesis strategies (needs hypothesis).
- :mod:`chimeway_core.testing.conformance`: the backend conformance suite.
"""

from __future__ import annotations

from chimeway_core.clock import VirtualClock
from chimeway_core.testing.app import engine_with_fakes, fakes_of
from chimeway_core.testing.assertions import (
    assert_attempts,
    assert_delivery,
    assert_enqueued,
    assert_not_enqueued,
    assert_notified,
    refute_notified,
)
from chimeway_core.testing.fakes import (
    ChannelCall,
    FakeChannel,
    Hang,
    LoseResponse,
    ScriptedChannel,
    make_delivery,
    script_for,
)

__all__ = [
    "ChannelCall",
    "FakeChannel",
    "Hang",
    "LoseResponse",
    "ScriptedChannel",
    "VirtualClock",
    "assert_attempts",
    "assert_delivery",
    "assert_enqueued",
    "assert_not_enqueued",
    "assert_notified",
    "engine_with_fakes",
    "fakes_of",
    "make_delivery",
    "refute_notified",
    "script_for",
]
