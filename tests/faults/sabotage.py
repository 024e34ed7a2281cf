"""Protections switched off, for the negative controls: each scenario must be able to fail.

Each sabotage replaces one method of chimeway with a copy that lacks one
protection, through a ``patch(owner, name, value)`` callable (pytest's
``monkeypatch.setattr`` in the test process, a plain ``setattr`` in a worker
process, which dies with it). ``src/`` is never changed.

- ``lease-off``: a job ignores a live lease and an attempt in flight; the
  claim (``LockedDelivery.claim`` in perform(), ``SQLStore.claim``) takes
  the delivery anyway.
- ``fence-off``: the record is not fenced on the lease's version and owner,
  nor on the attempt still being in flight.
- ``split-record``: the record writes the attempt and the delivery in two
  transactions.
- ``rescue-off``: the rescuer never resolves a dead worker's attempt.
- ``forget-deaths``: the rescuer forgets a dead worker's attempt (deletes it)
  and queues the delivery again, as a queue's own retry would.
- ``outbox-off``: ``notify`` writes no outbox row.
- ``requeue-off``: the rescuer never queues stranded deliveries again.
- ``ack-on-error``: the backend acknowledges a job whose ``perform`` raised.
- ``pickle-on``: a worker deserializes pickle.
- ``validation-off``: text is not checked for NUL and lone surrogates.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any, Final
from uuid import UUID

import attrs
from sqlalchemy import delete, update

from chimeway_core.engine import Chimeway
from chimeway_core.errors import LeaseLostError
from chimeway_core.ledger import create as create_module
from chimeway_core.ledger import rows as rows_module
from chimeway_core.ledger import statements as sql
from chimeway_core.ledger import validation as validation_module
from chimeway_core.ledger.claimable import LIVE_STATUSES
from chimeway_core.outcomes import Classification, Outcome
from chimeway_core.records import Claim, Delivery, JournalKind
from chimeway_core.states import Event, Transition, apply_event
from chimeway_core.store import LockedDelivery, SQLStore

Patch = Callable[[Any, str, Any], None]

_D = sql.D
_A = sql.A
_DELIVERIES = sql.DELIVERIES
_ATTEMPTS = sql.ATTEMPTS
_JOURNAL = sql.JOURNAL
_OUTBOX = sql.OUTBOX
_O = sql.OUT
_LIVE = [status.value for status in LIVE_STATUSES]


def _unguarded_claim(
    conn: Any, delivery_id: UUID, *, owner: str, lease_seconds: float, now: datetime
) -> Claim | None:
    """The claim without its lease and in-flight guards."""
    statement = (
        update(_DELIVERIES)
        .where(
            _D.id == delivery_id,
            _D.status.in_(_LIVE),
            _D.scheduled_at <= now,
            _D.attempt_count < _D.max_attempts,
        )
        .values(
            lease_owner=owner,
            lease_expires_at=now + timedelta(seconds=lease_seconds),
            attempt_count=_D.attempt_count + 1,
            version=_D.version + 1,
            updated_at=now,
        )
        .returning(*_DELIVERIES.c)
    )
    row = conn.execute(statement).first()
    if row is None:
        return None
    delivery = rows_module.delivery_from_row(row)
    conn.execute(
        _ATTEMPTS.insert().values(
            delivery_id=delivery.id, number=delivery.attempt_count, started_at=now, worker=owner
        )
    )
    return Claim(delivery=delivery, attempt=rows_module.in_flight_attempt(delivery, now, owner))


def _lease_off(patch: Patch) -> None:
    original_lock = SQLStore.lock

    @contextmanager
    def lock(self: SQLStore, delivery_id: UUID) -> Iterator[LockedDelivery]:
        with original_lock(self, delivery_id) as locked:
            if locked.delivery is not None:
                locked.delivery = attrs.evolve(
                    locked.delivery, lease_owner=None, lease_expires_at=None
                )
            yield locked

    def locked_claim(
        self: LockedDelivery, *, owner: str, lease_seconds: float, now: datetime
    ) -> Claim | None:
        assert self.delivery is not None
        return _unguarded_claim(
            self._conn, self.delivery.id, owner=owner, lease_seconds=lease_seconds, now=now
        )

    def claim(
        self: SQLStore, delivery_id: UUID, *, owner: str, lease_seconds: float, now: datetime
    ) -> Claim | None:
        with self._write() as conn:
            return _unguarded_claim(
                conn, delivery_id, owner=owner, lease_seconds=lease_seconds, now=now
            )

    patch(SQLStore, "lock", lock)
    patch(LockedDelivery, "claim", locked_claim)
    patch(SQLStore, "claim", claim)


def _event_of(event: Event | None, transition: Transition | None) -> Event:
    """The event a record applies: given, or the engine's decided transition's."""
    if transition is not None:
        return transition.event
    assert event is not None
    return event


def _record_values(
    claim: Claim, classification: Classification, event: Event, now: datetime, next_run_at: Any
) -> tuple[dict[str, Any], dict[str, Any], Any]:
    transition = apply_event(claim.delivery.status, event)
    reason = transition.reason.value if transition.reason is not None else None
    attempt_values = {
        "finished_at": now,
        "outcome": Outcome(classification.outcome).value,
        "error_class": None
        if classification.error_class is None
        else str(classification.error_class),
        "provider_response": validation_module.sanitize(classification.provider_response),
        "error": classification.error,
    }
    delivery_values: dict[str, Any] = {
        "status": transition.dest.value,
        "reason": reason,
        "lease_owner": None,
        "lease_expires_at": None,
        "version": _D.version + 1,
        "updated_at": now,
    }
    if next_run_at is not None:
        delivery_values["scheduled_at"] = next_run_at
    journal = rows_module.journal_values(
        claim.delivery.id,
        now,
        JournalKind.TRANSITION,
        event=event,
        from_status=claim.delivery.status,
        to_status=transition.dest,
        reason=reason,
        detail={
            "attempt": claim.attempt.number,
            "outcome": attempt_values["outcome"],
            "error_class": attempt_values["error_class"],
        },
    )
    return attempt_values, delivery_values, journal


def _fence_off(patch: Patch) -> None:
    def record_attempt(
        self: SQLStore,
        claim: Claim,
        classification: Classification,
        *,
        event: Event | None = None,
        transition: Transition | None = None,
        now: datetime,
        reason: str | None = None,
        next_run_at: datetime | None = None,
    ) -> Delivery:
        attempt_values, delivery_values, journal = _record_values(
            claim, classification, _event_of(event, transition), now, next_run_at
        )
        with self._write() as conn:
            conn.execute(
                update(_ATTEMPTS)
                .where(_A.delivery_id == claim.delivery.id, _A.number == claim.attempt.number)
                .values(attempt_values)
            )
            row = conn.execute(
                update(_DELIVERIES)
                .where(_D.id == claim.delivery.id)
                .values(delivery_values)
                .returning(*_DELIVERIES.c)
            ).first()
            conn.execute(_JOURNAL.insert().values(journal))
        assert row is not None
        return rows_module.delivery_from_row(row)

    patch(SQLStore, "record_attempt", record_attempt)


def _split_record(patch: Patch) -> None:
    def record_attempt(
        self: SQLStore,
        claim: Claim,
        classification: Classification,
        *,
        event: Event | None = None,
        transition: Transition | None = None,
        now: datetime,
        reason: str | None = None,
        next_run_at: datetime | None = None,
    ) -> Delivery:
        attempt_values, delivery_values, journal = _record_values(
            claim, classification, _event_of(event, transition), now, next_run_at
        )
        lost = LeaseLostError(claim.delivery.id, claim.owner, claim.delivery.version)
        with self._write() as conn:
            done = conn.execute(
                update(_ATTEMPTS)
                .where(
                    _A.delivery_id == claim.delivery.id,
                    _A.number == claim.attempt.number,
                    _A.outcome.is_(None),
                )
                .values(attempt_values)
            )
            if done.rowcount != 1:
                raise lost
        with self._write() as conn:
            row = conn.execute(
                update(_DELIVERIES)
                .where(
                    _D.id == claim.delivery.id,
                    _D.version == claim.delivery.version,
                    _D.lease_owner == claim.owner,
                )
                .values(delivery_values)
                .returning(*_DELIVERIES.c)
            ).first()
            if row is None:
                raise lost
            conn.execute(_JOURNAL.insert().values(journal))
        return rows_module.delivery_from_row(row)

    patch(SQLStore, "record_attempt", record_attempt)


def _rescue_off(patch: Patch) -> None:
    patch(SQLStore, "expired_claims", lambda _self, **_kwargs: [])


def _forget_deaths(patch: Patch) -> None:
    def resolve_lost(self: Chimeway, claim: Claim, now: datetime) -> bool:
        delivery = claim.delivery
        with self.store.engine.begin() as conn:
            gone = conn.execute(
                delete(_ATTEMPTS).where(
                    _A.delivery_id == delivery.id,
                    _A.number == claim.attempt.number,
                    _A.outcome.is_(None),
                )
            )
            if gone.rowcount != 1:
                return False
            conn.execute(
                update(_DELIVERIES)
                .where(_D.id == delivery.id)
                .values(
                    attempt_count=_D.attempt_count - 1,
                    lease_owner=None,
                    lease_expires_at=None,
                    version=_D.version + 1,
                    updated_at=now,
                )
            )
        self.backend.enqueue(delivery.id)
        return True

    patch(Chimeway, "_resolve_lost", resolve_lost)


def _outbox_off(patch: Patch) -> None:
    original = create_module.insert_deliveries

    def insert(conn: Any, *rest: Any) -> Any:
        created = original(conn, *rest)
        ids = [result.delivery.id for result in created if result.created]
        if ids:
            conn.execute(delete(_OUTBOX).where(_O.delivery_id.in_(ids)))
        return created

    patch(create_module, "insert_deliveries", insert)


def _requeue_off(patch: Patch) -> None:
    original = SQLStore.due

    def due(self: SQLStore, **kwargs: Any) -> list[Delivery]:
        if kwargs.get("not_touched_since") is not None:
            return []
        return original(self, **kwargs)

    patch(SQLStore, "due", due)


def _ack_on_error(patch: Patch) -> None:
    _requeue_off(patch)
    from chimeway_backends import memory

    original_run_one = memory.MemoryBackend._run_one

    def run_one(self: Any, delivery_id: UUID, performer: Any) -> Exception | None:
        class Swallowing:
            def perform(self, delivery_id: UUID) -> Any:
                from chimeway_core.jobs import JobKind, JobResult

                try:
                    return performer.perform(delivery_id)
                except Exception:
                    return JobResult(delivery_id=delivery_id, kind=JobKind.ACK, detail="swallowed")

        return original_run_one(self, delivery_id, Swallowing())

    patch(memory.MemoryBackend, "_run_one", run_one)
    try:
        from chimeway_backends.rq import job as rq_job
    except ImportError:  # pragma: no cover - rq is installed in the dev venv
        return
    original_deliver = rq_job.deliver

    def deliver(*args: object, **kwargs: object) -> Any:
        try:
            return original_deliver(*args, **kwargs)
        except Exception:
            return "ack: swallowed"

    patch(rq_job, "deliver", deliver)  # what ChimewayJob resolves jobs to
    from chimeway_backends.celery import CeleryBackend

    original_celery = CeleryBackend._deliver

    def celery_deliver(self: Any, task: Any, args: Any, kwargs: Any) -> str:
        try:
            return original_celery(self, task, args, kwargs)
        except Exception:
            return "ack: swallowed"

    patch(CeleryBackend, "_deliver", celery_deliver)


def _pickle_on(patch: Patch) -> None:
    from rq.serializers import DefaultSerializer

    from chimeway_backends.rq import worker as rq_worker

    # The serializer a chimeway worker forces on every job it reads.
    patch(rq_worker, "ChimewayJSONSerializer", DefaultSerializer)


def _validation_off(patch: Patch) -> None:
    patch(validation_module, "check_encodable", lambda _value, _field: None)
    original = validation_module.json_value

    def json_value(value: object, field: str, depth: int = 0) -> Any:
        if isinstance(value, str):
            return value
        return original(value, field, depth)

    patch(validation_module, "json_value", json_value)


SABOTAGES: Final[dict[str, Callable[[Patch], None]]] = {
    "lease-off": _lease_off,
    "fence-off": _fence_off,
    "split-record": _split_record,
    "rescue-off": _rescue_off,
    "forget-deaths": _forget_deaths,
    "outbox-off": _outbox_off,
    "requeue-off": _requeue_off,
    "ack-on-error": _ack_on_error,
    "pickle-on": _pickle_on,
    "validation-off": _validation_off,
}


def apply(names: Sequence[str], patch: Patch = setattr) -> None:
    """Switch off the named protections (see the module docstring)."""
    for name in names:
        SABOTAGES[name](patch)
