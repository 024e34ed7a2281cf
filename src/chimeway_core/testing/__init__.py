"""The testing kit: test an application's notifications the way chimeway tests its own.

- :class:`FakeChannel`: scripted results, every call recorded.
- :class:`ScriptedChannel`: results scripted by the recipient address itself,
  so a worker in another process behaves exactly like the test expects.
- :class:`~chimeway_core.clock.VirtualClock`: time that moves only when told.
- :mod:`chimeway_core.testing.conformance`: the backend conformance suite.
"""

from __future__ import annotations

from chimeway_core.clock import VirtualClock
from chimeway_core.testing.fakes import ChannelCall, FakeChannel, ScriptedChannel, script_for

__all__ = ["ChannelCall", "FakeChannel", "ScriptedChannel", "VirtualClock", "script_for"]
