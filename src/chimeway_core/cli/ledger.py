"""``chimeway inspect``, ``list``, ``show`` and ``cancel``: the ledger, read and acted on directly.

These commands need no engine and no channel: they read and write the
delivery ledger through :class:`~chimeway_core.store.SQLStore` at ``--db``
(or ``CHIMEWAY_DATABASE_URL``). ``show`` prints a delivery's explanation,
rendered from its history alone (:func:`explain`), so an operator can read
it on a machine where the application's channels are not configured.
``cancel`` goes through :func:`chimeway_core.engine.operate.cancel`, the
function :meth:`Chimeway.cancel <chimeway_core.engine.Chimeway.cancel>`
calls; with ``--app`` it acts through the application's engine, so the
engine's telemetry reports the cancel.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any, Final
from uuid import UUID

from chimeway_core.cli.config import (
    ENV_DATABASE_URL,
    ENV_NAMESPACE,
    add_namespace,
    database_url,
    from_env,
    namespace,
    open_store,
    shown,
)
from chimeway_core.cli.errors import CliError, ExitCode
from chimeway_core.cli.output import counted, echo, format_table, iso, print_json
from chimeway_core.cli.parser import Subparsers, age, ago, command, delivery_id
from chimeway_core.cli.workers import _engine
from chimeway_core.clock import Clock, SystemClock
from chimeway_core.engine import operate
from chimeway_core.errors import DeliveryNotFoundError, IllegalTransitionError
from chimeway_core.explain import explain
from chimeway_core.records import Attempt, Delivery, DeliveryHistory
from chimeway_core.states import DeliveryStatus
from chimeway_core.store import SQLStore
from chimeway_core.telemetry import Telemetry

__all__ = [
    "delivery_json",
    "history_json",
    "register",
    "run_cancel",
    "run_inspect",
    "run_list",
    "run_show",
]

_STUCK_LIMIT: Final = 100
_DB_HELP: Final = f"database URL (default: ${ENV_DATABASE_URL})"


def register(subparsers: Subparsers) -> None:
    """Add ``chimeway inspect``, ``list``, ``show`` and ``cancel``."""
    inspect = command(subparsers, "inspect", run_inspect, "Summarize the delivery ledger.")
    inspect.description = (
        "Counts of deliveries by status and reason, the due backlog (live deliveries due now "
        "that no worker holds) and how long its oldest has waited, the outbox, the oldest "
        "delivery not yet terminal, and stuck deliveries: leases that expired with an "
        "attempt in flight (a worker died mid-call and no rescuer has resolved it yet).\n\n"
        "exit status: 0 nothing stuck, 1 stuck deliveries found, 2 bad options, "
        "3 database unreachable."
    )
    inspect.add_argument("--db", metavar="URL", help=_DB_HELP)
    add_namespace(inspect)
    inspect.add_argument("--json", action="store_true", help="print the summary as JSON")

    listing = command(subparsers, "list", run_list, "List deliveries, newest first.")
    listing.description = (
        "The deliveries matching every option given, newest first (by creation), at most "
        "--limit: each one's id, status, reason, channel, attempts and creation time, for "
        "chimeway show, cancel or resend. Recipients are not printed.\n\n"
        "exit status: 0 listed (none matching too), 2 bad options, 3 database unreachable."
    )
    listing.add_argument(
        "--status", choices=[status.value for status in DeliveryStatus], help="only this status"
    )
    listing.add_argument("--reason", help="only this reason (like permanent_failure)")
    listing.add_argument("--channel", metavar="NAME", help="only this channel")
    listing.add_argument("--recipient", help="only this recipient, exactly as notified")
    listing.add_argument("--key", metavar="IDEMPOTENCY_KEY", help="only this idempotency key")
    listing.add_argument(
        "--since",
        type=age,
        metavar="AGE",
        help="only those created in the last AGE: seconds, or a number with s, m, h or d",
    )
    listing.add_argument(
        "--limit", type=int, default=20, metavar="N", help="at most N (default: 20)"
    )
    listing.add_argument("--db", metavar="URL", help=_DB_HELP)
    add_namespace(listing)
    listing.add_argument("--json", action="store_true", help="print the deliveries as JSON")

    show = command(subparsers, "show", run_show, "Show one delivery and why it is where it is.")
    show.description = (
        "The delivery, every attempt and every journal entry, and the explanation: its "
        "history in time order. The payload is left out unless --payload is given.\n\n"
        "exit status: 0 shown, 1 no such delivery, 2 bad options, 3 database unreachable."
    )
    show.add_argument("id", type=delivery_id, metavar="ID", help="the delivery's id")
    show.add_argument("--db", metavar="URL", help=_DB_HELP)
    add_namespace(show)
    show.add_argument("--payload", action="store_true", help="include the payload")
    show.add_argument("--json", action="store_true", help="print the delivery as JSON")

    cancel = command(subparsers, "cancel", run_cancel, "Cancel a live delivery.")
    cancel.description = (
        "Move a ready or failed delivery to cancelled (reason: cancelled). A worker holding "
        "its lease is fenced off: its late result is not recorded.\n\n"
        "exit status: 0 cancelled, 1 no such delivery or already terminal, 2 bad options, "
        "3 database unreachable."
    )
    cancel.add_argument("id", type=delivery_id, metavar="ID", help="the delivery's id")
    cancel.add_argument("--db", metavar="URL", help=_DB_HELP)
    add_namespace(cancel)
    cancel.add_argument("--json", action="store_true", help="print the result as JSON")
    cancel.add_argument(
        "--app",
        metavar="MODULE:ATTRIBUTE",
        help="act through the application's engine, whose telemetry reports the cancel "
        f"(like myapp.notify:engine); --db is exported to it as ${ENV_DATABASE_URL}. "
        "Without --app no application is loaded ($CHIMEWAY_APP is not read)",
    )


def _store(args: argparse.Namespace) -> SQLStore:
    return open_store(from_env(args.db, ENV_DATABASE_URL), namespace=namespace(args))


# ------------------------------------------------------------------------ inspect


def _brief(delivery: Delivery) -> dict[str, Any]:
    return {
        "id": str(delivery.id),
        "channel": delivery.channel,
        "status": delivery.status.value,
        "reason": delivery.reason,
        "attempt_count": delivery.attempt_count,
        "max_attempts": delivery.max_attempts,
        "created_at": iso(delivery.created_at),
        "scheduled_at": iso(delivery.scheduled_at),
    }


def run_inspect(args: argparse.Namespace) -> int:
    """Print counts, the oldest live delivery and stuck deliveries."""
    store = _store(args)
    now = SystemClock().now()
    gauges = store.gauges(now=now)
    order = list(DeliveryStatus)
    counts = sorted(
        gauges.counts.items(), key=lambda item: (order.index(item[0][0]), item[0][1] or "")
    )
    oldest = store.oldest_non_terminal()
    stuck = store.expired_claims(now=now, limit=_STUCK_LIMIT)
    # The count and the list are two reads: one may see a lease expire the other did not.
    stuck_total = max(gauges.stuck, len(stuck))
    outbox = store.outbox_size()
    total = sum(n for _, n in counts)
    summary = {
        "database": shown(store.engine.url),
        "now": iso(now),
        "total": total,
        "counts": [
            {"status": status.value, "reason": reason, "count": n} for (status, reason), n in counts
        ],
        "due": gauges.due,
        "due_lag_seconds": gauges.due_lag_seconds,
        "outbox": outbox,
        "outbox_due": gauges.outbox,
        "oldest_non_terminal": None if oldest is None else _brief(oldest),
        "stuck_total": stuck_total,
        "stuck": [
            {
                **_brief(claim.delivery),
                "attempt": claim.attempt.number,
                "attempt_started_at": iso(claim.attempt.started_at),
                "lease_owner": claim.delivery.lease_owner,
                "lease_expires_at": iso(claim.delivery.lease_expires_at),
            }
            for claim in stuck
        ],
    }
    if args.json:
        print_json(summary)
    else:
        _print_inspect(summary)
    return ExitCode.PROBLEM if stuck_total else ExitCode.OK


# --------------------------------------------------------------------------- list


def run_list(args: argparse.Namespace) -> int:
    """Print the deliveries the options select, newest first."""
    if args.limit < 1:
        raise CliError(f"--limit must be at least 1, got {args.limit}")
    store = _store(args)
    since = None if args.since is None else ago(SystemClock().now(), args.since, "--since")
    found = store.find(
        status=None if args.status is None else DeliveryStatus(args.status),
        reason=args.reason,
        channel=args.channel,
        recipient=args.recipient,
        idempotency_key=args.key,
        created_since=since,
        limit=args.limit + 1,  # one more tells whether there are more
    )
    shown_now, more = found[: args.limit], len(found) > args.limit
    if args.json:
        print_json({"deliveries": [_brief(delivery) for delivery in shown_now], "more": more})
        return ExitCode.OK
    if not shown_now:
        echo("no deliveries match")
        return ExitCode.OK
    rows = [["id", "status", "reason", "channel", "attempts", "created_at"]]
    rows += [
        [
            str(delivery.id),
            delivery.status.value,
            delivery.reason or "-",
            delivery.channel,
            f"{delivery.attempt_count}/{delivery.max_attempts}",
            iso(delivery.created_at) or "",
        ]
        for delivery in shown_now
    ]
    echo(format_table(rows, right={4}))
    tail = f"; more match (--limit {args.limit})" if more else ""
    echo(f"{len(shown_now)} shown, newest first{tail}")
    return ExitCode.OK


def _outbox_line(rows: int, due: int) -> str:
    """``3 rows (2 due now, 1 scheduled for later)``; ``no rows`` when empty."""
    if rows == 0:
        return "no rows"
    parts = [
        f"{due} due now" if due else "",
        f"{rows - due} scheduled for later" if rows - due else "",
    ]
    return f"{counted(rows, 'row')} ({', '.join(part for part in parts if part)})"


def _print_inspect(summary: dict[str, Any]) -> None:
    due = summary["due"]
    lag = f", the oldest due {summary['due_lag_seconds']:.0f} s ago" if due else ""
    lines = [
        f"database: {summary['database']}",
        f"deliveries: {summary['total']}; due now, no worker on it: {due}{lag}",
        f"outbox: {_outbox_line(summary['outbox'], summary['outbox_due'])}",
        "",
    ]
    rows = [("status", "reason", "count")]
    rows += [(c["status"], c["reason"] or "-", str(c["count"])) for c in summary["counts"]]
    lines += format_table(rows, right={2}) if summary["counts"] else ["no deliveries"]
    oldest = summary["oldest_non_terminal"]
    lines.append("")
    if oldest is None:
        lines.append("oldest non-terminal: none, every delivery is terminal")
    else:
        lines.append(
            f"oldest non-terminal: {oldest['id']} {oldest['status']} on {oldest['channel']}, "
            f"created {oldest['created_at']}, attempt {oldest['attempt_count']} of "
            f"{oldest['max_attempts']}, next run not before {oldest['scheduled_at']}"
        )
    stuck, listed = summary["stuck_total"], len(summary["stuck"])
    if not stuck:
        lines.append("stuck (lease expired, attempt in flight): none")
    else:
        more = "" if stuck == listed else f" (the first {listed} listed)"
        lines.append(f"stuck (lease expired, attempt in flight): {stuck}{more}")
        stuck_rows = [("id", "channel", "attempt", "lease owner", "lease expired at")]
        stuck_rows += [
            (
                s["id"],
                s["channel"],
                str(s["attempt"]),
                s["lease_owner"] or "-",
                s["lease_expires_at"],
            )
            for s in summary["stuck"]
        ]
        lines += format_table(stuck_rows, indent=2)
        lines.append("  run the rescuer (chimeway rescue --app ..., or a worker) to resolve them")
    echo(lines)


# --------------------------------------------------------------------------- show


def delivery_json(delivery: Delivery, *, payload: bool) -> dict[str, Any]:
    """A delivery as plain JSON values; the payload only when asked for."""
    data: dict[str, Any] = {
        "id": str(delivery.id),
        "channel": delivery.channel,
        "recipient": delivery.recipient,
        "notification_key": delivery.notification_key,
        "idempotency_key": delivery.idempotency_key,
        "status": delivery.status.value,
        "reason": delivery.reason,
        "terminal": delivery.is_terminal,
        "attempt_count": delivery.attempt_count,
        "max_attempts": delivery.max_attempts,
        "scheduled_at": iso(delivery.scheduled_at),
        "expires_at": iso(delivery.expires_at),
        "lease_owner": delivery.lease_owner,
        "lease_expires_at": iso(delivery.lease_expires_at),
        "deferral_count": delivery.deferral_count,
        "version": delivery.version,
        "metadata": dict(delivery.metadata),
        "created_at": iso(delivery.created_at),
        "updated_at": iso(delivery.updated_at),
    }
    if payload:
        data["payload"] = delivery.payload
    return data


def _attempt_json(attempt: Attempt) -> dict[str, Any]:
    return {
        "number": attempt.number,
        "started_at": iso(attempt.started_at),
        "finished_at": iso(attempt.finished_at),
        "outcome": None if attempt.outcome is None else attempt.outcome.value,
        "error_class": attempt.error_class,
        "error": attempt.error,
        "provider_response": None
        if attempt.provider_response is None
        else dict(attempt.provider_response),
        "worker": attempt.worker,
    }


def history_json(history: DeliveryHistory, *, payload: bool) -> dict[str, Any]:
    """A delivery's whole history as plain JSON values, with its explanation."""
    return {
        "delivery": delivery_json(history.delivery, payload=payload),
        "attempts": [_attempt_json(a) for a in history.attempts],
        "journal": [
            {
                "at": iso(entry.at),
                "kind": entry.kind.value,
                "event": entry.event,
                "from_status": None if entry.from_status is None else entry.from_status.value,
                "to_status": None if entry.to_status is None else entry.to_status.value,
                "reason": entry.reason,
                "detail": dict(entry.detail),
            }
            for entry in history.journal
        ],
        "explanation": explain(history),
    }


