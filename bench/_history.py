"""The last runs' targets, kept in ``latest.json`` so consecutive runs can be read side by side.

Each run's JSON carries ``history``: a summary of itself (when, which commit,
which areas, every target's ratio and verdict) followed by those of the runs
before it in the same folder, newest first, :data:`KEEP` at most. A target
"met on three consecutive runs" is then visible in the committed file and on
docs/performance.md, without keeping every run's whole JSON.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

#: How many runs ``history`` holds, this one included.
KEEP: Final = 5


def summary(data: Mapping[str, Any]) -> dict[str, Any]:
    """What a run's history entry keeps of its JSON: when, what ran, every target."""
    meta = data["meta"]
    return {
        "generated_at": meta["generated_at"],
        "commit": meta["commit"],
        "smoke": meta["smoke"],
        "areas": list(meta.get("areas", [])),
        "failed_areas": list(meta.get("failed_areas", [])),
        "targets": [
            {key: target[key] for key in ("target", "ratio", "goal", "met")}
            for target in data["targets"]
        ],
    }


def carry(data: Mapping[str, Any], previous: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """``data``'s history: its own summary, then ``previous``'s history, newest first.

    ``previous`` is the JSON this run replaces in the same folder (``None`` if
    there is none). A file written before histories were kept counts as one
    run of its own.
    """
    earlier: Sequence[Mapping[str, Any]] = []
    if previous is not None:
        earlier = previous.get("history") or [summary(previous)]
    own = summary(data)
    kept = [dict(run) for run in earlier if run["generated_at"] != own["generated_at"]]
    return [own, *kept][:KEEP]


def history_of(data: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The history a run's JSON holds, or the run alone for a file without one."""
    return list(data.get("history") or [summary(data)])


def complete(run: Mapping[str, Any], areas: Sequence[str]) -> bool:
    """Whether ``run`` was a full run: not a smoke run, every area in ``areas`` ran, none failed."""
    return not run["smoke"] and set(areas) <= set(run["areas"]) and not run["failed_areas"]


def streak(history: Sequence[Mapping[str, Any]], areas: Sequence[str]) -> int:
    """How many of the newest runs in a row were full runs meeting every target."""
    count = 0
    for run in history:
        if not (complete(run, areas) and run["targets"] and all(t["met"] for t in run["targets"])):
            break
        count += 1
    return count


def markdown(history: Sequence[Mapping[str, Any]], areas: Sequence[str]) -> list[str]:
    """The "last runs" section: one row a target, one column a run, newest first."""
    if len(history) < 2:
        return []
    names: list[str] = []
    for run in history:
        names += [t["target"] for t in run["targets"] if t["target"] not in names]
    in_a_row = streak(history, areas)
    lines = [
        "",
        "### The last runs",
        "",
        f"The {len(history)} newest runs written to `bench/results/`, newest first. "
        f"Full runs meeting every target, newest first and in a row: **{in_a_row}**. "
        "A run that was a smoke run, left an area out, or had an area fail is marked "
        "*partial*: it does not count towards a streak.",
        "",
        "| target | " + " | ".join(_heading(run, areas) for run in history) + " |",
        "|---|" + "---|" * len(history),
    ]
    for name in names:
        cells = []
        for run in history:
            found = next((t for t in run["targets"] if t["target"] == name), None)
            cells.append(
                "-"
                if found is None
                else f"{found['ratio']:.2f} " + ("met" if found["met"] else "**missed**")
            )
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def _heading(run: Mapping[str, Any], areas: Sequence[str]) -> str:
    partial = "" if complete(run, areas) else ", partial"
    return f"{run['generated_at'][:16].replace('T', ' ')} `{run['commit']}`{partial}"
