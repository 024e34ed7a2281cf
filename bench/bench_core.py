"""decide() and one state transition, in ns per call, next to a plain dict lookup.

Every case is timed with :mod:`timeit` (a lambda around the call, so the
anchor pays the same call overhead as the figure), once per interleaved run;
the ratio to the dict lookup is taken run by run.

    python bench/bench_core.py [--smoke]     # this area alone, JSON on stdout
"""

from __future__ import annotations

import timeit
from collections.abc import Callable

from _harness import Config, Results, Target, interleave, log, run_area
from chimeway_core import DeliveryStatus, ErrorClass, Event, Outcome, apply_event, decide

AREA = "core"
ANCHOR = "dict lookup"


def _ns_per_call(stmt: Callable[[], object], number: int) -> Callable[[], float]:
    timer = timeit.Timer(stmt)
    return lambda: timer.timeit(number) / number * 1e9


def run(config: Config, results: Results) -> None:
    """Measure decide() and apply_event() next to a dict lookup."""
    number = config.size(200_000, 2_000)
    table = {("failed", "exhaust"): "cancelled"}
    key = ("failed", "exhaust")
    # Arguments are bound once, as the engine has them in hand from a row:
    # on CPython 3.11 reading an enum member off its class costs more than the
    # call being measured.
    failed, temporary, failed_status = Outcome.FAILED, ErrorClass.TEMPORARY, DeliveryStatus.FAILED
    exhaust, from_db = Event.EXHAUST, "temporary"
    cases: dict[str, Callable[[], float]] = {
        ANCHOR: _ns_per_call(lambda: table[key], number),
        "decide() documented row": _ns_per_call(
            lambda: decide(failed, temporary, failed_status, 2, 5), number
        ),
        "decide() class read from the db": _ns_per_call(
            lambda: decide(failed, from_db, failed_status, 2, 5), number
        ),
        "decide() undocumented class": _ns_per_call(
            lambda: decide(failed, "weird", failed_status, 2, 5), number
        ),
        "apply_event() one transition": _ns_per_call(
            lambda: apply_event(failed_status, exhaust), number
        ),
    }
    samples = interleave(cases, 3 if config.smoke else 7)
    for name, values in samples.items():
        if name == ANCHOR:
            continue
        entry = results.compare(
            AREA,
            "hot path, ns per call",
            (name, values),
            (ANCHOR, samples[ANCHOR]),
            unit="ns/call",
            target=Target("<=", 5.0, "decide() within 5x of a dict lookup")
            if name == "decide() documented row"
            else None,
        )
        log(AREA, f"{name}: {entry['figure']['median']:.0f} ns, x{entry['ratio']['median']:.2f}")


if __name__ == "__main__":
    run_area(run)