def _compact(value: object) -> str:
    """``value`` as one line of JSON; what JSON cannot hold, as its ``str``."""
    return json.dumps(value, ensure_ascii=False, separators=(", ", ": "), default=str)


def _load(store: SQLStore, delivery_id: UUID) -> DeliveryHistory:
    history = store.history(delivery_id)
    if history is None:
        raise CliError(f"no delivery with id {delivery_id}", ExitCode.PROBLEM)
    return history


def run_show(args: argparse.Namespace) -> int:
    """Print one delivery with its attempts, journal and explanation."""
    history = _load(_store(args), args.id)
    data = history_json(history, payload=args.payload)
    if args.json:
        print_json(data)
        return ExitCode.OK
    d = history.delivery
    fields = [
        ("id", str(d.id)),
        ("channel", d.channel),
        ("recipient", d.recipient),
        ("notification key", d.notification_key or "-"),
        ("idempotency key", d.idempotency_key),
        ("status", d.status.value + (f" ({d.reason})" if d.reason else "")),
        ("attempts", f"{d.attempt_count} of {d.max_attempts}"),
        ("scheduled at", d.scheduled_at.isoformat()),
        ("expires at", iso(d.expires_at) or "-"),
        ("lease", f"{d.lease_owner} until {iso(d.lease_expires_at)}" if d.lease_owner else "-"),
        ("deferrals", str(d.deferral_count)),
        ("created at", d.created_at.isoformat()),
        ("updated at", d.updated_at.isoformat()),
    ]
    if args.payload:
        fields.append(("payload", _compact(d.payload)))
    lines = [f"delivery {d.id}"]
    lines += format_table([(name, value) for name, value in fields[1:]], indent=2)
    lines += ["", "attempts"]
    if history.attempts:
        heads = ("#", "started", "finished", "outcome", "error class", "error", "worker")
        rows = [(*heads, "provider response")]
        rows += [
            (
                str(a["number"]),
                a["started_at"],
                a["finished_at"] or "in flight",
                a["outcome"] or "-",
                a["error_class"] or "-",
                a["error"] or "-",
                a["worker"] or "-",
                "-" if a["provider_response"] is None else _compact(a["provider_response"]),
            )
            for a in data["attempts"]
        ]
        lines += format_table(rows, indent=2)
    else:
        lines.append("  none")
    lines += ["", "journal"]
    entries = [("at", "kind", "event", "from", "to", "reason")]
    entries += [
        (
            j["at"],
            j["kind"],
            j["event"] or "-",
            j["from_status"] or "-",
            j["to_status"] or "-",
            j["reason"] or "-",
        )
        for j in data["journal"]
    ]
    lines += format_table(entries, indent=2)
    lines += ["", "explanation"]
    lines += [f"  {line}" for line in data["explanation"]]
    echo(lines)
    return ExitCode.OK


