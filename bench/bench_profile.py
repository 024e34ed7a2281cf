"""Where perform() spends its time: cProfile of the memory backend's worker on PostgreSQL.

N deliveries are ``notify_many``-ed (not profiled), then every job runs
through ``perform()`` under :mod:`cProfile`. The profile is summarised two ways:

- **by layer**: each function's own time is put in one bucket (database
  round trips in the driver, SQLAlchemy statement building, SQLAlchemy
  compilation and caching, SQLAlchemy execution and results, chimeway's store,
  the engine, the state machine and dispatch, JSON, telemetry, the channel,
  the memory queue); a built-in function's own time goes to the buckets of
  its callers, in proportion to the time each caller spent in it;
- **by function**: calls and cumulative time per perform() of the functions
  that matter (store methods, SQLAlchemy's compile and execute, decide).

cProfile slows Python code more than waiting, so the layers' shares lean
towards the Python side; the shares, not the absolute times, are the point.

    python bench/bench_profile.py [--smoke]     # this area alone, JSON on stdout
"""

from __future__ import annotations

import cProfile
import pstats
from typing import Any

from _harness import Config, Results, log, postgres_database, reachable, run_area
from bench_engine import make_engine
from chimeway_backends.memory import MemoryBackend
from chimeway_core import NewDelivery

AREA = "profile"

# (bucket, test on the file path, test on the function name); first match wins.
_JSON_FUNCTIONS = {"_json_value", "_json_size", "_sanitize", "_clean_text", "_truncate"}
_TELEMETRY_FUNCTIONS = {"meta"}
_SQLA_BUILD = (
    "/sql/dml.py",
    "/sql/selectable.py",
    "/sql/elements.py",
    "/sql/coercions.py",
    "/sql/operators.py",
    "/sql/default_comparator.py",
    "/sql/type_api.py",
    "/sql/functions.py",
    "/sql/base.py",
    "/sql/annotation.py",
    "/sql/roles.py",
    "/sql/schema.py",
    "/sql/_elements_constructors.py",
    "/sql/_selectable_constructors.py",
    "/sql/_dml_constructors.py",
)
_SQLA_COMPILE = ("/sql/compiler.py", "/sql/cache_key.py", "/sql/traversals.py", "/sql/visitors.py")

BUCKETS = (
    "database round trips (driver, network)",
    "SQLAlchemy: building statements",
    "SQLAlchemy: compiling, cache keys",
    "SQLAlchemy: execution, results, pool",
    "chimeway store: rows, validation",
    "serialization (JSON)",
    "state machine and dispatch",
    "engine: perform() orchestration, policies",
    "telemetry",
    "the channel",
    "memory queue",
    "other (stdlib, attrs)",
)


# Chimeway's own files, by layer (the path's end).
_CHIMEWAY_LAYERS = (
    (("chimeway_core/telemetry.py",), BUCKETS[8]),
    (("chimeway_core/store.py", "chimeway_core/records.py"), BUCKETS[4]),
    (
        (
            "chimeway_core/states.py",
            "chimeway_core/dispatch.py",
            "chimeway_core/retry.py",
            "chimeway_core/outcomes.py",
        ),
        BUCKETS[6],
    ),
    (("chimeway_core/backend.py",), BUCKETS[10]),
)


def _bucket(path: str, function: str) -> str | None:
    """The layer a profiled function belongs to; ``None`` for a built-in."""
    if path == "~":
        return BUCKETS[0] if "psycopg" in function or "sqlite3" in function else None
    if function in _JSON_FUNCTIONS or "/json/" in path or "psycopg/types/json" in path:
        return BUCKETS[5]
    if "psycopg" in path or path.endswith(("/socket.py", "/selectors.py")):
        return BUCKETS[0]
    if "/sqlalchemy/" in path:
        if path.endswith(_SQLA_BUILD):
            return BUCKETS[1]
        return BUCKETS[2] if path.endswith(_SQLA_COMPILE) else BUCKETS[3]
    if path.endswith("chimeway_core/engine/settings.py") and function in _TELEMETRY_FUNCTIONS:
        return BUCKETS[8]
    if "chimeway_core/ledger/" in path:
        return BUCKETS[4]
    if "chimeway_core/memory/" in path:
        return BUCKETS[10]
    for ends, bucket in _CHIMEWAY_LAYERS:
        if path.endswith(ends):
            return bucket
    if "chimeway_core/channels/" in path or "/bench/" in path:
        return BUCKETS[9]
    return BUCKETS[7] if "chimeway_core/" in path else BUCKETS[11]


