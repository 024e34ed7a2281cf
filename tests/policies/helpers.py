"""Builders shared by the policy tests."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import attrs

from chimeway_core.policies import PolicyContext, PolicyPhase
from chimeway_core.records import Delivery
from chimeway_core.states import DeliveryStatus

T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)


def make_delivery(**changes: Any) -> Delivery:
    """A live delivery with plausible defaults, any field overridable."""
    base = Delivery(
        id=uuid.UUID(int=1),
        channel="email",
        recipient="user-1",
        payload=None,
        notification_key=None,
        idempotency_key="key-1",
        status=DeliveryStatus.READY,
        reason=None,
        attempt_count=0,
        max_attempts=5,
        scheduled_at=T0,
        expires_at=None,
        lease_owner=None,
        lease_expires_at=None,
        version=1,
        deferral_count=0,
        metadata={},
        created_at=T0,
        updated_at=T0,
    )
    return attrs.evolve(base, **changes)


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


def make_context(
    now: datetime = T0, phase: PolicyPhase = PolicyPhase.PERFORM, recent_attempts: Any = None
) -> PolicyContext:
    """A context at ``now`` with no recent attempts unless given."""
    return PolicyContext(now=now, phase=phase, recent_attempts=recent_attempts or no_attempts)
