"""``chimeway demo``: the simulation of :mod:`chimeway_core.demo`, printed.

The database is the demo's own SQLite file, deleted and created again on
every run, unless ``--db`` names another one. The demo never reads
``CHIMEWAY_DATABASE_URL``: it must not write a thousand made-up deliveries
into the application's ledger because a variable happened to be set. A
database given with ``--db`` must hold no deliveries (``--reset`` drops and
recreates chimeway's tables in it first).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Final

from sqlalchemy import URL, Engine, event, inspect

from chimeway_core import demo as simulation
from chimeway_core.cli.config import database_url, open_engine, shown, sqlite_path
from chimeway_core.cli.errors import CliError, ExitCode
from chimeway_core.cli.output import echo, format_table, print_json
from chimeway_core.cli.parser import Subparsers, command
from chimeway_core.cli.progress import ProgressBar
from chimeway_core.schema import DeliveryRow
from chimeway_core.states import TERMINAL_STATUSES
from chimeway_core.store import SQLStore

__all__ = ["DEFAULT_DATABASE", "register", "render_report", "report_json", "run", "throughput_line"]

#: The demo's own database file, in the current directory.
DEFAULT_DATABASE: Final = "chimeway-demo.sqlite3"

_MAX_DELIVERIES: Final = 1_000_000
_HISTOGRAM_WIDTH: Final = 40

_DESCRIPTION: Final = f"""\
Send N deliveries through a simulated provider on the embedded default
(SQLite and the in-memory queue), in virtual time, and print what happened:
final statuses and reasons, attempts per delivery, the dispatch-table rows
that fired, and throughput. The provider's answers are derived from --seed
and each delivery's idempotency key, so the same seed prints the same report
(all but the last line, the wall-clock throughput).

The database is ./{DEFAULT_DATABASE}, recreated on every run, unless --db
names another; CHIMEWAY_DATABASE_URL is ignored on purpose.

exit status: 0 every delivery ended terminal, 1 some did not, 2 bad options."""


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 1 <= value <= _MAX_DELIVERIES:
        raise argparse.ArgumentTypeError(f"must be between 1 and {_MAX_DELIVERIES}, got {value}")
    return value


def _mix(text: str) -> simulation.Mix:
    try:
        return simulation.Mix.parse(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def register(subparsers: Subparsers) -> None:
    """Add ``chimeway demo``."""
    parser = command(subparsers, "demo", run, "Run the self-contained demo.")
    parser.description = _DESCRIPTION
    parser.add_argument(
        "--db",
        metavar="URL",
        help=f"database URL (default: sqlite:///{DEFAULT_DATABASE}, recreated each run)",
    )
    parser.add_argument(
        "--reset",
        action="store_true",
        help="with --db: drop and recreate chimeway's tables (and their rows) first",
    )
    parser.add_argument(
        "-n",
        "--deliveries",
        type=_count,
        default=1000,
        metavar="N",
        help="how many deliveries to send (default: 1000)",
    )
    parser.add_argument("--seed", type=int, default=0, help="the simulation's seed (default: 0)")
    parser.add_argument(
        "--mix",
        type=_mix,
        default=simulation.DEFAULT_MIX,
        metavar="NAME=WEIGHT,...",
        help="relative weights of the profiles success, temporary, permanent, bounce, slow, "
        "opted_out; profiles not named get 0 (default: "
        + ",".join(f"{p.value}={w:g}" for p, w in simulation.DEFAULT_MIX.weights.items())
        + ")",
    )
    parser.add_argument(
        "--batch-size",
        type=_count,
        default=200,
        metavar="N",
        help="deliveries per notify_many call (default: 200)",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def _fast_sqlite(engine: Engine) -> None:
    # The demo's scratch file needs no power-loss durability: WAL with
    # synchronous=NORMAL survives a crash of the process, and skips an fsync
    # per commit.
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA synchronous=NORMAL")
        finally:
            cursor.close()

    event.listen(engine, "connect", on_connect)


def _remove_sqlite_files(path: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        candidate = path.with_name(path.name + suffix)
        try:
            candidate.unlink(missing_ok=True)
        except OSError as error:
            raise CliError(
                f"cannot remove the old demo database {str(candidate)!r}: {error}"
            ) from None


def _prepare(option: str | None, reset: bool) -> tuple[SQLStore, URL, str]:
    """The demo's store (tables created, no deliveries), its URL, and what happened to it."""
    if option is None:
        path = Path(DEFAULT_DATABASE).resolve()
        _remove_sqlite_files(path)
        url = database_url(f"sqlite:///{path}")
        note = "recreated"
    else:
        url = database_url(option)
        note = "given"
    engine = open_engine(url, must_exist=False)
    if sqlite_path(url) is not None:
        _fast_sqlite(engine)
        engine.dispose()  # reconnect with the pragma
    store = SQLStore(engine)
    if option is not None and inspect(engine).has_table(DeliveryRow.__tablename__):
        if reset:
            store.drop_all()
            note = "reset"
        else:
            held = sum(store.counts().values())
            if held:
                raise CliError(
                    f"{shown(url)} already holds {held} deliveries; the demo needs an empty "
                    "ledger: point --db at a scratch database, or pass --reset to drop "
                    "chimeway's tables there first"
                )
    store.create_all()
    return store, url, note


