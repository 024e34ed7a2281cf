"""Builders shared by the policy tests."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import attrs

from chimeway_core.policies import PolicyContext, PolicyPhase
from chimeway_core.records import Delivery
from chimeway_core.testing import make_delivery as kit_delivery

T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)


def make_delivery(**changes: Any) -> Delivery:
    """A live delivery with plausible defaults, any field overridable."""
    defaults: dict[str, Any] = {
        "channel": "email",
        "recipient": "user-1",
        "scheduled_at": T0,
        "created_at": T0,
        "updated_at": T0,
    }
    return kit_delivery(**{**defaults, **changes})


def no_attempts(channel: str, recipient: str, since: datetime) -> int:
    """A recent_attempts that has never seen an attempt."""
    return 0


@attrs.frozen
class AttemptLog:
    """A fake recent_attempts counting from a list of (channel, recipient, started_at)."""

    started: Sequence[tuple[str, str, datetime]]

    def __call__(self, channel: str, recipient: str, since: datetime) -> int:
        """Count the attempts for this channel and recipient started at or after since."""
        return sum(
            1 for c, r, at in self.started if c == channel and r == recipient and at >= since
        )

    def across(self, recipient: str, channels: frozenset[str] | None, since: datetime) -> int:
        """Count the attempts for this recipient on ``channels`` (any) started at or after since."""
        return sum(
            1
            for c, r, at in self.started
            if r == recipient and (channels is None or c in channels) and at >= since
        )


def make_context(
    now: datetime = T0,
    phase: PolicyPhase = PolicyPhase.PERFORM,
    recent_attempts: Any = None,
    recipient_attempts: Any = None,
) -> PolicyContext:
    """A context at ``now`` with no recent attempts unless given."""
    return PolicyContext(
        now=now,
        phase=phase,
        recent_attempts=recent_attempts or no_attempts,
        recipient_attempts=recipient_attempts,
    )
