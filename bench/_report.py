"""Turn a run's JSON into the chart (PNG) and the generated part of docs/performance.md.

The page keeps its hand-written text; only what lies between
:data:`START` and :data:`END` is rewritten, so a re-run changes the figures
and nothing else. What would close a missed target is written here, next to
the target's name, and shown only while the target is missed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import _charts
import _history

START = "<!-- bench:start -->"
END = "<!-- bench:end -->"

# What would close each target, shown when it is missed. Keyed by the start
# of the target's label.
REMEDIES: dict[str, str] = {
    "decide()": (
        "decide() checks its five arguments (exact enum types, ints, ranges: strings are "
        "never coerced), then makes one lookup keyed by the arguments themselves (StrEnum "
        "members hash as their cached str value); the anchor is a lookup alone. What is "
        "left is the Python call and the checks: the same lookup behind the call without "
        "any check is about 3.2x. Closing the rest means checking less on a public "
        "function, which was not done: the state machine and dispatch together are well "
        "under 1% of perform() (profile below)."
    ),
    "notify->terminal >= 0.6x anchor A on SQLite": (
        "SQLite runs in process: a delivery's time is its commits' fsyncs and the Python "
        "around its statements, and the fsyncs help chimeway's ratio rather than hurt it. "
        "chimeway makes 3 commits where anchor A makes 2, and more than twice its "
        "statements (see the counts): notify() writes the delivery, its journal entry and "
        "its outbox row; perform() locks the row, claims it, writes the attempt before the "
        "call (the write-ahead attempt must be on disk before the channel is called) and "
        "clears the outbox row in the same transaction, then records "
        "the outcome with its journal entry. The one-statement claim and record of "
        "PostgreSQL do not apply: SQLite has no data-modifying CTEs. Each commit writes "
        "every page it dirtied to the WAL, and chimeway's delivery row has seven indexes "
        "where anchor A's has one, hence about five times the WAL. The diagnostic row "
        "*synchronous=OFF* above runs both sides without their fsyncs, which tells the "
        "two parts apart."
    ),
    "notify->terminal": (
        "On this machine the time of both sides is mostly the client's Python and the "
        "server's work per statement, not round trips. On PostgreSQL each of chimeway's "
        "three steps is one statement run in autocommit (no BEGIN/COMMIT round trips; "
        "the claim is one statement when the only policy is expiry), so a delivery "
        "makes 3 round trips where anchor A makes 8. Measured with `time.process_time()` "
        "next to the wall clock (stop 15, idle machine): notify() 1.44 ms wall of which "
        "0.74 ms client CPU, against anchor A's insert transaction at 0.65 / 0.32 ms; "
        "perform() 2.58 / 1.30 ms against anchor A's worker transaction at 1.23 / "
        "0.70 ms. The rest is what the statements do: three commits with a WAL flush "
        "each where anchor A makes two (about 0.3 ms a flush here), the journal entry of "
        "every transition, the outbox row, the lease and version columns, three foreign "
        "keys and five secondary indexes on the delivery row (see *What one delivery "
        "costs* below), and chimeway's own Python around them (validation, the "
        "snapshots, classification, telemetry). Closing more means the bare DB-API "
        "cursor for the hot statements, which bypasses SQLAlchemy's engine events (the "
        "statement counters and the fault suite's hooks use them), or fewer rows and "
        "indexes per delivery (the journal, the outbox, the operator queries' indexes), "
        "which gives up what they serve: neither was done."
    ),
    "RQ": (
        "The job is perform(): two statements that each commit (claim, record) where "
        "the anchor-A job makes three statements and one commit, and chimeway's Python "
        "around them; see notify->terminal. RQ is not the gap: chimeway adds 2 "
        "Redis commands per job (its dedupe check at enqueue) to RQ's own 60-odd (see "
        "the counts)."
    ),
    "Celery": (
        "The task is perform(): two statements that each commit (claim, record) where "
        "the anchor-A task makes three statements and one commit. The second commit is "
        "the gap, not Python: measured in one process on PostgreSQL (stop 16, 3 runs of "
        "1,000), perform() took 1.87 ms wall, 0.90 ms of it client CPU and 0.67 ms "
        "PostgreSQL CPU, against the anchor-A worker transaction's 1.48, 0.76 and 0.46 "
        "ms: chimeway's Python costs 18% more, the extra WAL flush and the CTEs' work "
        "the rest. The first commit is the write-ahead attempt, which must be durable "
        "before the channel is called; the second is the outcome. Making the outcome's "
        "commit asynchronous would narrow it and turn an outcome recorded just before a "
        "database crash into one the rescuer resolves as unknown: not done. The broker "
        "is not the gap: a chimeway job costs the broker the same commands as a raw task "
        "(see the counts)."
    ),
    "Redis commands per RQ job": (
        "RQ runs a delivery under one job id, retries included, so chimeway's enqueue "
        "first reads what that id holds, in one Lua call per 500 ids under `WATCH`: "
        "`HGETALL` of the job hash (its status, and whether an ended run left one to "
        "delete before RQ's own writes; a new delivery's job deletes nothing) and "
        "`ZSCORE` in the scheduled registry: 2 commands per job, shown by command in "
        "the JSON. They are what keeps a second enqueue of a pending delivery (a relay "
        "and a rescuer, a notify and a relay) from writing a second job over the first "
        "one's hash, and a scheduled entry left behind from running the id again, which "
        "RQ's registries cannot tell apart (docs/backends/rq.md, *What the check "
        "costs*). Dropping them means a job id per enqueue, which gives that up: not "
        "done."
    ),
    "at most 3 commits": (
        "perform() must be reading the delivery in a transaction of its own again: "
        "`SQLStore.lock` reads it for update, runs the policies and claims in one."
    ),
    "notify_many": (
        "The anchor writes one row per delivery; chimeway writes three (the delivery, its "
        "`created` journal entry, its outbox row). On PostgreSQL a batch born ready is one "
        "statement per 10,000 rows: the rows go as one JSON document (one C-encoded "
        "parameter, taken apart by `json_to_recordset`), and the journal and outbox rows "
        "are written by CTEs from what was inserted. The database's share alone is more "
        "than the 0.7x budget: timed on the server's side (stop 17, 10,000 rows, median "
        "of 5) the delivery rows take 214 ms, with the outbox rows 280 ms, with the "
        "journal too 327 ms (317 ms with the foreign-key triggers off), where the whole "
        "anchor, Python included, takes about 205 ms. Against a raw `executemany` of all "
        "three rows (the *all rows* comparison in the table) the gap left is chimeway's "
        "Python: validating each spec before anything is written (text, NUL and "
        "surrogates, JSON shape, depth and size), the policies, queueing the ids and "
        "clearing the outbox rows. On SQLite a batch born ready is one `executemany` per "
        "table; of 10,000 rows (stop 27, timed by stage) about 0.25 s is SQLite writing "
        "the three tables and a second commit (the outbox rows of the queued ids cleared), "
        "and about 0.3 s chimeway's Python (records, results, queueing), where 0.7x allows "
        "about 0.33 s in all. 0.7x of the one-row anchor needs one row per delivery, "
        "which gives up the journal's history or the outbox's guarantee: not done."
    ),
    "worker memory": (
        "Resident memory grew by more than 10% between 1,000 and 50,000 deliveries: "
        "look for what grows with the number of deliveries (the memory backend's "
        "per-delivery maps, telemetry subscribers, SQLAlchemy's statement cache)."
    ),
}


def _fmt(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


_GOAL: Final = re.compile(r"([<>]=) ([0-9.]+)")


def _measured(target: Mapping[str, Any]) -> str:
    """A target's ratio with 2 decimals, more when rounding would cross the goal's line.

    0.7496 against ">= 0.75" is missed; shown as 0.75 it would read as met.
    """
    ratio, goal = float(target["ratio"]), _GOAL.fullmatch(str(target["goal"]))
    for places in range(2, 7):
        shown = round(ratio, places)
        if goal is None:
            break
        op, line = goal.group(1), float(goal.group(2))
        if (shown >= line if op == ">=" else shown <= line) == bool(target["met"]):
            break
    return f"{shown:.{places}f}"


def _figure(stat: Mapping[str, Any]) -> str:
    return f"{_fmt(stat['median'])} {stat['unit']} (±{stat['spread_pct'] / 2:.0f}%)"


def _ratio(stat: Mapping[str, Any]) -> str:
    return f"**{stat['median']:.2f}x** ({stat['min']:.2f}-{stat['max']:.2f})"


def _remedy(label: str, data: Mapping[str, Any]) -> str | None:
    for prefix, text in REMEDIES.items():
        if label.startswith(prefix):
            measured = _sqlite_budget(data) if prefix.endswith("on SQLite") else None
            return text if measured is None else f"{text} {measured}"
    return None


def _ms_per_delivery(data: Mapping[str, Any], area: str, name: str) -> float:
    """Milliseconds per delivery of the side ``name`` of ``area``'s SQLite comparisons."""
    for c in data["comparisons"]:
        if c["area"] != area or "SQLite" not in c["label"]:
            continue
        for side in ("figure", "anchor"):
            if c[f"{side}_name"] == name and c[side]["unit"] == "deliveries/s":
                return 1000 / float(c[side]["median"])
    raise LookupError(f"no SQLite side {name!r} in {area}")


