"""The public surface is pinned: adding or dropping a name is a deliberate act."""

from __future__ import annotations

import chimeway_core

DOCUMENTED = {
    "Chimeway",
    "RescueReport",
    "SQLStore",
    "Created",
    "OutboxItem",
    "Channel",
    "DeliveryGuarantee",
    "CallableChannel",
    "LogChannel",
    "SMTPChannel",
    "WebhookChannel",
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
    "Telemetry",
    "TelemetryEvent",
    "LoggingSubscriber",
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
    "DeliveryStatus",
    "TERMINAL_STATUSES",
    "Event",
    "Reason",
    "apply_event",
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
    "Action",
    "DispatchRow",
    "DISPATCH_ROWS",
    "decide",
    "RetryPolicy",
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
    "Backend",
    "Enqueued",
    "JobKind",
    "JobResult",
    "Clock",
    "SystemClock",
    "VirtualClock",
    "ChimewayError",
    "IllegalTransitionError",
    "UnhandledOutcomeError",
    "OutcomeUnknownError",
    "InvalidJobError",
    "BackendUnavailableError",
}


def test_all_is_exactly_the_documented_names() -> None:
    """chimeway_core.__all__ equals the documented public names, without duplicates."""
    assert DOCUMENTED == set(chimeway_core.__all__)
    assert len(chimeway_core.__all__) == len(set(chimeway_core.__all__))


def test_every_public_name_resolves() -> None:
    """Each name in __all__ is an attribute of the package."""
    missing = [name for name in chimeway_core.__all__ if not hasattr(chimeway_core, name)]
    assert [] == missing


def test_every_exception_derives_from_chimeway_error() -> None:
    """Every exception class the package exports is a ChimewayError."""
    exported = [getattr(chimeway_core, name) for name in chimeway_core.__all__]
    errors = [e for e in exported if isinstance(e, type) and issubclass(e, BaseException)]
    assert errors
    assert all(issubclass(e, chimeway_core.ChimewayError) for e in errors)