def _duration(seconds: float) -> str:
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min {secs:02d} s"
    if minutes:
        return f"{minutes} min {secs:02d} s"
    return f"{secs} s"


def render_report(report: simulation.DemoReport, database: str, note: str) -> list[str]:
    """Every line of the text report but the throughput line (deterministic per seed)."""
    lines = [
        f"chimeway demo: {report.deliveries} deliveries through a simulated provider, "
        f"seed {report.seed}",
        f"database: {database} ({note})",
        f"mix: {report.mix}",
        "",
    ]
    status_rows = [("final status", "reason", "deliveries")]
    status_rows += [(s.status.value, s.reason or "-", str(s.count)) for s in report.statuses]
    status_rows.append(("total", "", str(sum(s.count for s in report.statuses))))
    lines += format_table(status_rows, right={2})
    lines += ["", "attempts per delivery"]
    peak = max((n for _, n in report.attempts), default=0) or 1
    histogram = [
        (str(attempts), str(n), "#" * (n * _HISTOGRAM_WIDTH // peak) or ("." if n else ""))
        for attempts, n in report.attempts
    ]
    lines += format_table(histogram, right={0, 1}, indent=2)
    lines.append("")
    row_rows = [("dispatch rows fired", "action", "count")]
    row_rows += [(r.row, r.action.upper(), str(r.count)) for r in report.rows]
    lines += format_table(row_rows, right={2})
    lines += [
        "",
        f"provider: {report.provider_calls} calls, {report.slow_answers} slow answers, "
        f"{report.timeouts} past the timeout (outcome unknown, retried with the same "
        "idempotency key)",
        f"virtual time: {_duration(report.virtual_seconds)} of latency and backoff",
    ]
    if report.job_failures:
        lines.append(f"jobs that raised: {report.job_failures}")
    if report.all_terminal:
        lines.append(f"every delivery ended in a terminal status ({report.deliveries})")
    else:
        lines.append(
            f"PROBLEM: {report.deliveries - _terminal(report)} of {report.deliveries} "
            "deliveries did not end in a terminal status"
        )
    lines.append(f"look inside: chimeway inspect --db {database}")
    return lines


def _terminal(report: simulation.DemoReport) -> int:
    return sum(s.count for s in report.statuses if s.status in TERMINAL_STATUSES)


def throughput_line(report: simulation.DemoReport) -> str:
    """The last line: deliveries per second of wall time (the only varying line)."""
    return (
        f"throughput: {report.throughput:.0f} deliveries/s ({report.wall_seconds:.2f} s wall time)"
    )


def report_json(report: simulation.DemoReport, database: str) -> dict[str, object]:
    """The report as plain JSON values."""
    total = sum(report.mix.weights.values())
    return {
        "deliveries": report.deliveries,
        "seed": report.seed,
        "database": database,
        # Rounded: the shares of weights summing to 1 in floating point read 0.5499999...
        "mix": {p.value: round(w / total, 6) for p, w in report.mix.weights.items()},
        "statuses": [
            {"status": s.status.value, "reason": s.reason, "count": s.count}
            for s in report.statuses
        ],
        "attempts": {str(attempts): n for attempts, n in report.attempts},
        "rows": [{"row": r.row, "action": r.action, "count": r.count} for r in report.rows],
        "provider": {
            "calls": report.provider_calls,
            "slow_answers": report.slow_answers,
            "timeouts": report.timeouts,
        },
        "job_failures": report.job_failures,
        "virtual_seconds": round(report.virtual_seconds, 3),
        "all_terminal": report.all_terminal,
        "wall_seconds": round(report.wall_seconds, 3),
        "deliveries_per_second": round(report.throughput, 1),
    }


def run(args: argparse.Namespace) -> int:
    """Run the demo and print its report."""
    if args.reset and args.db is None:
        raise CliError("--reset needs --db (the default demo database is recreated anyway)")
    store, url, note = _prepare(args.db, args.reset)
    database = shown(url)
    bar = ProgressBar(sys.stderr, args.deliveries, enabled=sys.stderr.isatty())
    try:
        report = simulation.run_demo(
            store,
            deliveries=args.deliveries,
            seed=args.seed,
            mix=args.mix,
            batch_size=args.batch_size,
            on_terminal=bar.update,
        )
    finally:
        bar.close()
        store.engine.dispose()
    if args.json:
        print_json(report_json(report, database))
    else:
        echo(render_report(report, database, note))
        echo(throughput_line(report))
    return ExitCode.OK if report.all_terminal else ExitCode.PROBLEM