def _sqlite_budget(data: Mapping[str, Any]) -> str | None:
    """The SQLite target's arithmetic in this run's own figures, or None without them."""
    sides = ("chimeway", "anchor A", "chimeway, no fsync", "anchor A, no fsync")
    try:
        ours, theirs, ours_rest, theirs_rest = (
            _ms_per_delivery(data, "engine", side) for side in sides
        )
    except LookupError:  # an older run, or one without the engine area
        return None
    counts = data["counts"].get("database, memory backend, SQLite", {})
    ours_counts = counts.get("chimeway, succeeded", {"commits": 3, "statements": 10})
    theirs_counts = counts.get("anchor A", {"commits": 2, "statements": 4})
    commits = round(ours_counts["commits"])
    ours_fsync, theirs_fsync = ours - ours_rest, theirs - theirs_rest
    allowed = theirs / 0.6
    left = allowed - ours_fsync
    rest = (
        f"leaving {left:.2f} ms for everything else: {left / ours_rest:.0%} of what that "
        f"takes now, and {left / theirs_rest:.1f}x what anchor A's "
        f"{theirs_counts['statements']:.0f} statements and {theirs_counts['commits']:.0f} "
        f"commits take, for chimeway's {ours_counts['statements']:.0f} and {commits} with "
        "its validation, journal and telemetry around them"
        if left > 0
        else "more than that on their own"
    )
    # Each commit is taken to cost the same fsync: what one commit fewer would leave.
    one_fewer = ours_rest + ours_fsync * (commits - 1) / commits
    verdict = "and still miss" if theirs / one_fewer < 0.6 else "to meet it"
    return (
        f"In this run's figures: a delivery through chimeway took {ours:.2f} ms, "
        f"{ours_fsync:.2f} ms of it waiting on its {commits} commits' fsyncs (what "
        f"synchronous=OFF takes away) and {ours_rest:.2f} ms for everything else; anchor A "
        f"took {theirs:.2f} ms, {theirs_fsync:.2f} ms of it on its "
        f"{theirs_counts['commits']:.0f} fsyncs and {theirs_rest:.2f} ms for the rest. 0.6x "
        f"means at most {allowed:.2f} ms a delivery, and chimeway's fsyncs take "
        f"{ours_fsync:.2f} ms of it, {rest}. Even a commit fewer, the outcome's left to the "
        "operating system's cache (the one a rescuer could stand in for after a crash), "
        f"would take {one_fewer:.2f} ms, {theirs / one_fewer:.2f}x anchor A: it would give "
        f"up a guarantee {verdict}. Not done."
    )


