"""The one contract between the engine and a job queue: :class:`Backend`.

Theory of operation
-------------------
A backend does two things (DESIGN.md, "Backends"): it enqueues a delivery
id, now or at a time, under a job id that dedupes
(:func:`~chimeway_core.jobs.job_id_for`); and its worker calls
``perform()`` and translates the verdict (:mod:`chimeway_core.worker`).
Everything else is the core's, and lives here or there:

- **Validation, once.** The public :meth:`Backend.enqueue` and
  :meth:`Backend.enqueue_many` check what they are given (every id a
  :class:`~uuid.UUID`, ``at`` tz-aware, the queue a non-empty name or
  ``None`` for :attr:`Backend.default_queue`) and call the adapter's two
  hooks, ``_enqueue`` and ``_enqueue_many``, with clean values only.
- **Foreign errors, at the edge.** An adapter lists in
  :attr:`Backend.unavailable` the exception types of its broker client that
  mean "the service did not answer"; leaving ``enqueue``, ``enqueue_many``
  or :meth:`Backend.ping`, they become one
  :class:`~chimeway_core.errors.BackendUnavailableError` naming the backend
  and the service, the client's error as its cause. Neither the engine nor
  the command line imports a broker client.
- **Asked, not probed.** The engine reads :attr:`Backend.interrupts` (what
  the queue raises inside a running job to stop it) and
  :attr:`Backend.follows_routes` (whether ``queue=`` is honoured).
- **Told when a call starts.** Once a job has claimed its delivery, the
  engine calls :meth:`Backend.before_call` in the job's own thread with the
  channel's timeout and the lease, so a queue that stops jobs on a clock
  (RQ's job timeout) can give each channel its own limit.
- **Told what happened.** ``enqueue`` returns an :class:`Enqueued` and
  ``enqueue_many`` one per id: whether a job due now went onto a queue, is
  waiting for a later time, or was already pending (nothing done), so the
  rescuer's report counts only what it really put on a queue. A hook that
  returns ``None`` (every backend written before this) did what it was
  asked: ``QUEUED``, or ``SCHEDULED`` for a time still to come.

A backend written before this class — any object with ``enqueue`` and
``enqueue_many`` — still works: ``isinstance(obj, Backend)`` is true for it,
as it was for the protocol this class replaces, and :func:`as_backend` wraps
it once in a :class:`Backend` that passes ``queue=`` only when a route asks
for one, with the object's ``interrupts`` and whether its methods take
``queue`` read once, when it is wrapped.
"""

from __future__ import annotations

import abc
import enum
import inspect
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, ClassVar, Final, Protocol, cast, runtime_checkable
from uuid import UUID

from chimeway_core._checks import queue_or
from chimeway_core.clock import ensure_aware
from chimeway_core.errors import BackendUnavailableError

__all__ = ["Backend", "Enqueued", "SupportsEnqueue", "as_backend", "check_delivery_id"]

_ENQUEUES: Final = ("enqueue", "enqueue_many")


class Enqueued(enum.Enum):
    """What an enqueue did for one delivery: what its job is doing now."""

    QUEUED = "queued"
    """A job due now is on a queue: the next free worker serving it runs it."""
    SCHEDULED = "scheduled"
    """A job waits for a later time (a new one, or a pending one moved earlier)."""
    PENDING = "pending"
    """The delivery's job was already queued, running, or due no later: nothing was done."""


def check_delivery_id(delivery_id: object) -> UUID:
    """``delivery_id`` itself, which must be a :class:`~uuid.UUID` (a :class:`TypeError` if not)."""
    if not isinstance(delivery_id, UUID):
        raise TypeError(f"delivery_id must be a UUID, not {type(delivery_id).__name__}")
    return delivery_id


def _takes_queue(method: Callable[..., object]) -> bool:
    """Whether ``method`` accepts a ``queue`` keyword."""
    try:
        parameters = inspect.signature(method).parameters.values()
    except (TypeError, ValueError):  # no signature to read: let the call say
        return True
    return any(
        (p.name == "queue" and p.kind is not p.POSITIONAL_ONLY) or p.kind is p.VAR_KEYWORD
        for p in parameters
    )