def summarise(stats: pstats.Stats, performs: int) -> dict[str, Any]:
    """Bucket the profile by layer and pick out the key functions, per perform()."""
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]  # pstats keeps it untyped
    totals = dict.fromkeys(BUCKETS, 0.0)
    for (path, _line, function), (_cc, _nc, tottime, _ct, callers) in raw.items():
        bucket = _bucket(path, function)
        if bucket is not None:
            totals[bucket] += tottime
            continue
        # A built-in (isinstance, dict.get): its time is its callers'.
        spent = sum(c[2] for c in callers.values()) or 1.0
        for (cpath, _cline, cfunction), caller in callers.items():
            share = tottime * caller[2] / spent
            totals[_bucket(cpath, cfunction) or BUCKETS[11]] += share
    total = sum(totals.values())
    layers = [
        {"layer": name, "ms_per_perform": seconds / performs * 1e3, "pct": seconds / total * 100}
        for name, seconds in sorted(totals.items(), key=lambda item: -item[1])
    ]
    wanted = {
        ("front.py", "perform"): "Chimeway.perform",
        ("store.py", "quick_claim"): "SQLStore.quick_claim (one statement)",
        ("store.py", "lock"): "SQLStore.lock (read for update; commit)",
        ("perform.py", "admit"): "Performer.admit (checks, policies, claim)",
        ("locked.py", "claim_on"): "claim: lease + attempt row",
        ("store.py", "record_attempt"): "SQLStore.record_attempt",
        ("elements.py", "_compile_w_cache"): "SQLAlchemy compile / cache lookup",
        ("default.py", "do_execute"): "driver execute (round trip)",
        ("default.py", "do_commit"): "driver commit (round trip)",
        ("default.py", "do_begin"): "driver begin",
        ("perform.py", "record"): "Performer.record (decide -> record)",
        ("dispatch.py", "match_row"): "dispatch table match_row",
        ("states.py", "apply_event"): "state machine apply_event",
        ("telemetry.py", "emit"): "Telemetry.emit",
        ("telemetry.py", "span"): "Telemetry.span",
        ("rows.py", "delivery_from_row"): "row -> Delivery",
        ("callable.py", "send"): "channel send",
    }
    functions = []
    for (path, _line, function), (_cc, ncalls, _tt, cumtime, _callers) in raw.items():
        label = wanted.get((path.rsplit("/", 1)[-1], function))
        if label is None or ("chimeway" not in path and "sqlalchemy" not in path):
            continue
        functions.append(
            {
                "function": label,
                "calls_per_perform": ncalls / performs,
                "ms_per_perform": cumtime / performs * 1e3,
            }
        )
    functions.sort(key=lambda f: -f["ms_per_perform"])
    return {
        "ms_per_perform": total / performs * 1e3,
        "layers": layers,
        "functions": functions,
    }


def profile(url: str, n: int) -> dict[str, Any]:
    """Profile n performs on ``url``; return the summary."""
    engine = make_engine(url)
    backend = engine.backend
    assert isinstance(backend, MemoryBackend)
    engine.notify_many([NewDelivery(channel="sms", recipient=f"+1555{i:07}") for i in range(n)])
    engine.flush_outbox()
    profiler = cProfile.Profile()
    profiler.enable()
    backend.run_until_idle(engine, fail_fast=True)
    profiler.disable()
    summary = summarise(pstats.Stats(profiler), n)
    engine.store.drop_all()
    engine.store.engine.dispose()
    return summary


def run(config: Config, results: Results) -> None:
    """Profile perform() on PostgreSQL (SQLite if PostgreSQL is unreachable)."""
    n = config.size(500, 20)
    if reachable(config.postgres_admin_url, 5432):
        with postgres_database(config.postgres_admin_url) as url:
            summary = profile(url, n)
        summary["database"] = "PostgreSQL"
    else:
        summary = profile(f"sqlite:///{config.workdir / 'profile.db'}", n)
        summary["database"] = "SQLite"
    summary["deliveries"] = n
    summary["backend"] = "memory"
    results.profile = summary
    for layer in summary["layers"][:6]:
        log(AREA, f"{layer['layer']}: {layer['ms_per_perform']:.2f} ms ({layer['pct']:.0f}%)")


if __name__ == "__main__":
    run_area(run)
