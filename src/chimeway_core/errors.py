"""The exceptions chimeway raises.

The rule: a mistake in a call (an argument of the wrong type, or a value it
cannot take) is a :class:`TypeError` or :class:`ValueError` whose message names
the argument; everything else chimeway raises on purpose derives from
:class:`ChimewayError`, so an application can catch chimeway's failures
without catching its own. A few classes here are also the built-in their case
has always been (:class:`InvalidDeliveryError` is a :class:`ValueError`,
:class:`DeliveryNotFoundError` a :class:`LookupError`, :class:`LockReusedError`
a :class:`RuntimeError` ...), so an ``except`` written either way catches them.
Each class carries, as attributes, the fields an operator needs to reproduce
the case; the message repeats them so a log line alone is enough.

The documented built-in exceptions that are not argument checks:

- :class:`OSError` from
  :meth:`chimeway_core.channels.DestinationPolicy.resolve` when a host resolves
  to no address, as a failed DNS lookup does (the webhook channel reports
  either as a temporary failure);
- :class:`AttributeError` when a setting that is fixed once a
  :class:`~chimeway_core.Chimeway` is built (its ``channels``, say) is
  assigned, as for any read-only attribute;
- :class:`RuntimeError` from the memory backend's ``MemoryWorker.start()``
  when it is already running, as from :meth:`threading.Thread.start`;
- :class:`AssertionError` from the assertions of
  :mod:`chimeway_core.testing`, as any test assertion;
- :class:`NotImplementedError` from a testing base class whose method a
  subclass must provide (``EngineMachine.open_harness``);
- ``chimeway_core.testing.stateful.SimulatedCrash``, a :class:`BaseException`
  that stands for a worker process dying in the stateful tests.

What chimeway does not raise on purpose passes through as it is: the
database's errors (SQLAlchemy's) and an exception from code the application
handed in, except where the documentation says otherwise (a policy's
becomes a :class:`PolicyError`; a channel's is classified as an outcome,
never raised).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from collections.abc import Sequence
    from datetime import datetime
    from uuid import UUID

    from chimeway_core.outcomes import Outcome
    from chimeway_core.states import DeliveryStatus, Event


class ChimewayError(Exception):
    """The root of every exception chimeway raises."""


class IllegalTransitionError(ChimewayError):
    """An event was fired from a status where the state machine forbids it.

    The status is left untouched: nothing was written.
    """

    def __init__(self, status: DeliveryStatus, event: Event) -> None:
        self.status = status
        self.event = event
        super().__init__(
            f"illegal transition: event {event.value!r} is not allowed from status {status.value!r}"
        )


class UnhandledOutcomeError(ChimewayError):
    """A recorded attempt has a shape that no documented dispatch row covers.

    Raised (never swallowed) when the catch-all of the dispatch table cannot
    converge: the delivery is not in ``failed`` or retries remain. It is the
    loud-failure branch of the reference worker. ``run_at`` is set when the
    engine has already scheduled the next attempt, so the delivery is not
    leaked while the queue records the failure; ``queue`` is the queue that
    run belongs on (``None``: the backend's default).
    """

    def __init__(
        self,
        *,
        delivery_id: UUID | None,
        outcome: Outcome,
        error_class: object,
        status: DeliveryStatus,
        attempt: int,
        max_attempts: int,
        run_at: datetime | None = None,
        queue: str | None = None,
    ) -> None:
        self.delivery_id = delivery_id
        #: When the engine scheduled the next run (``None``: nothing scheduled).
        self.run_at = run_at
        #: The queue the next run belongs on: its channel's route, or ``None``.
        self.queue = queue
        self.outcome = outcome
        self.error_class = error_class
        self.status = status
        self.attempt = attempt
        self.max_attempts = max_attempts
        super().__init__(
            "unhandled delivery outcome shape: "
            f"delivery_id={delivery_id!s} outcome={outcome.value!r} "
            f"error_class={error_class!r} status={status.value!r} "
            f"attempt={attempt}/{max_attempts}"
        )

    def __reduce__(self) -> tuple[object, ...]:
        # Keyword-only __init__: teach pickle (used by multiprocessing and some
        # queues' result backends) how to rebuild the instance.
        return (
            _rebuild_unhandled,
            (
                self.delivery_id,
                self.outcome,
                self.error_class,
                self.status,
                self.attempt,
                self.max_attempts,
                self.run_at,
                self.queue,
            ),
        )


def _rebuild_unhandled(
    delivery_id: UUID | None,
    outcome: Outcome,
    error_class: object,
    status: DeliveryStatus,
    attempt: int,
    max_attempts: int,
    run_at: datetime | None,
    queue: str | None = None,
) -> UnhandledOutcomeError:
    return UnhandledOutcomeError(
        delivery_id=delivery_id,
        outcome=outcome,
        error_class=error_class,
        status=status,
        attempt=attempt,
        max_attempts=max_attempts,
        run_at=run_at,
        queue=queue,
    )


class OutcomeUnknownError(ChimewayError):
    """Raised by a channel when a request was sent but its result was lost.

    A read timeout after the request left, or a connection dropped before the
    response arrived: the provider may or may not have acted. chimeway
    classifies it as outcome ``unknown``; the channel's delivery guarantee
    decides whether it is retried with the same idempotency key.
    """

    def __init__(self, detail: str) -> None:
        self.detail = detail
        super().__init__(f"outcome unknown: {detail}")


class InvalidJobError(ChimewayError):
    """A queue job carried arguments that are not one delivery id.

    The job is rejected before anything is read or called. Only the type and a
    short prefix of the argument are kept, since it came from outside.
    """

    def __init__(self, argument: object) -> None:
        self.argument_type = type(argument).__name__
        self.argument_preview = repr(argument)[:80]
        super().__init__(
            f"job argument is not a delivery id: {self.argument_type} {self.argument_preview}"
        )


class MissingExtraError(ChimewayError, ImportError):
    """An optional feature was used without the extra that installs its dependency.

    ``extra`` is the name of the chimeway extra; the message gives the exact
    install command, so the log line alone says how to fix it.
    """

    def __init__(self, extra: str, *, feature: str | None = None) -> None:
        self.extra = extra
        self.feature = feature
        what = feature or f"the {extra!r} feature"
        super().__init__(f'{what} needs an optional dependency: pip install "chimeway[{extra}]"')


class UnsafeDestinationError(ChimewayError):
    """A network destination resolved to an address chimeway refuses to connect to.

    Raised before any connection is made. ``host`` is the name that was
    resolved and ``address`` the refused IP; ``category`` says why (for
    example ``"private"`` or ``"cloud-metadata"``). A port outside the
    allowed ones is refused before resolving: ``category`` is ``"port"``,
    ``port`` the refused port and ``address`` empty. The message names the
    address (or port) and the category but not the host, because a host may
    be derived from a recipient (a webhook URL is often the recipient itself).
    """

    def __init__(self, host: str, address: str, category: str, *, port: int | None = None) -> None:
        self.host = host
        self.address = address
        self.category = category
        self.port = port
        if port is None:
            super().__init__(f"refused destination: address {address} is {category}")
        else:
            super().__init__(f"refused destination: port {port} is not allowed")


class InvalidDeliveryError(ChimewayError, ValueError):
    """A value handed to the delivery ledger was refused before anything was written.

    ``field`` names the offending argument (``"payload"``, ``"payload.items[3]"``,
    ``"recipient"``, ``"now"`` ...) and ``problem`` says what is wrong with it.
    The value itself is never repeated: it may be a recipient address or a secret.
    """

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        self.problem = problem
        super().__init__(f"invalid delivery: {field}: {problem}")


class PayloadTooLargeError(InvalidDeliveryError):
    """A payload or metadata mapping serializes to more JSON bytes than the store allows."""

    def __init__(self, field: str, size: int, limit: int) -> None:
        self.size = size
        self.limit = limit
        super().__init__(field, f"serializes to {size} bytes of JSON, over the limit of {limit}")


class PayloadNotSerializableError(InvalidDeliveryError):
    """A payload or metadata mapping holds a value JSON cannot represent exactly."""


class IdempotencyKeyConflictError(ChimewayError):
    """An idempotency key was used again for a different request; nothing was written.

    A repeat of ``(channel, idempotency_key)`` returns the delivery already
    holding the key only when it asks for the same thing: the same
    ``recipient``, ``payload``, ``notification_key`` and ``metadata`` (see
    ``Chimeway.notify``). Anything else is another caller's key, or a bug,
    and is refused rather than answered with that delivery. ``keys`` are the
    ``(channel, idempotency_key)`` pairs refused, each once, sorted: every one
    of a batch's, since none of the batch was written. Neither the existing
    delivery nor what differs is told: it is another request's (its
    recipient, its payload), and naming the differing fields would let a
    caller guess them one at a time.
    """

    _SHOWN: Final = 5

    def __init__(self, keys: Sequence[tuple[str, str]]) -> None:
        self.keys = tuple(keys)
        # repr() escapes what a key may hold that a log line must not (CR, LF ...).
        named = [f"{key!r} on channel {channel!r}" for channel, key in self.keys]
        shown = ", ".join(named[: self._SHOWN])
        if len(named) > self._SHOWN:
            shown += f" and {len(named) - self._SHOWN} more"
        super().__init__(
            f"idempotency key reused for a different request: {shown} "
            "(recipient, payload, notification_key or metadata differ); nothing was written"
        )

    def __reduce__(self) -> tuple[object, ...]:
        # The message is not the constructor's argument: tell pickle what is.
        return (type(self), (self.keys,))


class DeliveryNotFoundError(ChimewayError, LookupError):
    """No delivery with this id exists in the ledger."""

    def __init__(self, delivery_id: UUID) -> None:
        self.delivery_id = delivery_id
        super().__init__(f"no delivery with id {delivery_id!s}")


class LeaseLostError(ChimewayError):
    """A fenced write was rejected: the delivery moved on since this worker read it.

    The write matched ``id``, ``version == expected_version`` and (for a worker)
    ``lease_owner == owner``, and matched nothing: the lease expired and was
    taken over, the delivery was cancelled, or a rescuer resolved the attempt.
    Nothing was written. ``owner`` is ``None`` for writes that hold no lease.
    """

    def __init__(self, delivery_id: UUID, owner: str | None, expected_version: int) -> None:
        self.delivery_id = delivery_id
        self.owner = owner
        self.expected_version = expected_version
        super().__init__(
            f"fenced write rejected for delivery {delivery_id!s}: "
            f"owner={owner!r} expected_version={expected_version} no longer hold"
        )


class StaleDeliveryError(LeaseLostError):
    """A compare-and-set on ``version`` failed for a write that holds no lease.

    Raised by ``exhaust``, ``suppress`` and ``defer`` when ``version`` moved
    since the caller read it (``actual_version`` is what the row holds now, or
    ``None`` if it could not be read). A :class:`LeaseLostError`, so one
    ``except`` covers every fencing rejection. Nothing was written.
    """

    def __init__(
        self, delivery_id: UUID, expected_version: int, actual_version: int | None
    ) -> None:
        self.actual_version = actual_version
        super().__init__(delivery_id, None, expected_version)
        self.args = (
            f"stale write rejected for delivery {delivery_id!s}: "
            f"expected_version={expected_version} actual_version={actual_version}",
        )


class DeliveryTerminalError(ChimewayError):
    """An operation that only applies to a live delivery met a terminal one.

    Raised by ``defer`` (a deferral is a policy decision, not a state-machine
    event, so this is its counterpart of ``IllegalTransitionError``). Nothing
    was written.
    """

    def __init__(self, delivery_id: UUID, status: DeliveryStatus, operation: str) -> None:
        self.delivery_id = delivery_id
        self.status = status
        self.operation = operation
        super().__init__(
            f"cannot {operation} delivery {delivery_id!s}: it is terminal ({status.value!r})"
        )


class NotResendableError(ChimewayError):
    """A resend was asked of a delivery that has not ended unsent.

    Only a ``cancelled`` or ``suppressed`` delivery can be resent. A live one
    (``ready``, ``failed``) is still being delivered; a ``succeeded`` one was
    sent, and sending it again is a new ``notify()``. ``status`` and
    ``reason`` are the delivery's as read. Nothing was written.
    """

    def __init__(self, delivery_id: UUID, status: DeliveryStatus, reason: str | None) -> None:
        self.delivery_id = delivery_id
        self.status = status
        self.reason = reason
        why = "it was sent" if status.value == "succeeded" else "it is still live"
        super().__init__(
            f"cannot resend delivery {delivery_id!s}: {why} (status {status.value!r}); "
            "only a cancelled or suppressed delivery can be resent"
        )

    def __reduce__(self) -> tuple[object, ...]:
        # The message is not the constructor's argument: tell pickle what is.
        return (type(self), (self.delivery_id, self.status, self.reason))


class LockReusedError(ChimewayError, RuntimeError):
    """A second write was asked of one :meth:`~chimeway_core.SQLStore.lock` block: a caller bug.

    A lock allows at most one of ``claim``, ``suppress``, ``defer`` and
    ``exhaust``, because each decides from the delivery as it was read and a
    second would decide from a row the first already changed. ``operation``
    is the refused second write; ``delivery_id`` the locked delivery. Nothing
    more is written, and unless the block catches this the whole block rolls
    back, the first write included. Also a :class:`RuntimeError`, which it
    was before it had a class of its own.
    """

    def __init__(self, delivery_id: UUID, operation: str) -> None:
        self.delivery_id = delivery_id
        self.operation = operation
        super().__init__(
            f"LockedDelivery.{operation}: this lock already wrote once (delivery {delivery_id!s})"
        )

    def __reduce__(self) -> tuple[object, ...]:
        # The message is not the constructor's argument: tell pickle what is.
        return (type(self), (self.delivery_id, self.operation))


class DeliveriesVanishedError(ChimewayError, RuntimeError):
    """Creating deliveries lost a race with their deletion ``tries`` times in a row.

    A key that was taken when its row was inserted but gone when it was read
    back was deleted in between (a prune, in another transaction, removed the
    old delivery holding it), so the row is written again; this is raised
    when that kept happening, which a single prune cannot cause: look for
    something deleting deliveries in a tight loop. ``keys`` are the
    ``(channel, idempotency_key)`` pairs still unwritten and ``tries`` the
    number of rounds. Calling again with the same specs is safe: a delivery
    that was written comes back with ``created=False``. Also a
    :class:`RuntimeError`, which it was before it had a class of its own.
    """

    def __init__(self, keys: Sequence[tuple[str, str]], tries: int) -> None:
        self.keys = tuple(keys)
        self.tries = tries
        super().__init__(
            f"deliveries vanished {tries} times as they were read back: {list(self.keys)}"
        )

    def __reduce__(self) -> tuple[object, ...]:
        # The message is not the constructor's argument: tell pickle what is.
        return (type(self), (self.keys, self.tries))


class NoDatabaseConfiguredError(ChimewayError, RuntimeError):
    """chimeway's migrations were run with no database to run them on.

    :func:`chimeway_core.migrations.upgrade` always passes its connection;
    this comes from running chimeway's Alembic environment some other way
    (``alembic upgrade`` with its script location) without either a
    ``connection`` in ``config.attributes`` or ``sqlalchemy.url`` in the
    config. ``config_file`` is the Alembic config file that lacks the URL
    (``None``: the config was built in code). Nothing was run. Also a
    :class:`RuntimeError`, which it was before it had a class of its own.
    """

    def __init__(self, config_file: str | None) -> None:
        self.config_file = config_file
        where = "the Alembic config" if config_file is None else config_file
        super().__init__(
            f"no database for chimeway's migrations: set sqlalchemy.url in {where} "
            "or pass a connection in config.attributes"
        )

    def __reduce__(self) -> tuple[object, ...]:
        # The message is not the constructor's argument: tell pickle what is.
        return (type(self), (self.config_file,))


class PolicyError(ChimewayError):
    """A policy raised instead of returning a decision.

    ``policy_name`` is the policy's ``name``, ``delivery_id`` the delivery it was
    evaluating and ``error_type`` the qualified name of what it raised; the
    original exception is chained as ``__cause__``. Its message is not repeated
    here: it may echo a recipient or a payload.
    """

    def __init__(self, policy_name: str, delivery_id: UUID, error_type: str) -> None:
        self.policy_name = policy_name
        self.delivery_id = delivery_id
        self.error_type = error_type
        super().__init__(f"policy {policy_name!r} failed on delivery {delivery_id!s}: {error_type}")

    def __reduce__(self) -> tuple[object, ...]:
        # The message is not the constructor's argument: tell pickle what is.
        return (type(self), (self.policy_name, self.delivery_id, self.error_type))


class UnknownChannelError(ChimewayError, LookupError):
    """A delivery names a channel this engine was not given.

    Raised by ``notify()`` before anything is written, and by ``perform()``
    before the delivery is claimed (no attempt is consumed; the queue records
    the failure and the job is retried once the worker is configured).
    """

    def __init__(self, channel: str, known: tuple[str, ...]) -> None:
        self.channel = channel
        self.known = known
        super().__init__(f"unknown channel {channel!r}; this engine has {list(known)}")


class EngineNotFoundError(ChimewayError, LookupError):
    """An import path (``--app``, ``CHIMEWAY_APP``) did not give a chimeway engine.

    ``path`` is the path as given (``None``: none was given and
    ``CHIMEWAY_APP`` is unset); ``problem`` says what went wrong, in one line.
    """

    def __init__(self, path: str | None, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(f"cannot load the chimeway engine {path!r}: {problem}")


class UnsupportedDatabaseError(ChimewayError, ValueError):
    """The ledger was given a database it cannot run on; raised by ``SQLStore()``.

    ``dialect`` is SQLAlchemy's name for the database (``"mysql"``,
    ``"sqlite"``); ``version`` is the version found when it is the version
    that falls short (``None`` otherwise); ``requirement`` says what the
    ledger needs.
    """

    def __init__(self, dialect: str, requirement: str, *, version: str | None = None) -> None:
        self.dialect = dialect
        self.version = version
        self.requirement = requirement
        found = dialect if version is None else f"{dialect} {version}"
        super().__init__(f"unsupported database {found}: the ledger needs {requirement}")


class BackendUnavailableError(ChimewayError):
    """A backend's queue service did not answer: Redis, a Celery broker.

    Raised by a :class:`~chimeway_core.backend.Backend`'s ``enqueue``,
    ``enqueue_many`` and ``ping`` in place of the broker client's own error,
    which stays the ``__cause__``. ``backend`` is the backend's name
    (``"rq"``, ``"celery"``), ``service`` what was unreachable (a broker URL
    has its password masked) and ``detail`` the client's message.
    """

    def __init__(self, backend: str, service: str, detail: str) -> None:
        self.backend = backend
        self.service = service
        self.detail = detail
        super().__init__(f"cannot reach {service}: {detail}")


class WorkerCrashedError(ChimewayError):
    """A worker's loop ended on an error, not on a stop request or (burst) an empty queue.

    Raised by a backend's ``run_worker`` after its queue library logged the
    error and stopped; ``chimeway worker`` exits 1 with this message.
    ``backend`` is the backend's name (``"rq"``) and ``worker`` the
    worker's name, as its logs show it.
    """

    def __init__(self, backend: str, worker: str) -> None:
        self.backend = backend
        self.worker = worker
        super().__init__(
            f"the {backend} worker {worker} stopped on an error (logged above), "
            "not on a stop request"
        )