class Backend(abc.ABC):
    """Where the engine hands delivery ids to a job queue; every adapter extends it.

    A subclass sets :attr:`name`, provides :attr:`default_queue` and the two
    hooks ``_enqueue(delivery_id, at, queue)`` and
    ``_enqueue_many(delivery_ids, queue)``, and, when it talks to a service,
    :attr:`unavailable`, ``_service()`` and ``_ping()``.

    The engine passes ``queue=`` only for a routed channel's delivery.
    A backend should not double a pending job for the same delivery where its
    queue allows (memory and RQ do not; Celery cannot tell), whatever queue
    it is asked for. Nothing depends on it: a duplicate job finds the
    delivery terminal, leased or not yet due and acknowledges without
    calling the channel.
    """

    #: The backend's name, as ``chimeway worker --backend`` and errors say it.
    name: ClassVar[str] = "backend"
    #: The exception types the queue raises *inside* a running job to stop it
    #: (Celery's soft time limit). The engine lets those propagate out of the
    #: channel call without recording an outcome — the request may have
    #: reached the provider — so the attempt stays in flight and the rescuer
    #: resolves it as ``unknown``, as after a worker's death.
    interrupts: tuple[type[BaseException], ...] = ()
    #: The broker client's exception types that mean the service did not
    #: answer; they leave as :class:`BackendUnavailableError`.
    unavailable: tuple[type[BaseException], ...] = ()
    #: Whether ``queue=`` is honoured, so the engine may route channels: by
    #: default, whether the class's ``enqueue`` and ``enqueue_many`` take it
    #: (read once, when the class is made; the engine passes ``queue=`` only
    #: for a routed channel, so a subclass that overrides them without it
    #: works until routes are used).
    follows_routes: bool = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "follows_routes" not in vars(cls):
            cls.follows_routes = all(_takes_queue(getattr(cls, name)) for name in _ENQUEUES)

    @classmethod
    def __subclasshook__(cls, other: type) -> Any:
        """Any class with ``enqueue`` and ``enqueue_many`` counts, as for the old protocol."""
        if cls is Backend and all(
            any(method in vars(base) for base in other.__mro__) for method in _ENQUEUES
        ):
            return True
        return NotImplemented

    @property
    @abc.abstractmethod
    def default_queue(self) -> str:
        """The queue a job goes to when no ``queue=`` is given."""

    def enqueue(
        self, delivery_id: UUID, *, at: datetime | None = None, queue: str | None = None
    ) -> Enqueued:
        """Queue a job for ``delivery_id`` on ``queue`` (its default if ``None``), now or at ``at``.

        ``at`` must be tz-aware. Returns what became of the delivery's job.
        Raises :class:`BackendUnavailableError` when the queue's service does
        not answer.
        """
        name = queue_or(queue, self.default_queue)
        when = None if at is None else ensure_aware(at, "at")
        checked = check_delivery_id(delivery_id)
        try:
            done = self._enqueue(checked, when, name)
        except self.unavailable as error:
            raise self._unreachable(error) from error
        if done is None:
            future = when is not None and when > datetime.now(when.tzinfo)
            return Enqueued.SCHEDULED if future else Enqueued.QUEUED
        return _checked_outcome(self, done)

    def enqueue_many(
        self, delivery_ids: Sequence[UUID], *, queue: str | None = None
    ) -> list[Enqueued]:
        """Queue jobs for several deliveries on ``queue``, due now, in few round trips.

        Returns what became of each one's job, in the order given.
        """
        name = queue_or(queue, self.default_queue)
        checked = [check_delivery_id(delivery_id) for delivery_id in delivery_ids]
        if not checked:
            return []
        try:
            done = self._enqueue_many(checked, name)
        except self.unavailable as error:
            raise self._unreachable(error) from error
        if done is None:
            return [Enqueued.QUEUED] * len(checked)
        outcomes = [_checked_outcome(self, outcome) for outcome in done]
        if len(outcomes) != len(checked):
            raise TypeError(
                f"{type(self).__qualname__}._enqueue_many returned {len(outcomes)} outcomes "
                f"for {len(checked)} deliveries"
            )
        return outcomes

    def ping(self) -> None:
        """Return if the queue's service answers; raise :class:`BackendUnavailableError` if not.

        An in-process queue always answers.
        """
        try:
            self._ping()
        except self.unavailable as error:
            raise self._unreachable(error) from error

    @abc.abstractmethod
    def _enqueue(self, delivery_id: UUID, at: datetime | None, queue: str) -> Enqueued | None:
        """Hook: queue one checked job (``at`` in UTC, ``None``: due now) on ``queue``.

        Returns what became of the job; ``None`` means what was asked was done.
        """

    @abc.abstractmethod
    def _enqueue_many(self, delivery_ids: list[UUID], queue: str) -> Sequence[Enqueued] | None:
        """Hook: queue checked jobs, due now, on ``queue``; ``delivery_ids`` is not empty.

        Returns what became of each job, in order; ``None`` means all were queued.
        """

    def before_call(self, channel: str, timeout: float, lease: float) -> None:  # noqa: B027 - optional
        """Hook: a job claimed a delivery and calls ``channel`` next, in this thread.

        ``timeout`` is the channel's, ``lease`` how long from now the claim
        holds the delivery (``timeout + lease_margin``), both in seconds. A
        queue that stops a running job on a clock may set that clock here to
        fall between the two: the call gets its whole timeout, and is stopped
        before its lease lapses and the rescuer may hand the delivery to
        another worker. Does nothing by default; what it raises is logged and
        the call goes on.
        """

    def _ping(self) -> None:  # noqa: B027 - optional: an in-process queue has nothing to ask
        """Hook: contact the queue's service, raising one of :attr:`unavailable` if it is down."""

    def _service(self) -> str:
        """Hook: what :class:`BackendUnavailableError` says could not be reached."""
        return f"the {self.name} backend"

    def _unreachable(self, error: BaseException) -> BackendUnavailableError:
        return BackendUnavailableError(self.name, self._service(), str(error))


