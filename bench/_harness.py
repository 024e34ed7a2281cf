"""The shared harness of chimeway's benchmarks: timing, ratios, services, results.

Theory of operation
-------------------
Machines are noisy and this one is shared, so no figure is reported alone:
every measured figure stands next to an *anchor* (a dict lookup, a
hand-written transaction, a raw queue job) measured **in the same run**, and
the comparison is the ratio of the two. The sides of a comparison are
measured interleaved, run after run (:func:`interleave`, rotating the order
so no side always goes first), and the ratio is computed per run, then its
median taken: a burst of load from a neighbour hits both sides of the runs
it falls in, not one side of the whole comparison.

A figure is a :class:`Stat`: the samples of several runs, reported as the
median with the min..max spread. A comparison (:meth:`Results.compare`) is
the figure, its anchor and their paired ratio; a target, when the issue sets
one, is recorded as met or missed, never asserted: a benchmark informs, the
test suite gates.

Counts (commits, statements, broker commands) are machine-independent and
come from :class:`SQLCounter` (SQLAlchemy engine events) and
:func:`redis_command_calls` (Redis ``INFO commandstats``, server-wide: other
clients of a shared Redis add to it, which is why callers keep the smallest
of several runs).
"""

from __future__ import annotations

import json
import os
import platform
import re
import secrets
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

from sqlalchemy import Engine, create_engine, event, make_url, text

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent

