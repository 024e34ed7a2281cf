"""decide() and one state transition, in ns per call, next to a plain dict lookup.

Run: ``python bench/bench_core.py`` (or ``nox -s bench``). Every figure is the
median of several repeats measured in this run, reported with the ratio to the
dict-lookup anchor measured in the same run: machines are noisy, ratios travel.
"""

from __future__ import annotations

import json
import statistics
import sys
import timeit
from collections.abc import Callable

from chimeway_core import DeliveryStatus, ErrorClass, Event, Outcome, apply_event, decide

NUMBER = 200_000
REPEATS = 7


def _ns_per_call(stmt: Callable[[], object], number: int) -> list[float]:
    timer = timeit.Timer(stmt)
    return [t / number * 1e9 for t in timer.repeat(repeat=REPEATS, number=number)]


def run(number: int = NUMBER) -> dict[str, dict[str, float]]:
    """Measure and return {name: {median_ns, spread_ns, ratio}}."""
    table = {("failed", "exhaust"): "cancelled"}
    key = ("failed", "exhaust")
    # Arguments are bound once, as the engine has them in hand from a row:
    # on CPython 3.11 reading an enum member off its class costs more than the
    # call being measured.
    failed, temporary, failed_status = Outcome.FAILED, ErrorClass.TEMPORARY, DeliveryStatus.FAILED
    exhaust, from_db = Event.EXHAUST, "temporary"
    cases: dict[str, Callable[[], object]] = {
        "dict lookup (anchor)": lambda: table[key],
        "decide() documented row": lambda: decide(failed, temporary, failed_status, 2, 5),
        "decide() class read from the db": lambda: decide(failed, from_db, failed_status, 2, 5),
        "decide() undocumented class": lambda: decide(failed, "weird", failed_status, 2, 5),
        "apply_event() one transition": lambda: apply_event(failed_status, exhaust),
    }
    results: dict[str, dict[str, float]] = {}
    for name, stmt in cases.items():
        samples = _ns_per_call(stmt, number)
        results[name] = {
            "median_ns": statistics.median(samples),
            "spread_ns": max(samples) - min(samples),
        }
    anchor = results["dict lookup (anchor)"]["median_ns"]
    for figures in results.values():
        figures["ratio"] = figures["median_ns"] / anchor
    return results


def main() -> None:
    """Print a table, and the JSON with ``--json``."""
    number = 2_000 if "--smoke" in sys.argv else NUMBER
    results = run(number)
    if "--json" in sys.argv:
        print(json.dumps(results, indent=2))
        return
    print(f"{'case':34} {'median ns':>10} {'spread':>8} {'x anchor':>9}")
    for name, f in results.items():
        print(f"{name:34} {f['median_ns']:10.1f} {f['spread_ns']:8.1f} {f['ratio']:9.2f}")


if __name__ == "__main__":
    main()