def _checked_outcome(backend: Backend, outcome: object) -> Enqueued:
    if not isinstance(outcome, Enqueued):
        raise TypeError(
            f"{type(backend).__qualname__}'s enqueue hooks return Enqueued or None, "
            f"not {type(outcome).__name__}"
        )
    return outcome


@runtime_checkable
class SupportsEnqueue(Protocol):
    """The shape of a backend that does not extend :class:`Backend` (see :func:`as_backend`)."""

    def enqueue(self, delivery_id: UUID, *, at: datetime | None = None) -> None:
        """Queue a job for ``delivery_id``, now or at ``at``."""

    def enqueue_many(self, delivery_ids: Sequence[UUID]) -> None:
        """Queue jobs for several deliveries, due now."""


class _Adopted(Backend):
    """A duck-typed backend behind the :class:`Backend` interface; see :func:`as_backend`."""

    name = "custom"

    def __init__(self, adopted: Any) -> None:
        self.adopted = adopted
        self.interrupts = tuple(getattr(adopted, "interrupts", ()))
        self.follows_routes = all(_takes_queue(getattr(adopted, name)) for name in _ENQUEUES)
        self._default = str(getattr(adopted, "default_queue", "default"))

    @property
    def default_queue(self) -> str:
        """The object's own ``default_queue``, if it has one, else ``"default"``."""
        return self._default

    def enqueue(
        self, delivery_id: UUID, *, at: datetime | None = None, queue: str | None = None
    ) -> Enqueued:
        """Call the object's ``enqueue``, with ``queue=`` only when one is asked for."""
        if queue is None:
            done = self.adopted.enqueue(delivery_id, at=at)
        else:
            done = self.adopted.enqueue(delivery_id, at=at, queue=queue)
        if isinstance(done, Enqueued):
            return done
        future = at is not None and at.tzinfo is not None and at > datetime.now(at.tzinfo)
        return Enqueued.SCHEDULED if future else Enqueued.QUEUED

    def enqueue_many(
        self, delivery_ids: Sequence[UUID], *, queue: str | None = None
    ) -> list[Enqueued]:
        """Call the object's ``enqueue_many``, with ``queue=`` only when one is asked for."""
        if queue is None:
            done = self.adopted.enqueue_many(delivery_ids)
        else:
            done = self.adopted.enqueue_many(delivery_ids, queue=queue)
        if (
            isinstance(done, Sequence)
            and len(done) == len(delivery_ids)
            and all(isinstance(outcome, Enqueued) for outcome in done)
        ):
            return list(done)
        return [Enqueued.QUEUED] * len(delivery_ids)

    def _enqueue(self, delivery_id: UUID, at: datetime | None, queue: str) -> Enqueued:
        return self.enqueue(delivery_id, at=at, queue=queue)

    def _enqueue_many(self, delivery_ids: list[UUID], queue: str) -> list[Enqueued]:
        return self.enqueue_many(delivery_ids, queue=queue)


def as_backend(backend: Backend | SupportsEnqueue) -> Backend:
    """``backend`` itself if it extends :class:`Backend`, else wrapped once to behave as one.

    The wrapper passes calls through unchecked, as the engine made them
    before this class existed; it passes ``queue=`` only when one is asked
    for, so an object whose methods take no ``queue`` works until routes are
    used (:attr:`Backend.follows_routes` is then false and the engine refuses
    the routes). Raises :class:`TypeError` for an object without
    ``enqueue`` and ``enqueue_many``.
    """
    if Backend in type(backend).__mro__:  # extends it, not only looks like it
        return cast(Backend, backend)
    if not isinstance(backend, Backend):
        raise TypeError(
            f"backend must have enqueue() and enqueue_many() (chimeway_core.jobs.Backend), "
            f"not {type(backend).__name__}"
        )
    return _Adopted(backend)