def markdown(data: Mapping[str, Any], stem: str, areas: Sequence[str]) -> str:
    """The generated section of docs/performance.md for one run's JSON.

    ``stem`` names the charts beside the page (``<stem>.png``, ``<stem>-ratios.png``,
    ``<stem>-times.png``); ``areas`` are every area a full run measures, to tell a
    full run in the history from a partial one.
    """
    meta = data["meta"]
    lines = [
        START,
        "",
        f"Measured {meta['generated_at']} on commit `{meta['commit']}`, Python "
        f"{meta['python']}, {meta['cpus']} CPUs shared with PostgreSQL, Redis, RabbitMQ and "
        f"other work; the run took {data['timings'].get('total', 0) / 60:.1f} minutes"
        + (" (**smoke run: tiny sizes, not figures to quote**)" if meta["smoke"] else "")
        + ".",
    ]
    lines += _throughput(data, stem)
    lines += [
        "",
        "### How to read the rest",
        "",
        "- **ratio**: chimeway's figure divided by what it is compared with, measured in "
        "the same run, run by run, then the median. For a rate (per second) more is "
        "better; for a time (ns, ms) less is better.",
        "- **anchor A**, *the hand-written job*: per delivery, one transaction inserting "
        "its row, then one worker transaction selecting it, inserting an attempt and "
        "updating its status (2 commits): what a careful user writes without chimeway.",
        "- **floor**: the same row inserted and updated in one transaction, nothing else: "
        "the least any ledger could cost.",
        "- **raw no-op job** (or task, actor): the queue's own cost of a job that does "
        "nothing, no database at all.",
        "",
        "### Targets",
        "",
        "| target | measured | goal | |",
        "|---|---|---|---|",
    ]
    for target in data["targets"]:
        verdict = "met" if target["met"] else "**missed**"
        lines.append(
            f"| {target['target']} | {target['comparison']}: {_measured(target)} "
            f"| {target['goal']} | {verdict} |"
        )
    lines += _history.markdown(_history.history_of(data), areas)
    lines += [
        "",
        "### Every figure next to its anchor",
        "",
        f"![How close each rate comes to what it is compared with]({stem}-ratios.png)",
        "",
        f"![What a call or a page costs next to the bare operation]({stem}-times.png)",
        "",
        "Median of the runs (± half the min-max spread); the ratio is figure / anchor, "
        "taken run by run, then its median (min-max over the runs). For ns per call "
        "and ms lower is better; for every rate higher is better.",
        "",
        "| area | what | figure | anchor | ratio |",
        "|---|---|---|---|---|",
    ]
    for c in data["comparisons"]:
        lines.append(
            f"| {c['area']} | {c['label']} | {c['figure_name']}: {_figure(c['figure'])} "
            f"| {c['anchor_name']}: {_figure(c['anchor'])} | {_ratio(c['ratio'])} |"
        )
    details = sorted({(c["label"], c["detail"]) for c in data["comparisons"] if c["detail"]})
    if details:
        lines += ["", "Sizes and conditions:", ""]
        lines += [f"- {label}: {detail}." for label, detail in details]
    lines += _counts(data["counts"])
    lines += _machine(data.get("machine", {}))
    lines += _memory(data["memory"])
    lines += _profile(data["profile"])
    missed = [t for t in data["targets"] if not t["met"]]
    if missed:
        lines += ["", "### Missed targets: why, and what would close them", ""]
        # Targets missed for one reason share its text, under all their names.
        names_by_text: dict[str, list[str]] = {}
        for target in missed:
            text = _remedy(target["target"], data)
            if text is not None:
                names_by_text.setdefault(text, []).append(target["target"])
        for text, names in names_by_text.items():
            lines += [f"**{'; '.join(names)}.** {text}", ""]
    notes = [f"{area}: {note}" for area, items in data["notes"].items() for note in items]
    if notes:
        lines += ["", "### Notes from this run", ""]
        lines += [f"- {note}" for note in notes]
    lines += ["", END]
    return "\n".join(lines)