# ------------------------------------------------------------------------- cancel


def run_cancel(args: argparse.Namespace) -> int:
    """Cancel one live delivery, through the function :meth:`Chimeway.cancel` calls."""
    store, telemetry, clock = _cancelling(args)
    before = store.get(args.id)
    if before is None:
        raise CliError(f"no delivery with id {args.id}", ExitCode.PROBLEM)
    try:
        cancelled = operate.cancel(store, telemetry, args.id, now=clock.now())
    except DeliveryNotFoundError:
        raise CliError(f"no delivery with id {args.id}", ExitCode.PROBLEM) from None
    except IllegalTransitionError as error:
        reason = f" ({before.reason})" if before.reason else ""
        raise CliError(
            f"delivery {args.id} is already {error.status.value}{reason}, a terminal status; "
            "nothing to cancel",
            ExitCode.PROBLEM,
        ) from None
    before, after = cancelled.before or before, cancelled.after
    if args.json:
        print_json(
            {
                "id": str(after.id),
                "previous_status": before.status.value,
                "status": after.status.value,
                "reason": after.reason,
            }
        )
    else:
        echo(f"cancelled {after.id} (was {before.status.value}; reason: {after.reason})")
    return ExitCode.OK


def _cancelling(args: argparse.Namespace) -> tuple[SQLStore, Telemetry, Clock]:
    """The store, telemetry and clock a cancel uses: ``--app``'s engine's, else ``--db``'s."""
    if args.app is None:
        # No application: the ledger alone, and telemetry nobody subscribed to.
        return _store(args), Telemetry(), SystemClock()
    if args.db is not None:
        database_url(args.db)  # fail on a malformed URL before importing anything
        os.environ[ENV_DATABASE_URL] = args.db
    if args.namespace is not None:
        os.environ[ENV_NAMESPACE] = namespace(args) or ""
    engine = _engine(args.app, args.db)
    return engine.store, engine.telemetry, engine.clock
