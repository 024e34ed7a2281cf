"""The delivery ledger's front door: :class:`SQLStore`.

Theory of operation
-------------------
The database decides. Every operation of :class:`SQLStore` is one short
transaction that either writes everything it promises or nothing. The store
itself only checks its arguments, opens that transaction and hands it to the
module that does the work:

- :mod:`~chimeway_core.ledger.create`: drafts, create and resend (with their
  journal and outbox rows: transactional enqueue);
- :mod:`~chimeway_core.ledger.locked`: the writes on one delivery read for
  update (claim, record, transition, defer), checked by the state machine
  first and fenced on ``version`` second;
- :mod:`~chimeway_core.ledger.queries`: reads and gauges (the reading
  methods are :class:`~chimeway_core.ledger.queries.Reads`, mixed in);
- :mod:`~chimeway_core.ledger.outbox` and :mod:`~chimeway_core.ledger.retention`;
- :mod:`~chimeway_core.ledger.dialects`: the one object, picked here once from
  the engine, that knows what PostgreSQL and SQLite do differently (on
  PostgreSQL each hot step is one autocommitted statement).

Values are validated before any write: bad input raises a specific
:class:`~chimeway_core.errors.InvalidDeliveryError` and writes nothing. The
store never reads the wall clock: every writing method takes ``now``. It
never calls back into its caller either: the engine drafts deliveries
(:meth:`SQLStore.draft_many`), decides about them, and hands the drafts and its
decisions to :meth:`SQLStore.create_many`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from datetime import UTC, datetime
from typing import Final
from uuid import UUID

from sqlalchemy import Connection, Engine, create_engine, make_url
from sqlalchemy.orm import Session
from sqlalchemy.schema import CreateSchema

from chimeway_core.errors import InvalidDeliveryError, LeaseLostError
from chimeway_core.ledger import create as creating
from chimeway_core.ledger import outbox, retention
from chimeway_core.ledger import statements as sql
from chimeway_core.ledger.create import Created, Draft
from chimeway_core.ledger.dialects import WRITE_OPTION, check_backend, dialect_for
from chimeway_core.ledger.locked import (
    LockedDelivery,
    lease_end,
    record_parameters,
    resolve_transition,
)
from chimeway_core.ledger.namespace import (
    TRANSLATE_OPTION,
    attach_sqlite,
    check_namespace,
    translate_map,
    translated,
)
from chimeway_core.ledger.outbox import OutboxItem
from chimeway_core.ledger.protocol import Ledger
from chimeway_core.ledger.queries import Reads
from chimeway_core.ledger.rows import delivery_from_row, in_flight_attempt
from chimeway_core.ledger.schema import OWNER_LENGTH, metadata
from chimeway_core.ledger.transitions import Transitions
from chimeway_core.ledger.validation import (
    AnySession,
    aware,
    check_id,
    check_limit,
    check_session,
    check_text,
)
from chimeway_core.outcomes import Classification
from chimeway_core.records import Claim, Delivery, NewDelivery, Resent
from chimeway_core.states import Event, Transition

__all__ = ["SQLStore"]


class SQLStore(Reads, Transitions):
    """The delivery ledger on a SQLAlchemy engine (PostgreSQL or SQLite).

    ``url_or_engine`` is a database URL or an :class:`~sqlalchemy.Engine`. For
    SQLite, connections get WAL, a 30 s busy timeout and foreign keys, and
    write transactions use ``BEGIN IMMEDIATE`` (listeners are added to a
    given engine too). ``max_payload_bytes`` bounds the serialized JSON of a
    payload (and of metadata); ``max_response_bytes`` and ``max_error_chars``
    cap what an attempt records (capped, never rejected); each must be an
    int >= 1 (:class:`ValueError` otherwise).

    ``namespace`` keeps the tables apart from another application's on the
    same database: a PostgreSQL schema, or on SQLite a database file attached
    beside the main one (:mod:`~chimeway_core.ledger.namespace`). Every
    statement of the store, on its connections and on a caller's session,
    runs there; two stores on two namespaces never see each other's
    deliveries, outbox rows or gauges. ``None`` (the default) is the
    database's default schema. A name that is not a lowercase identifier
    raises :class:`ValueError`.
    """

    engine: Engine
    """The store's engine: the one given (or made from the URL), in :attr:`namespace`."""

    def __init__(
        self,
        url_or_engine: str | Engine,
        *,
        max_payload_bytes: int = 256 * 1024,
        max_response_bytes: int = 16 * 1024,
        max_error_chars: int = 2000,
        namespace: str | None = None,
    ) -> None:
        self.namespace: Final = check_namespace(namespace)
        for name, limit in (
            ("max_payload_bytes", max_payload_bytes),
            ("max_response_bytes", max_response_bytes),
            ("max_error_chars", max_error_chars),
        ):
            if type(limit) is not int or limit < 1:
                raise ValueError(f"{name} must be an int >= 1, got {limit!r}")
        if isinstance(url_or_engine, str):
            # Before create_engine: it would first fail on the missing driver.
            check_backend(make_url(url_or_engine).get_backend_name())
            # A database error would otherwise quote the statement's parameters:
            # payloads and recipients, in exceptions and logs.
            url_or_engine = create_engine(url_or_engine, hide_parameters=True)
        elif not isinstance(url_or_engine, Engine):
            raise TypeError(
                "url_or_engine must be a database URL (str) or a sqlalchemy.Engine, "
                f"not {type(url_or_engine).__name__}"
            )
        self._dialect = dialect_for(url_or_engine)
        self._dialect.configure(url_or_engine)
        if self.namespace is not None:
            if self._dialect.name == "sqlite":
                attach_sqlite(url_or_engine, self.namespace)
            url_or_engine = url_or_engine.execution_options(
                **{TRANSLATE_OPTION: translate_map(self.namespace)}
            )
        self.engine = url_or_engine
        self._write_engine = self.engine.execution_options(**{WRITE_OPTION: True})
        self.max_payload_bytes = max_payload_bytes
        self.max_response_bytes = max_response_bytes
        self.max_error_chars = max_error_chars

    def __repr__(self) -> str:
        url = self.engine.url.render_as_string(hide_password=True)
        if self.namespace is None:
            return f"SQLStore({url!r})"
        return f"SQLStore({url!r}, namespace={self.namespace!r})"

    # ----------------------------------------------------------------- plumbing

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        with self._write_engine.begin() as conn:
            yield conn

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with self.engine.begin() as conn:
            yield conn

    @contextmanager
    def _on(self, session: Session) -> Iterator[Connection]:
        """``session``'s connection, running chimeway's statements in the namespace."""
        with translated(session.connection(), self.namespace) as conn:
            yield conn

    def create_all(self) -> None:
        """Create chimeway's tables if missing (tests, demo); production uses migrations.

        In a namespace, its PostgreSQL schema is created first when missing.
        """
        with self.engine.begin() as conn:
            if self.namespace is not None and self._dialect.name == "postgresql":
                conn.execute(CreateSchema(self.namespace, if_not_exists=True))
            metadata.create_all(conn)

    def drop_all(self) -> None:
        """Drop chimeway's tables and everything in them (a namespace's schema stays)."""
        metadata.drop_all(self.engine)

    # ----------------------------------------------------------------- creating

    def draft_many(self, specs: Sequence[NewDelivery], *, now: datetime) -> list[Draft]:
        """The deliveries ``specs`` would create at ``now``, as :meth:`create_many` will write them.

        Every spec is validated (one invalid spec raises
        :class:`InvalidDeliveryError`, naming it) and gets its id and defaults;
        nothing is read or written. Hand the drafts, with what you decided
        about each, to :meth:`create_many` with the same ``now``.
        """
        return creating.draft_many(list(specs), aware(now, "now"), self.max_payload_bytes)

    def create(
        self,
        spec: NewDelivery,
        *,
        now: datetime,
        session: AnySession | None = None,
        suppress_reason: str | None = None,
    ) -> Created:
        """Create one delivery with its ``created`` journal entry and its outbox row.

        Idempotent on ``(channel, idempotency_key)``: a repeat of the same
        request (even a concurrent one) returns the existing delivery with
        ``created=False`` and writes nothing; the same request has the same
        ``recipient``, ``payload`` (as JSON), ``notification_key`` and
        ``metadata`` (see ``Chimeway.notify``). A repeat of a different request
        raises :class:`~chimeway_core.errors.IdempotencyKeyConflictError` and
        writes nothing. ``idempotency_key=None`` becomes ``str(id)``; a key in
        the resend namespace (``chimeway.resend:``) is refused.
        With ``suppress_reason`` the delivery is born ``suppressed`` (the
        journal records the ``suppress`` transition) and gets no outbox row.
        With ``session`` everything goes through the caller's transaction
        (flushed, never committed): rolling it back leaves nothing.
        Invalid input raises :class:`InvalidDeliveryError` and writes nothing.
        """
        return self.create_many(
            [spec],
            now=now,
            session=session,
            suppress_reasons=None if suppress_reason is None else [suppress_reason],
        )[0]

    def create_many(
        self,
        specs: Sequence[NewDelivery | Draft],
        *,
        now: datetime,
        session: AnySession | None = None,
        suppress_reasons: Sequence[str | None] | None = None,
        suppress_if: Callable[[Delivery], str | None] | None = None,
        suppressed_by: Sequence[str | None] | None = None,
    ) -> list[Created]:
        """Create many deliveries in a handful of statements; results in ``specs`` order.

        Same guarantees as :meth:`create`, per spec. All specs are validated
        before anything is written: one invalid spec writes none. A key repeated
        inside ``specs`` creates one delivery; later repeats of the same request
        get it back with ``created=False``. One key holding a different request
        (in the ledger or earlier in ``specs``) writes none:
        :class:`~chimeway_core.errors.IdempotencyKeyConflictError` names every
        such key (a batch with keys of its caller's is written in a transaction,
        or a savepoint of ``session``'s, for that). ``specs`` may hold drafts of
        :meth:`draft_many` made at the same ``now`` (validated already; each is
        written as drafted, and its result's delivery is its draft's unless
        suppressed). ``suppress_reasons`` holds one reason (or ``None``) per
        spec. Instead, ``suppress_if`` is called, once every spec is valid and
        before anything is written, with each delivery as it is about to be
        written (its id, its defaults filled in): the reason it returns makes
        that delivery born suppressed, and an exception it raises propagates and
        writes nothing. ``suppressed_by`` names, per spec, the policy behind its
        reason (or ``None``), for the journal.
        """
        now = aware(now, "now")
        if session is not None:
            session = check_session(session)
        if suppressed_by is not None and len(suppressed_by) != len(specs):
            raise InvalidDeliveryError(
                "suppressed_by", f"has {len(suppressed_by)} entries for {len(specs)} specs"
            )
        if suppress_reasons is not None and suppress_if is not None:
            raise TypeError("give suppress_reasons or suppress_if, not both")
        if suppress_reasons is not None and len(suppress_reasons) != len(specs):
            raise InvalidDeliveryError(
                "suppress_reasons",
                f"has {len(suppress_reasons)} entries for {len(specs)} specs",
            )
        rows, drafted = creating.rows_of(specs, now, self.max_payload_bytes)
        if suppress_if is not None:
            # Drafting then deciding, as the engine does: the callback is the caller's.
            suppress_reasons = [suppress_if(delivery) for delivery in creating.shown(rows, drafted)]
        creating.apply_suppressions(rows, suppress_reasons, drafted)
        if not rows:
            return []
        by: dict[UUID, str] = {}
        if suppressed_by is not None:
            by = {
                row["id"]: name
                for row, name in zip(rows, suppressed_by, strict=True)
                if name is not None
            }
        # A batch that may meet a key held by a different request part way is
        # written where the refusal rolls it back whole: a savepoint in the
        # caller's transaction, else a transaction of its own.
        may_conflict = creating.may_conflict(rows)
        if session is not None:
            with self._on(session) as conn, conn.begin_nested() if may_conflict else nullcontext():
                return creating.insert_deliveries(conn, self._dialect, rows, now, drafted, by)
        if (
            not may_conflict
            and self._dialect.creates_in_one_statement(len(rows))
            and all(row["reason"] is None for row in rows)
        ):
            # One statement writes everything (the read-back of existing keys
            # after it only reads): it commits on its own.
            with self._dialect.one_statement(self.engine, self._write_engine) as conn:
                return creating.insert_deliveries(conn, self._dialect, rows, now, drafted, by)
        with self._write() as conn:
            return creating.insert_deliveries(conn, self._dialect, rows, now, drafted, by)

    # ------------------------------------------------------------------ resending

    def draft_resend(
        self, delivery_id: UUID, *, now: datetime, session: AnySession | None = None
    ) -> Draft:
        """The copy :meth:`resend` would write at ``now``, as a draft; nothing written.

        Read through ``session`` when given. Raises as :meth:`resend` does for
        an unknown id or a delivery that did not end unsent.
        """
        check_id(delivery_id)
        now = aware(now, "now")
        if session is not None:
            with self._on(check_session(session)) as conn:
                original = creating.resend_original(conn, delivery_id, for_update=False)
        else:
            with self._read() as conn:
                original = creating.resend_original(conn, delivery_id, for_update=False)
        spec = creating.copy_spec(original)
        return creating.draft(spec, now, -1, self.max_payload_bytes, resend_of=original.id)

    def resend(
        self,
        delivery_id: UUID | Draft,
        *,
        now: datetime,
        session: AnySession | None = None,
        suppress_reason: str | None = None,
        suppress_if: Callable[[Delivery], str | None] | None = None,
        suppressed_by: str | None = None,
        by: str | None = None,
    ) -> Resent:
        """Create the copy of a delivery that ended unsent; journal it on the original.

        ``delivery_id`` is its id, or the copy :meth:`draft_resend` drafted. One
        transaction (the caller's, with ``session``): the original is read for
        update; the copy has its channel, recipient, payload, notification key,
        ``max_attempts``, ``expires_at`` and metadata, is due at ``now``, and
        has the idempotency key :func:`~chimeway_core.records.resend_key` of the
        original's id, so a delivery has at most one copy: a repeat returns that
        copy with ``created=False`` and writes nothing. A delivery holding that
        key that the original's ``resent`` journal entry does not name (written
        under the key before creates refused the namespace) is no copy:
        :class:`~chimeway_core.errors.IdempotencyKeyConflictError`. A new copy
        is written like :meth:`create_many` writes (its journal's ``created``
        entry, its outbox row unless ``suppress_reason`` makes it born
        suppressed) and the original gets a ``resent`` journal entry naming it;
        the original's row is not changed. An unknown id raises
        :class:`DeliveryNotFoundError`; a live or succeeded delivery
        :class:`NotResendableError`.

        ``suppress_if`` (instead of ``suppress_reason``, for callers written
        before drafts) is asked for the reason with the drafted copy.
        ``suppressed_by`` names the policy behind ``suppress_reason``; ``by``, who
        resent it (the ``resent`` entry's ``detail["by"]``).
        """
        if suppress_if is not None:
            if suppress_reason is not None or isinstance(delivery_id, Draft):
                raise TypeError("give suppress_if with a delivery id, and no suppress_reason")
            delivery_id = self.draft_resend(delivery_id, now=now, session=session)
            suppress_reason = suppress_if(delivery_id.delivery)
        copy = delivery_id if isinstance(delivery_id, Draft) else None
        if copy is None:
            original_id = check_id(delivery_id)
        elif copy.resend_of is None:
            raise TypeError("a Draft given to resend() must come from draft_resend()")
        else:
            original_id = copy.resend_of
        now = aware(now, "now")
        if session is not None:
            session = check_session(session)
        with self._on(session) if session is not None else self._write() as conn:
            return creating.resend_on(
                conn,
                self._dialect,
                original_id,
                now,
                copy=copy,
                suppress_reason=suppress_reason,
                max_payload_bytes=self.max_payload_bytes,
                suppressed_by=suppressed_by,
                by=by,
            )

    @contextmanager
    def lock(self, delivery_id: UUID) -> Iterator[LockedDelivery]:
        """Read a delivery for update and keep its transaction open for the block.

        One transaction: the row is read with ``SELECT ... FOR UPDATE`` (on
        SQLite under the ``BEGIN IMMEDIATE`` write lock), the block decides
        and writes at most once through the :class:`LockedDelivery`, and the
        transaction commits when the block ends (rolls back if it raises).
        ``perform()`` uses it so that reading, the policies and the claim cost
        one commit, not two.
        """
        check_id(delivery_id)
        with self._write() as conn:
            row = conn.execute(sql.SELECT_FOR_UPDATE, {"b_id": delivery_id}).first()
            found = delivery_from_row(row) if row is not None else None
            yield LockedDelivery(conn, delivery_id, found, self._dialect)

    # --------------------------------------------------------------- claiming

    @property
    def claims_in_one_statement(self) -> bool:
        """Whether :meth:`quick_claim` claims here (PostgreSQL); elsewhere it returns ``None``."""
        return self._dialect.claims_in_one_statement

    def quick_claim(
        self,
        delivery_id: UUID,
        *,
        owner: str,
        lease_seconds: Mapping[str, float],
        now: datetime,
    ) -> Claim | None:
        """Claim, in one statement, a delivery nothing stands in the way of; else ``None``.

        The delivery must be live, due, not leased at all (an expired lease is
        an attempt for the rescuer), below ``max_attempts``, without an attempt
        in flight, not expired (``expires_at`` unset or after ``now``) and on a
        channel named in ``lease_seconds``, whose value is that channel's lease.
        It gets the lease and its in-flight attempt row in one autocommitted
        statement: one round trip, one commit. ``None`` says only that this
        statement did not claim: :meth:`lock` reads the row and tells why.
        Where :attr:`claims_in_one_statement` is false (SQLite, in process,
        where a transaction costs no round trip) it returns ``None`` without
        touching the database.
        """
        check_id(delivery_id)
        if not self.claims_in_one_statement:
            return None
        now = aware(now, "now")
        check_text(owner, "owner", max_length=OWNER_LENGTH)
        leases = {
            channel: lease_end(now, seconds).isoformat()
            for channel, seconds in lease_seconds.items()
        }
        parameters = {
            "b_id": delivery_id,
            "b_now": now,
            "b_owner": owner,
            "b_leases": json.dumps(leases),
        }
        with self._dialect.one_statement(self.engine, self._write_engine) as conn:
            row = self._dialect.quick_claim(conn, parameters)
        if row is None:
            return None
        delivery = delivery_from_row(row)
        return Claim(
            delivery=delivery, attempt=in_flight_attempt(delivery, now.astimezone(UTC), owner)
        )

    def claim(
        self, delivery_id: UUID, *, owner: str, lease_seconds: float, now: datetime
    ) -> Claim | None:
        """Take the lease and write the in-flight attempt, or return ``None``.

        :meth:`lock` then :meth:`LockedDelivery.claim`, in one transaction:
        the row is read for update, and a conditional UPDATE (fenced on the
        version read) succeeds only if the delivery is ``ready``/``failed``,
        due (``scheduled_at <= now``), not
        leased or its lease expired, below ``max_attempts`` and with no
        attempt in flight; it sets the lease, bumps ``attempt_count`` and
        ``version``; then the attempt row (number = new ``attempt_count``) is
        inserted. Of N concurrent claimers exactly one gets a :class:`Claim`.
        """
        with self.lock(delivery_id) as locked:
            if locked.delivery is None:
                return None
            return locked.claim(owner=owner, lease_seconds=lease_seconds, now=now)

    def record_attempt(
        self,
        claim: Claim,
        classification: Classification,
        *,
        event: Event | None = None,
        transition: Transition | None = None,
        now: datetime,
        reason: str | None = None,
        next_run_at: datetime | None = None,
    ) -> Delivery:
        """Complete the claim's attempt and apply ``event``, all or nothing, fenced.

        The attempt row gets ``finished_at``, outcome, error class, the
        provider response (replaced by ``{"truncated": True, "original_bytes":
        n}`` over ``max_response_bytes``) and the error (truncated to
        ``max_error_chars``). The delivery takes the transition ``event``
        makes from the claimed status (its reason is the transition's fixed
        one, else ``reason``), the lease is cleared and ``scheduled_at`` set to
        ``next_run_at`` if given; the journal records the transition.

        Fenced on ``version == claim.delivery.version`` and ``lease_owner ==
        claim.owner``: if the lease was taken over, the delivery cancelled or
        the attempt resolved by a rescuer, nothing is written and
        :class:`LeaseLostError` is raised. An illegal ``event`` raises
        :class:`IllegalTransitionError` before anything is written.

        Instead of ``event``, the engine passes the ``transition`` it decided
        before recording (one ``apply_event`` per attempt, not two); it must
        start at the claimed status, or :class:`IllegalTransitionError`.
        """
        parameters, after = record_parameters(
            claim,
            classification,
            transition=resolve_transition(claim.delivery.status, event, transition),
            now=now,
            reason=reason,
            next_run_at=next_run_at,
            max_response_bytes=self.max_response_bytes,
            max_error_chars=self.max_error_chars,
        )
        before = claim.delivery
        with self._dialect.one_statement(self.engine, self._write_engine) as conn:
            if not self._dialect.record(conn, parameters, reschedule=next_run_at is not None):
                # Inside the transaction: whatever was written rolls back.
                raise LeaseLostError(before.id, claim.owner, before.version)
        return after

    # ---------------------------------------------------------------- retention

    def prune(self, *, before: datetime, batch_size: int = 1000, limit: int | None = None) -> int:
        """Delete terminal deliveries created and last written before ``before``; return how many.

        Each goes with its attempts, its journal and any outbox row left (the
        foreign keys cascade). Live deliveries (``ready``, ``failed``) are
        never deleted, however old. The oldest go first, ``batch_size`` per
        transaction, until a batch comes back short or ``limit`` deliveries
        are deleted: a long prune never holds its locks for long, and one
        interrupted keeps what it deleted. On PostgreSQL rows another
        transaction holds are skipped (``SKIP LOCKED``), so prunes can run
        side by side.

        What is deleted is forgotten: :meth:`get` finds nothing, a job still
        queued for it acknowledges "delivery not found", and its
        ``(channel, idempotency_key)`` can be used again.
        """
        check_limit("batch_size", batch_size)
        if limit is not None:
            check_limit("limit", limit)
        return retention.prune(
            self._write,
            self._dialect,
            before=aware(before, "before"),
            batch_size=batch_size,
            limit=limit,
        )

    # ------------------------------------------------------------------- outbox

    def relay_outbox(
        self,
        send: Callable[[Sequence[OutboxItem]], None],
        *,
        batch_size: int = 500,
        created_before: datetime | None = None,
        due_before: datetime | None = None,
    ) -> int:
        """Hand up to ``batch_size`` committed outbox rows to ``send``, then delete them.

        Only rows written before ``created_before`` and due (``run_at``)
        before ``due_before``, when given. One transaction: rows are selected
        (``FOR UPDATE SKIP LOCKED`` on PostgreSQL; on SQLite the ``BEGIN
        IMMEDIATE`` write lock serializes relays), ``send(items)`` is called,
        the rows are deleted, and the transaction commits. If ``send`` raises,
        everything rolls back and the rows stay for the next relay. Concurrent
        relays never hand out the same row twice. ``send`` is not called when
        there is nothing to relay. Returns how many rows were sent.
        """
        check_limit("batch_size", batch_size)
        with self._write() as conn:
            return outbox.relay(
                conn,
                self._dialect,
                send,
                batch_size=batch_size,
                created_before=created_before,
                due_before=due_before,
            )

    def delete_outbox(self, delivery_ids: Sequence[UUID]) -> None:
        """Remove outbox rows, after the caller enqueued those deliveries itself."""
        ids = [check_id(delivery_id) for delivery_id in delivery_ids]
        with self._write() as conn:
            self._dialect.delete_outbox(conn, ids)


# SQLStore is a Ledger: mypy checks this assignment against the protocol.
_SQLSTORE_IS_A_LEDGER: Final[type[Ledger]] = SQLStore
