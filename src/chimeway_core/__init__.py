"""chimeway: reliable notification delivery on your own job queue.

The public names of the queue-agnostic core. Backends live in
``chimeway_backends``; the testing kit in ``chimeway_core.testing``.
"""

from __future__ import annotations

from chimeway_core.clock import Clock, SystemClock, VirtualClock
from chimeway_core.dispatch import DISPATCH_ROWS, Action, DispatchRow, decide
from chimeway_core.errors import (
    ChimewayError,
    IllegalTransitionError,
    InvalidJobError,
    OutcomeUnknownError,
    UnhandledOutcomeError,
)
from chimeway_core.jobs import Backend, JobKind, JobResult
from chimeway_core.outcomes import (
    UNKNOWN_CLASSIFICATION,
    Bounced,
    ChannelResult,
    Classification,
    ErrorClass,
    Outcome,
    PermanentFailure,
    Sent,
    TemporaryFailure,
    classify,
)
from chimeway_core.records import (
    Attempt,
    Claim,
    Delivery,
    DeliveryHistory,
    JournalEntry,
    JournalKind,
    NewDelivery,
)
from chimeway_core.retry import RetryPolicy
from chimeway_core.states import (
    TERMINAL_STATUSES,
    DeliveryStatus,
    Event,
    Reason,
    apply_event,
)

__all__ = [
    # states
    "DeliveryStatus",
    "TERMINAL_STATUSES",
    "Event",
    "Reason",
    "apply_event",
    # outcomes
    "Outcome",
    "ErrorClass",
    "UNKNOWN_CLASSIFICATION",
    "Sent",
    "TemporaryFailure",
    "PermanentFailure",
    "Bounced",
    "ChannelResult",
    "Classification",
    "classify",
    # dispatch
    "Action",
    "DispatchRow",
    "DISPATCH_ROWS",
    "decide",
    # retry
    "RetryPolicy",
    # records
    "Delivery",
    "Attempt",
    "Claim",
    "NewDelivery",
    "DeliveryHistory",
    "JournalEntry",
    "JournalKind",
    # jobs
    "Backend",
    "JobKind",
    "JobResult",
    # clock
    "Clock",
    "SystemClock",
    "VirtualClock",
    # errors
    "ChimewayError",
    "IllegalTransitionError",
    "UnhandledOutcomeError",
    "OutcomeUnknownError",
    "InvalidJobError",
]