def _throughput(data: Mapping[str, Any], stem: str) -> list[str]:
    """The page's first answer: deliveries per second per setup, next to the hand-written job."""
    rows = _charts.throughput_rows(data)
    if not rows:
        return []
    lines = [
        "",
        "### Deliveries per second",
        "",
        "One delivery, from `notify()` to its terminal status, with a channel that always "
        "sends, on this machine; next to it, the hand-written job doing the same database "
        "writes a careful user would (*anchor A*, below) on the same queue and worker. "
        "More is better.",
        "",
        f"![Deliveries per second, by backend and worker kind]({stem}.png)",
        "",
        "| backend, worker, database | chimeway | the hand-written job | chimeway ÷ hand-written |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {_charts.setup_name(c)} | {_fmt(c['figure']['median'])}/s "
        f"| {_fmt(c['anchor']['median'])}/s | {_ratio(c['ratio'])} |"
        for c in rows
    ]
    return lines


def _counts(counts: Mapping[str, Any]) -> list[str]:
    if not counts:
        return []
    lines = [
        "",
        "### Counts per delivery (machine-independent)",
        "",
        "Commits and statements from SQLAlchemy's engine events in the process that runs "
        "the jobs (`BEGIN` not counted; a read-only transaction still commits, so "
        "*writing* commits are shown too); Redis commands from the server's `INFO "
        "commandstats`, the quieter of two runs (the server is shared). Retried once: a "
        "temporary failure, then a success, no backoff. *WAL KiB*: the write-ahead log "
        "the database wrote per delivery, rows, index entries and commit records together "
        "(PostgreSQL: how far `pg_current_wal_lsn()` moved; SQLite: how much the `-wal` "
        "file grew, its 4 KiB pages whole), after as many deliveries again to warm the "
        "tables.",
        "",
        "| setup | side | commits | writing commits | statements | WAL KiB | Redis commands |",
        "|---|---|---|---|---|---|---|",
    ]
    for setup, sides in counts.items():
        for side, values in sides.items():
            cells = [
                f"{values[key]:.2f}" if key in values else "-"
                for key in ("commits", "write_commits", "statements", "wal_kib", "redis_commands")
            ]
            lines.append(f"| {setup} | {side} | " + " | ".join(cells) + " |")
    return lines


