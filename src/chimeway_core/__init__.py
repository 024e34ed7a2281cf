"""chimeway: reliable notification delivery on your own job queue.

The public names of the queue-agnostic core. The queue adapters live in
``chimeway_backends`` (the in-memory queue is ``chimeway_core.memory``); the
testing kit in ``chimeway_core.testing``.
"""

from __future__ import annotations

from chimeway_core.channels import (
    CallableChannel,
    Channel,
    DeliveryGuarantee,
    LogChannel,
    SMTPChannel,
    WebhookChannel,
)
from chimeway_core.clock import Clock, SystemClock, VirtualClock
from chimeway_core.dispatch import DISPATCH_ROWS, Action, DispatchRow, decide
from chimeway_core.engine import Chimeway, RescueReport
from chimeway_core.errors import (
    BackendUnavailableError,
    ChimewayError,
    DeliveriesVanishedError,
    DeliveryNotFoundError,
    DeliveryTerminalError,
    EngineNotFoundError,
    IdempotencyKeyConflictError,
    IllegalTransitionError,
    InvalidDeliveryError,
    InvalidJobError,
    LeaseLostError,
    LockReusedError,
    MissingExtraError,
    NoDatabaseConfiguredError,
    NotResendableError,
    OutcomeUnknownError,
    PayloadNotSerializableError,
    PayloadTooLargeError,
    PolicyError,
    StaleDeliveryError,
    UnhandledOutcomeError,
    UnknownChannelError,
    UnsafeDestinationError,
    UnsupportedDatabaseError,
    WorkerCrashedError,
)
from chimeway_core.jobs import Backend, Enqueued, JobKind, JobResult
from chimeway_core.ledger import Created, OutboxItem, SQLStore
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
from chimeway_core.policies import (
    Defer,
    ExpiryPolicy,
    Policy,
    PolicyContext,
    PolicyPhase,
    PreferencePolicy,
    Proceed,
    QuietHoursPolicy,
    RateLimitAction,
    RateLimitPolicy,
    ReadStatePolicy,
    RecipientRateLimitPolicy,
    Suppress,
)
from chimeway_core.records import (
    Attempt,
    Claim,
    Delivery,
    DeliveryHistory,
    JournalEntry,
    JournalKind,
    NewDelivery,
    Resent,
    resend_key,
    resent_from,
)
from chimeway_core.retry import RetryPolicy
from chimeway_core.states import (
    TERMINAL_STATUSES,
    DeliveryStatus,
    Event,
    Reason,
    apply_event,
)
from chimeway_core.telemetry import LoggingSubscriber, Telemetry, TelemetryEvent

__all__ = [
    # engine
    "Chimeway",
    "RescueReport",
    # ledger
    "SQLStore",
    "Created",
    "OutboxItem",
    # channels
    "Channel",
    "DeliveryGuarantee",
    "CallableChannel",
    "LogChannel",
    "SMTPChannel",
    "WebhookChannel",
    # policies
    "Policy",
    "PolicyContext",
    "PolicyPhase",
    "Proceed",
    "Suppress",
    "Defer",
    "PreferencePolicy",
    "QuietHoursPolicy",
    "RateLimitPolicy",
    "RecipientRateLimitPolicy",
    "RateLimitAction",
    "ReadStatePolicy",
    "ExpiryPolicy",
    # telemetry
    "Telemetry",
    "TelemetryEvent",
    "LoggingSubscriber",
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
    "Resent",
    "resend_key",
    "resent_from",
    # jobs
    "Backend",
    "Enqueued",
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
    "BackendUnavailableError",
    "InvalidDeliveryError",
    "PayloadTooLargeError",
    "PayloadNotSerializableError",
    "DeliveryNotFoundError",
    "DeliveryTerminalError",
    "NotResendableError",
    "LeaseLostError",
    "StaleDeliveryError",
    "PolicyError",
    "UnknownChannelError",
    "MissingExtraError",
    "UnsafeDestinationError",
    "EngineNotFoundError",
    "UnsupportedDatabaseError",
    "LockReusedError",
    "DeliveriesVanishedError",
    "IdempotencyKeyConflictError",
    "NoDatabaseConfiguredError",
    "WorkerCrashedError",
]
