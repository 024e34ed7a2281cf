"""The history checker: after a scenario, compare the ledger with what the provider saw.

Theory of operation
-------------------
The oracle of the fault suite reads four sources and trusts none of them to
agree with another by construction:

- the ledger (``chimeway_deliveries``, ``chimeway_delivery_attempts``,
  ``chimeway_delivery_journal``), read straight from PostgreSQL;
- the provider's call log, the workers' fault log and the jobs log
  (:mod:`tests.faults.provider`);
- the faults the test injected itself (a flushed Redis, a database outage),
  as :class:`GlobalFault` values;
- the scenario's expectations per delivery (:class:`Expect`).

It counts, per scenario run:

- **lost**: a committed delivery that is not terminal at the end;
- **duplicated**: provider effects beyond one per delivery for a provider
  that honours idempotency keys (it acts once per key, so this counts the
  distinct keys the provider acted on, minus one);
- **duplicated (no idempotency)**: effects beyond one plus the post-accept
  faults injected into that delivery, for a provider that acts on every call;
- **unexpected**: anything the design forbids: an illegal or broken chain of
  transitions in the journal, a write after the delivery became terminal,
  more attempts than ``max_attempts``, attempt numbers that are not 1..n,
  more than one succeeded attempt, an attempt left in flight on a terminal
  delivery, an attempt completed without its transition (a partial write),
  a success the provider never acted on, a call under a foreign key or two
  calls under one attempt, a job acknowledged as done before its outcome
  committed, and whatever the scenario's own expectations rule out.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, Final
from uuid import UUID

import attrs
from sqlalchemy import Engine, text

from chimeway_core.errors import IllegalTransitionError
from chimeway_core.schema import AttemptRow, DeliveryRow, JournalRow
from chimeway_core.states import TERMINAL_STATUSES, DeliveryStatus, Event, apply_event
from tests.faults.provider import RunFiles, parse_time

_TERMINAL: Final = frozenset(status.value for status in TERMINAL_STATUSES)
#: Job details that mean "an outcome was committed, the delivery is terminal".
_COMMITTING_ACKS: Final = frozenset(
    {"succeeded", "permanent_or_bounced", "unknown_at_most_once", "exhausted"}
)
_CLOSED_BY_OPERATOR: Final = "while the call was in flight"
_DELIVERIES: Final = DeliveryRow.__tablename__
_ATTEMPTS: Final = AttemptRow.__tablename__
_JOURNAL: Final = JournalRow.__tablename__


@attrs.frozen
class Counts:
    """One row of the fault table."""

    deliveries: int
    faults: int
    lost: int
    duplicated: int
    duplicated_raw: int
    unexpected: int

    def __add__(self, other: Counts) -> Counts:
        """Column-wise sum."""
        return Counts(
            *(a + b for a, b in zip(attrs.astuple(self), attrs.astuple(other), strict=True))
        )


@attrs.frozen
class Problem:
    """One finding: its category, the delivery (if any) and what was seen."""

    kind: str
    delivery_id: str | None
    detail: str

    def __str__(self) -> str:
        return f"{self.kind}: {self.delivery_id or '-'}: {self.detail}"


@attrs.frozen
class GlobalFault:
    """A fault the test injected into the deployment as a whole.

    ``post_accept``: it may strike calls after the provider acted (a
    database outage, a cold shutdown), so an unknown attempt whose call had
    an effect counts as one more post-accept fault for its delivery.
    """

    name: str
    post_accept: bool = False
    at: float = attrs.field(factory=time.time)


@attrs.frozen
class Expect:
    """What a scenario allows one delivery to end with.

    ``ends``: the allowed final ``(status, reason)`` pairs (``None``: any
    terminal one). ``max_calls``: the most provider calls it may get.
    ``attempts``: the exact number of attempts, when the scenario knows it.
    """

    ends: frozenset[tuple[str, str | None]] | None = None
    max_calls: int | None = None
    attempts: int | None = None


SUCCEEDED: Final = Expect(ends=frozenset({("succeeded", None)}))


@attrs.define
class Report:
    """What the checker found for one scenario on one backend."""

    scenario: str
    backend: str
    counts: Counts
    problems: list[Problem]
    seconds: float = 0.0

    def describe(self, limit: int = 25) -> str:
        """The counts and the first ``limit`` problems, for a failing assertion."""
        lines = [f"{self.scenario} on {self.backend}: {self.counts}"]
        lines += [f"  {problem}" for problem in self.problems[:limit]]
        if len(self.problems) > limit:
            lines.append(f"  ... and {len(self.problems) - limit} more")
        return "\n".join(lines)


@attrs.frozen
class _Attempt:
    number: int
    outcome: str | None
    started_at: datetime
    error: str | None


@attrs.frozen
class _Entry:
    kind: str
    event: str | None
    from_status: str | None
    to_status: str | None
    at: datetime
    detail: Mapping[str, Any]


@attrs.frozen
class _Delivery:
    id: str
    status: str
    reason: str | None
    attempt_count: int
    max_attempts: int
    idempotency_key: str


def read_ledger(
    db: Engine,
) -> tuple[dict[str, _Delivery], dict[str, list[_Attempt]], dict[str, list[_Entry]]]:
    """Every delivery, its attempts (by number) and its journal (in order)."""
    with db.connect() as conn:
        deliveries = {
            str(row.id): _Delivery(
                str(row.id),
                row.status,
                row.reason,
                row.attempt_count,
                row.max_attempts,
                row.idempotency_key,
            )
            for row in conn.execute(
                text(
                    "SELECT id, status, reason, attempt_count, max_attempts, idempotency_key "
                    f"FROM {_DELIVERIES}"
                )
            )
        }
        attempts: dict[str, list[_Attempt]] = collections.defaultdict(list)
        for row in conn.execute(
            text(
                "SELECT delivery_id, number, outcome, started_at, error "
                f"FROM {_ATTEMPTS} ORDER BY delivery_id, number"
            )
        ):
            attempts[str(row.delivery_id)].append(
                _Attempt(row.number, row.outcome, row.started_at, row.error)
            )
        journal: dict[str, list[_Entry]] = collections.defaultdict(list)
        for row in conn.execute(
            text(
                "SELECT delivery_id, kind, event, from_status, to_status, at, detail "
                f"FROM {_JOURNAL} ORDER BY id"
            )
        ):
            journal[str(row.delivery_id)].append(
                _Entry(row.kind, row.event, row.from_status, row.to_status, row.at, row.detail)
            )
    return deliveries, attempts, journal


def in_flight_attempts(db: Engine) -> int:
    """How many attempts are started and not completed, across the ledger."""
    with db.connect() as conn:
        return int(
            conn.execute(
                text(f"SELECT count(*) FROM {_ATTEMPTS} WHERE outcome IS NULL")
            ).scalar_one()
        )


def _check_journal(delivery: _Delivery, entries: Sequence[_Entry], problem: Any) -> datetime | None:
    """Check the chain of transitions; return when the delivery became terminal."""
    if not entries or entries[0].kind != "created":
        problem("unexpected", "the journal does not start with its creation")
        return None
    status = entries[0].to_status
    terminal_at: datetime | None = None
    for entry in entries[1:]:
        if terminal_at is not None:
            problem(
                "unexpected",
                f"write after terminal: {entry.kind} {entry.event} "
                f"{entry.from_status}->{entry.to_status}",
            )
        if entry.kind == "transition":
            if entry.from_status != status:
                problem(
                    "unexpected",
                    f"broken chain: {entry.event} from {entry.from_status} while {status}",
                )
            try:
                moved = apply_event(
                    DeliveryStatus(entry.from_status or ""), Event(entry.event or "")
                )
            except (IllegalTransitionError, ValueError) as error:
                problem("unexpected", f"illegal transition in the journal: {error}")
            else:
                if moved.dest.value != entry.to_status:
                    problem(
                        "unexpected",
                        f"{entry.event} from {entry.from_status} journaled as {entry.to_status}",
                    )
            status = entry.to_status
        elif entry.kind == "deferred" and not entry.from_status == entry.to_status == status:
            problem("unexpected", f"deferral journaled {entry.from_status}->{entry.to_status}")
        if status in _TERMINAL and terminal_at is None:
            terminal_at = entry.at
    if status != delivery.status:
        problem("unexpected", f"the row says {delivery.status}, the journal {status}")
    return terminal_at


def _check_attempts(
    delivery: _Delivery,
    attempts: Sequence[_Attempt],
    entries: Sequence[_Entry],
    terminal_at: datetime | None,
    problem: Any,
) -> None:
    numbers = [attempt.number for attempt in attempts]
    if numbers != list(range(1, len(attempts) + 1)):
        problem("unexpected", f"attempt numbers {numbers}")
    if len(attempts) != delivery.attempt_count:
        problem(
            "unexpected", f"{len(attempts)} attempt rows, attempt_count {delivery.attempt_count}"
        )
    if len(attempts) > delivery.max_attempts:
        problem("unexpected", f"{len(attempts)} attempts, max_attempts {delivery.max_attempts}")
    outcomes = [attempt.outcome for attempt in attempts]
    if outcomes.count("succeeded") > 1:
        problem("unexpected", f"{outcomes.count('succeeded')} succeeded attempts")
    if delivery.status == "cancelled" and "succeeded" in outcomes:
        problem("unexpected", "cancelled with a succeeded attempt")
    if delivery.status == "succeeded" and "succeeded" not in outcomes:
        problem("unexpected", "succeeded without a succeeded attempt")
    if delivery.status in _TERMINAL and None in outcomes:
        problem("unexpected", "an attempt left in flight on a terminal delivery")
    recorded = collections.Counter(
        entry.detail.get("attempt")
        for entry in entries
        if entry.kind == "transition" and "attempt" in entry.detail
    )
    for attempt in attempts:
        if terminal_at is not None and attempt.started_at > terminal_at:
            problem("unexpected", f"attempt {attempt.number} started after the terminal write")
        closed = attempt.outcome == "unknown" and (attempt.error or "").endswith(
            _CLOSED_BY_OPERATOR
        )
        wanted = 0 if attempt.outcome is None or closed else 1
        if recorded[attempt.number] != wanted:
            what = "a partial write" if recorded[attempt.number] < wanted else "written twice"
            problem(
                "unexpected",
                f"attempt {attempt.number} ({attempt.outcome}) has "
                f"{recorded[attempt.number]} recording transitions ({what})",
            )


def check(  # noqa: PLR0912 - one pass over every rule, in order
    db: Engine,
    files: RunFiles,
    *,
    scenario: str,
    backend: str,
    expect: Mapping[UUID, Expect] | None = None,
    global_faults: Sequence[GlobalFault] = (),
    extra: Iterable[Problem] = (),
    injected: int | None = None,
) -> Report:
    """Check one scenario run; see the module docstring for what is counted.

    ``injected`` is the number of deliveries the scenario meant to commit
    (default: those in the ledger); a committed delivery missing from the
    ledger is never possible, so only the ledger's are checked.
    """
    deliveries, attempts, journal = read_ledger(db)
    calls: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    for call in files.provider.read():
        calls[call["d"]].append(call)
    faults = files.faults.read()
    post_accept = collections.Counter(f["d"] for f in faults if f["pa"])
    acks: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    for job in files.jobs.read():
        if job.get("kind") == "ack":
            acks[job["d"]].append(job)
    expected = {str(key): value for key, value in (expect or {}).items()}
    problems: list[Problem] = list(extra)
    lost = duplicated = duplicated_raw = 0

    problems.extend(
        Problem("unexpected", delivery_id, "a call for a delivery not in the ledger")
        for delivery_id in calls.keys() - deliveries.keys()
    )
    for delivery_id, delivery in deliveries.items():

        def problem(kind: str, detail: str, delivery_id: str = delivery_id) -> None:
            problems.append(Problem(kind, delivery_id, detail))

        entries = journal.get(delivery_id, [])
        tried = attempts.get(delivery_id, [])
        if delivery.status not in _TERMINAL:
            lost += 1
            outcomes = [a.outcome for a in tried]
            problem("lost", f"{delivery.status} after the run, attempts {outcomes}")
        terminal_at = _check_journal(delivery, entries, problem)
        _check_attempts(delivery, tried, entries, terminal_at, problem)

        made = calls.get(delivery_id, [])
        if {call["k"] for call in made} - {delivery.idempotency_key}:
            problem("unexpected", "a provider call under a key that is not the delivery's")
        per_attempt = collections.Counter(call["a"] for call in made)
        for number, count in per_attempt.items():
            if count > 1:
                problem("unexpected", f"{count} provider calls under attempt {number}")
            if number > len(tried) or number < 1:
                problem("unexpected", f"a provider call under attempt {number}, never claimed")
        effects = [call for call in made if call["e"]]
        if delivery.status == "succeeded" and not effects:
            problem("unexpected", "succeeded, but the provider never acted")
        distinct = len({call["k"] for call in effects})
        if distinct > 1:
            duplicated += distinct - 1
            problem("duplicated", f"the provider acted under {distinct} keys")
        allowed = 1 + post_accept[delivery_id]
        if any(fault.post_accept for fault in global_faults):
            effect_attempts = {call["a"] for call in effects}
            unknown_with_effect = sum(
                1 for a in tried if a.outcome == "unknown" and a.number in effect_attempts
            )
            allowed = 1 + max(post_accept[delivery_id], unknown_with_effect)
        if len(effects) > allowed:
            duplicated_raw += len(effects) - allowed
            problem(
                "duplicated_raw",
                f"{len(effects)} provider effects, {allowed - 1} post-accept faults",
            )

        for ack in acks.get(delivery_id, []):
            detail = str(ack.get("detail", ""))
            if detail in _COMMITTING_ACKS or detail.startswith("suppressed:"):
                acked_at = parse_time(ack["t"])
                if terminal_at is None or terminal_at > acked_at:
                    problem(
                        "unexpected", f"job acknowledged ({detail}) before its outcome committed"
                    )

        wanted = expected.get(delivery_id)
        if wanted is not None:
            end = (delivery.status, delivery.reason)
            if wanted.ends is not None and end not in wanted.ends:
                problem("unexpected", f"ended {end}, the scenario allows {sorted(wanted.ends)}")
            if wanted.max_calls is not None and len(made) > wanted.max_calls:
                problem("unexpected", f"{len(made)} provider calls, at most {wanted.max_calls}")
            if wanted.attempts is not None and len(tried) != wanted.attempts:
                problem("unexpected", f"{len(tried)} attempts, expected {wanted.attempts}")

    unexpected = sum(1 for p in problems if p.kind == "unexpected")
    counts = Counts(
        deliveries=injected if injected is not None else len(deliveries),
        faults=len(faults) + len(global_faults),
        lost=lost,
        duplicated=duplicated,
        duplicated_raw=duplicated_raw,
        unexpected=unexpected,
    )
    return Report(scenario, backend, counts, problems)


HEADER: Final = (
    "scenario",
    "backend",
    "deliveries",
    "faults",
    "lost",
    "duplicated",
    "duplicated (no idempotency)",
    "unexpected",
    "seconds",
)


def table(reports: Sequence[Report]) -> str:
    """The reports as a Markdown table, with a total row."""
    rows = [
        (r.scenario, r.backend, *map(str, attrs.astuple(r.counts)), f"{r.seconds:.1f}")
        for r in reports
    ]
    if reports:
        total = sum((r.counts for r in reports[1:]), reports[0].counts)
        seconds = sum(r.seconds for r in reports)
        rows.append(("**total**", "", *map(str, attrs.astuple(total)), f"{seconds:.1f}"))
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)