POSTGRES_ADMIN_URL = os.environ.get(
    "CHIMEWAY_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
# Database 10: the RQ tests own 15 and dedupe on job ids there.
REDIS_URL = os.environ.get("CHIMEWAY_BENCH_REDIS_URL", "redis://127.0.0.1:6379/10")
RABBITMQ_URL = os.environ.get("CHIMEWAY_BENCH_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672//")


# ------------------------------------------------------------------- config


@dataclass
class Config:
    """What one benchmark run is asked to do; areas scale their sizes from it.

    ``smoke`` runs every code path with tiny sizes and one or two runs (a
    seconds-long check, never a figure to quote). ``workdir`` is a scratch
    folder for databases, worker apps and logs.
    """

    smoke: bool
    workdir: Path
    postgres_admin_url: str = POSTGRES_ADMIN_URL
    redis_url: str = REDIS_URL
    rabbitmq_url: str = RABBITMQ_URL

    def size(self, full: int, smoke: int) -> int:
        """``full`` in a real run, ``smoke`` in a smoke run."""
        return smoke if self.smoke else full

    @property
    def runs(self) -> int:
        """How many interleaved runs each comparison gets."""
        return 2 if self.smoke else 5


# -------------------------------------------------------------------- stats


@dataclass(frozen=True)
class Stat:
    """One figure measured over several runs: median and min..max spread."""

    samples: tuple[float, ...]
    unit: str

    @property
    def median(self) -> float:
        """The median of the samples."""
        return statistics.median(self.samples)

    @property
    def low(self) -> float:
        """The smallest sample."""
        return min(self.samples)

    @property
    def high(self) -> float:
        """The largest sample."""
        return max(self.samples)

    @property
    def spread_pct(self) -> float:
        """(max - min) / median, in percent: how much the runs disagreed."""
        median = self.median
        return 0.0 if median == 0 else (self.high - self.low) / abs(median) * 100

    def to_json(self) -> dict[str, Any]:
        """The figure as JSON: median, min, max, spread and the raw samples."""
        return {
            "median": self.median,
            "min": self.low,
            "max": self.high,
            "spread_pct": self.spread_pct,
            "runs": len(self.samples),
            "unit": self.unit,
            "samples": list(self.samples),
        }


class BenchCheckError(RuntimeError):
    """A count a benchmark checks after a run was not what the run must leave."""


def expect(what: str, expected: object, actual: object) -> None:
    """Raise :class:`BenchCheckError` naming ``what`` unless ``actual == expected``.

    Not ``assert``: a failed check must say which count was wrong (a bare
    AssertionError in a smoke run under load said nothing), and ``-O`` must
    not remove it.
    """
    if actual != expected:
        raise BenchCheckError(f"{what}: expected {expected!r}, got {actual!r}")


def interleave(cases: Mapping[str, Callable[[], float]], runs: int) -> dict[str, tuple[float, ...]]:
    """Run every case once per run, rotating which goes first; return the samples per case.

    Each case returns the figure of one run (a rate, a duration). Rotating the
    order spreads warm-up and neighbours' load over every side.
    """
    names = list(cases)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for run in range(runs):
        shift = run % len(names)
        for name in names[shift:] + names[:shift]:
            samples[name].append(cases[name]())
    return {name: tuple(values) for name, values in samples.items()}


def per_second(count: int, action: Callable[[], object]) -> float:
    """``count`` divided by the wall-clock seconds ``action`` took."""
    started = time.perf_counter()
    action()
    return count / (time.perf_counter() - started)


# ------------------------------------------------------------------ results

#: Redis commands per job a broker-count target lets through for the idle
#: worker's own polling, which both sides' whole-run counts carry.
BROKER_POLLING_SLACK: Final = 0.1


@dataclass(frozen=True)
class Target:
    """A goal the issue sets for a ratio: ``ratio >= value`` or ``ratio <= value``."""

    op: str
    value: float
    label: str

    def met(self, ratio: float) -> bool:
        """Whether ``ratio`` meets the goal."""
        return ratio >= self.value if self.op == ">=" else ratio <= self.value


@dataclass
class Results:
    """Everything a run measured, as the JSON ``bench/results/latest.json`` holds."""

    smoke: bool
    comparisons: list[dict[str, Any]] = field(default_factory=list)
    counts: dict[str, Any] = field(default_factory=dict)
    memory: dict[str, Any] = field(default_factory=dict)
    profile: dict[str, Any] = field(default_factory=dict)
    notes: dict[str, list[str]] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    extra_targets: list[dict[str, Any]] = field(default_factory=list)
    machine: dict[str, dict[str, Any]] = field(default_factory=dict)

    def compare(
        self,
        area: str,
        label: str,
        figure: tuple[str, Sequence[float]],
        anchor: tuple[str, Sequence[float]],
        *,
        unit: str,
        target: Target | None = None,
        detail: str = "",
    ) -> dict[str, Any]:
        """Record a figure next to its anchor, with the paired per-run ratio figure/anchor.

        ``figure`` and ``anchor`` are ``(name, samples)`` with one sample per
        interleaved run, in run order.
        """
        (figure_name, figure_samples), (anchor_name, anchor_samples) = figure, anchor
        ratios = tuple(f / a for f, a in zip(figure_samples, anchor_samples, strict=True))
        ratio = Stat(ratios, "x")
        entry: dict[str, Any] = {
            "area": area,
            "label": label,
            "detail": detail,
            "figure_name": figure_name,
            "figure": Stat(tuple(figure_samples), unit).to_json(),
            "anchor_name": anchor_name,
            "anchor": Stat(tuple(anchor_samples), unit).to_json(),
            "ratio": ratio.to_json(),
            "target": None,
        }
        if target is not None:
            entry["target"] = {
                "label": target.label,
                "op": target.op,
                "value": target.value,
                "met": target.met(ratio.median),
            }
        self.comparisons.append(entry)
        return entry

    def broker_target(
        self,
        job: str,
        chimeway: Mapping[str, Any],
        raw: Mapping[str, Any],
        *,
        kept: Sequence[str] = (),
        why: str = "",
    ) -> None:
        """The issue's broker target: a delivery's Redis commands against a raw ``job``'s.

        Both counts are per job, from ``INFO commandstats`` over a whole run, so
        each carries the worker's own polling while it waits: a tenth of a
        command per job is let through as that, and nothing more. ``kept``
        names commands chimeway issues on purpose (``why`` says where their
        guarantee is documented): the comparison shows how much of the
        difference they are, and they still count against the target.
        """
        ours, theirs = float(chimeway["redis_commands"]), float(raw["redis_commands"])
        comparison = (
            f"Redis commands per successful delivery less those per raw "
            f"{job} ({ours:.2f} - {theirs:.2f})"
        )
        if kept:
            ours_by, theirs_by = chimeway["redis_by_command"], raw["redis_by_command"]
            share = sum(ours_by.get(name, 0.0) - theirs_by.get(name, 0.0) for name in kept)
            comparison += f"; {share:.2f} of it {', '.join(kept)}, kept: {why}"
        self.extra_targets.append(
            {
                "target": f"Redis commands per {job} no more than a raw {job}'s",
                "comparison": comparison,
                "ratio": ours - theirs,
                "goal": f"<= {BROKER_POLLING_SLACK:g} (the worker's polling)",
                "met": ours - theirs <= BROKER_POLLING_SLACK,
            }
        )

    def note(self, area: str, text_: str) -> None:
        """Attach a sentence to an area (a skipped part, a caveat); shown in the docs."""
        self.notes.setdefault(area, []).append(text_)
        print(f"[{area}] note: {text_}", file=sys.stderr)

    def targets(self) -> list[dict[str, Any]]:
        """Every target with its figure and whether it was met."""
        found = [
            {
                "target": c["target"]["label"],
                "comparison": f"{c['label']}: {c['figure_name']} / {c['anchor_name']}",
                "ratio": c["ratio"]["median"],
                "goal": f"{c['target']['op']} {c['target']['value']:g}",
                "met": c["target"]["met"],
            }
            for c in self.comparisons
            if c["target"] is not None
        ]
        return found + self.extra_targets

    def to_json(self) -> dict[str, Any]:
        """The whole run as one JSON document."""
        return {
            "meta": _meta(self.smoke),
            "comparisons": self.comparisons,
            "counts": self.counts,
            "machine": self.machine,
            "memory": self.memory,
            "profile": self.profile,
            "targets": self.targets(),
            "notes": self.notes,
            "timings": self.timings,
        }


def _meta(smoke: bool) -> dict[str, Any]:
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = None
    return {
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "smoke": smoke,
        "commit": commit,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
    }


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    """Write ``data`` as indented JSON, creating the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


# ----------------------------------------------------------------- services


def reachable(url: str, default_port: int, timeout: float = 1.0) -> bool:
    """Whether a TCP connection to the host and port of ``url`` succeeds."""
    split = urlsplit(url)
    try:
        with socket.create_connection(
            (split.hostname or "127.0.0.1", split.port or default_port), timeout=timeout
        ):
            return True
    except OSError:
        return False


@contextmanager
def postgres_database(admin_url: str, *, prefix: str = "chimeway_bench_") -> Iterator[str]:
    """A throwaway PostgreSQL database named ``prefix`` + random; yields its URL, drops it after."""
    name = f"{prefix}{secrets.token_hex(4)}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


class WALMeter:
    """Bytes of write-ahead log a database writes from now on (machine-independent).

    What a workload makes the database write, rows and index entries and
    commit records together: on PostgreSQL the distance ``pg_current_wal_lsn()``
    moves (the whole server's, so run nothing else alongside); on SQLite the
    growth of the ``-wal`` file, with automatic checkpoints turned off on
    ``engine``'s connections (they are reopened) so that the file only grows.
    """

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._postgres = engine.dialect.name == "postgresql"
        if self._postgres:
            self._start: Any = self._lsn()
            return
        database = engine.url.database
        if not database or database == ":memory:":
            raise ValueError("a WAL meter needs a SQLite file")
        self._wal = Path(f"{database}-wal")
        event.listen(engine, "connect", _no_autocheckpoint)
        engine.dispose()
        with engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        self._start = self._wal.stat().st_size if self._wal.exists() else 0

    def _lsn(self) -> str:
        with self._engine.connect() as conn:
            return str(conn.exec_driver_sql("SELECT pg_current_wal_lsn()").scalar_one())

    def written(self) -> int:
        """Bytes of WAL written since the meter was made."""
        if self._postgres:
            with self._engine.connect() as conn:
                moved = conn.exec_driver_sql(
                    "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %(start)s::pg_lsn)",
                    {"start": self._start},
                ).scalar_one()
            return int(moved)
        return self._wal.stat().st_size - int(self._start)

    def close(self) -> None:
        """Give SQLite its automatic checkpoints back (on reopened connections)."""
        if not self._postgres:
            event.remove(self._engine, "connect", _no_autocheckpoint)
            self._engine.dispose()


def _no_autocheckpoint(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA wal_autocheckpoint=0")
    cursor.close()


class SQLCounter:
    """Counts commits and statements on a SQLAlchemy engine (events, machine-independent).

    A commit is every transaction SQLAlchemy commits, reads included (a
    ``with engine.begin()`` that only selects still sends ``COMMIT``), and
    every statement the store runs in autocommit (it commits its block);
    ``write_commits`` counts only those that ran an INSERT, UPDATE or DELETE
    (also inside a ``WITH``) or locked a row ``FOR UPDATE``.
    Statements are those SQLAlchemy executes, not counting ``BEGIN``.
    """

    def __init__(self, engine: Engine) -> None:
        self.commits = 0
        self.write_commits = 0
        self.statements = 0
        self._wrote: set[int] = set()
        self._engine = engine
        event.listen(engine, "commit", self._commit)
        event.listen(engine, "before_cursor_execute", self._statement)

    def close(self) -> None:
        """Stop counting."""
        event.remove(self._engine, "commit", self._commit)
        event.remove(self._engine, "before_cursor_execute", self._statement)

    def snapshot(self) -> tuple[int, int, int]:
        """(commits, write commits, statements) so far."""
        return self.commits, self.write_commits, self.statements

    def _commit(self, conn: Any) -> None:
        self.commits += 1
        if id(conn) in self._wrote:
            self.write_commits += 1
            self._wrote.discard(id(conn))

    def _statement(self, conn: Any, _cursor: Any, statement: str, *_: object) -> None:
        verb = statement.lstrip()[:6].upper()
        if verb.startswith("BEGIN"):
            # SQLite's explicit BEGIN (IMMEDIATE): PostgreSQL's driver sends its
            # BEGIN unseen, so counting it would make the databases disagree.
            return
        self.statements += 1
        if verb in {"INSERT", "UPDATE", "DELETE"} or _WRITES_IN_CTE.search(statement):
            self._wrote.add(id(conn))


# A statement that writes without starting with its verb: a data-modifying CTE
# (``WITH x AS (UPDATE ...) INSERT ...``) or a row lock taken for a write.
_WRITES_IN_CTE: Final = re.compile(r"^\s*WITH\b.*\b(INSERT|UPDATE|DELETE)\b|\bFOR UPDATE\b", re.S)


def redis_command_calls(connection: Any) -> dict[str, int]:
    """Calls per command so far on the whole Redis server (``INFO commandstats``)."""
    stats = connection.info("commandstats")
    return {
        name.removeprefix("cmdstat_"): int(values["calls"])
        for name, values in stats.items()
        if isinstance(values, dict)
    }


def redis_delta(before: Mapping[str, int], after: Mapping[str, int]) -> dict[str, int]:
    """What ran between two :func:`redis_command_calls`, less the INFO call itself."""
    delta = {name: calls - before.get(name, 0) for name, calls in after.items()}
    delta["info"] = delta.get("info", 0) - 1
    return {name: calls for name, calls in sorted(delta.items()) if calls > 0}


def rss_bytes() -> int:
    """This process's resident set size now (``VmRSS``), in bytes."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource  # not Linux: the peak is the best the platform offers

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def subprocess_env(*extra_paths: Path) -> dict[str, str]:
    """This environment, with chimeway's sources, bench/ and ``extra_paths`` importable."""
    import chimeway_core

    src = Path(chimeway_core.__file__).resolve().parents[1]
    paths = [str(p) for p in extra_paths] + [str(src), str(BENCH_DIR)]
    existing = os.environ.get("PYTHONPATH")
    if existing:
        paths.append(existing)
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}


def compare_each(
    results: Results,
    area: str,
    row: str,
    samples: Mapping[str, tuple[float, ...]],
    anchors: Sequence[tuple[str, Target | None]],
    *,
    unit: str,
    detail: str,
    name: str,
) -> None:
    """Compare ``samples["chimeway"]`` with each anchor's samples, one row each; log as ``name``."""
    for anchor, target in anchors:
        entry = results.compare(
            area,
            row,
            ("chimeway", samples["chimeway"]),
            (anchor, samples[anchor]),
            unit=unit,
            target=target,
            detail=detail,
        )
        log(
            area,
            f"{name}: chimeway {entry['figure']['median']:.0f}/s, {anchor} "
            f"{entry['anchor']['median']:.0f}/s, x{entry['ratio']['median']:.2f}",
        )


def log(area: str, message: str) -> None:
    """One progress line on stderr."""
    print(f"[{area}] {message}", file=sys.stderr, flush=True)


def run_area(run: Callable[[Config, Results], None], argv: Sequence[str] | None = None) -> None:
    """The command line of one area's module: run it alone and print its JSON.

    ``python bench/bench_core.py [--smoke]``; ``bench/run.py`` runs them all
    and writes the results, chart and docs table.
    """
    import tempfile

    args = list(sys.argv[1:] if argv is None else argv)
    smoke = "--smoke" in args
    with tempfile.TemporaryDirectory(prefix="chimeway-bench-") as folder:
        results = Results(smoke=smoke)
        run(Config(smoke=smoke, workdir=Path(folder)), results)
    print(json.dumps(results.to_json(), indent=2))