def _machine(machine: Mapping[str, Any]) -> list[str]:
    if not machine:
        return []
    lines = [
        "",
        "### What this machine charges for what the counts count",
        "",
        "Measured in the same run, on the same databases: a round trip (`SELECT 1`; on "
        "SQLite, in process, a call into the library) and a durable one-row write (an "
        "insert and its commit: on PostgreSQL one autocommitted statement, so a round trip "
        "plus a WAL flush; on SQLite a transaction and its fsync). The ratios above weigh "
        "chimeway's counts against anchor A's at these prices: where a commit costs little, "
        "the Python around each statement decides them.",
        "",
        "| database | round trip | durable one-row write |",
        "|---|---|---|",
    ]
    lines += [
        f"| {name} | {_figure(costs['round trip'])} | {_figure(costs['durable write'])} |"
        for name, costs in machine.items()
    ]
    return lines


def _memory(memory: Mapping[str, Any]) -> list[str]:
    if not memory:
        return []
    points = ", ".join(
        f"{n:,}: {rss / 2**20:.1f} MiB"
        for n, rss in zip(memory["deliveries"], memory["rss_bytes"], strict=True)
    )
    return [
        "",
        "### Worker memory",
        "",
        f"{memory['backend']}; resident memory after each count of deliveries: {points}. "
        f"After {memory['last']:,} it is **{memory['growth']:.3f}x** what it was after "
        f"{memory['first']:,} ({memory['seconds']:.0f} s).",
    ]


def _profile(profile: Mapping[str, Any]) -> list[str]:
    if not profile:
        return []
    lines = [
        "",
        "### Where perform() spends its time",
        "",
        f"cProfile over {profile['deliveries']:,} jobs on the {profile['backend']} backend, "
        f"{profile['database']} ledger, channel always sends: "
        f"{profile['ms_per_perform']:.2f} ms per perform() under the profiler (which slows "
        "Python more than waiting: read the shares). A function's own time is put in its "
        "layer; a built-in's goes to its callers.",
        "",
        "| layer | ms per perform() | share |",
        "|---|---|---|",
    ]
    lines += [
        f"| {layer['layer']} | {layer['ms_per_perform']:.2f} | {layer['pct']:.0f}% |"
        for layer in profile["layers"]
    ]
    lines += [
        "",
        "| function (cumulative) | calls per perform() | ms per perform() |",
        "|---|---|---|",
    ]
    lines += [
        f"| {f['function']} | {f['calls_per_perform']:.1f} | {f['ms_per_perform']:.2f} |"
        for f in profile["functions"]
    ]
    return lines


def write_docs(data: Mapping[str, Any], page: Path, stem: str, areas: Sequence[str]) -> None:
    """Rewrite the generated section of ``page`` (append it, with markers, if absent)."""
    section = markdown(data, stem, areas)
    text = page.read_text() if page.exists() else "# Performance\n"
    if START in text and END in text:
        head, rest = text.split(START, 1)
        _, tail = rest.split(END, 1)
        text = head + section + tail
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    page.write_text(text)
