"""bench/_history.py: the last runs' targets carried from one latest.json to the next."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from tests.bench import load_bench_module

_history = load_bench_module("_history")
_report = load_bench_module("_report")

AREAS = ["core", "engine"]


def run_json(
    when: str,
    met: dict[str, bool],
    *,
    smoke: bool = False,
    areas: list[str] = AREAS,
    failed: list[str] | None = None,
) -> dict[str, Any]:
    """The part of a run's JSON the history reads."""
    return {
        "meta": {
            "generated_at": when,
            "commit": when[-4:],
            "smoke": smoke,
            "areas": areas,
            "failed_areas": failed or [],
        },
        "targets": [
            {
                "target": name,
                "comparison": "x",
                "ratio": 1.0 if ok else 0.5,
                "goal": ">= 0.6",
                "met": ok,
            }
            for name, ok in met.items()
        ],
    }


def test_a_first_run_is_its_own_history() -> None:
    data = run_json("2026-12-01T00:00:01", {"a": True})
    assert [_history.summary(data)] == _history.carry(data, None)


def test_a_file_from_before_histories_counts_as_one_run() -> None:
    old = run_json("2026-12-01T00:00:01", {"a": False})
    new = run_json("2026-12-02T00:00:02", {"a": True})
    assert ["2026-12-02T00:00:02", "2026-12-01T00:00:01"] == [
        run["generated_at"] for run in _history.carry(new, old)
    ]


@given(st.lists(st.booleans(), min_size=1, max_size=12))
def test_carrying_run_after_run_keeps_the_newest_first_and_no_more_than_keep(
    verdicts: list[bool],
) -> None:
    previous: dict[str, Any] | None = None
    for i, ok in enumerate(verdicts):
        data = run_json(f"2026-12-01T00:00:{i:02d}", {"a": ok})
        data["history"] = _history.carry(data, previous)
        previous = data
    assert previous is not None
    kept = [run["generated_at"] for run in previous["history"]]
    expected = [f"2026-12-01T00:00:{i:02d}" for i in range(len(verdicts))][::-1]
    assert expected[: _history.KEEP] == kept


def test_the_streak_counts_full_runs_meeting_every_target_from_the_newest() -> None:
    runs = [
        _history.summary(run_json("5", {"a": True, "b": True})),
        _history.summary(run_json("4", {"a": True, "b": True})),
        _history.summary(run_json("3", {"a": True, "b": False})),
        _history.summary(run_json("2", {"a": True, "b": True})),
    ]
    assert 2 == _history.streak(runs, AREAS)
    assert 0 == _history.streak(runs[2:], AREAS)


def test_a_partial_run_breaks_a_streak_even_when_every_target_was_met() -> None:
    all_met = {"a": True}
    for partial in [
        run_json("9", all_met, smoke=True),
        run_json("9", all_met, areas=["core"]),
        run_json("9", all_met, failed=["engine"]),
    ]:
        full = run_json("8", all_met)
        runs = [_history.summary(partial), _history.summary(full)]
        assert 0 == _history.streak(runs, AREAS)
        assert 1 == _history.streak(runs[1:], AREAS)


def test_the_last_runs_table_has_a_row_a_target_and_a_column_a_run() -> None:
    runs = [
        _history.summary(run_json("2026-12-02T10:00:00", {"a": True, "new": True})),
        _history.summary(run_json("2026-12-01T10:00:00", {"a": False}, smoke=True)),
    ]
    lines = _history.markdown(runs, AREAS)
    text = "\n".join(lines)
    assert "in a row: **1**" in text
    assert "| 2026-12-02 10:00 `0:00` | 2026-12-01 10:00 `0:00`, partial |" in text
    assert "| a | 1.00 met | 0.50 **missed** |" in lines
    assert "| new | 1.00 met | - |" in lines


def test_one_run_makes_no_last_runs_table() -> None:
    assert [] == _history.markdown([_history.summary(run_json("1", {"a": True}))], AREAS)


def test_the_page_opens_with_deliveries_per_second_and_explains_its_words() -> None:
    def stat(median: float, unit: str) -> dict[str, Any]:
        return {"median": median, "min": median, "max": median, "spread_pct": 0.0, "unit": unit}

    comparison = {
        "area": "engine",
        "label": "notify -> terminal, memory backend, SQLite",
        "detail": "",
        "figure_name": "chimeway",
        "anchor_name": "anchor A",
        "figure": stat(600.0, "deliveries/s"),
        "anchor": stat(1200.0, "deliveries/s"),
        "ratio": stat(0.5, "x"),
        "target": None,
    }
    data = {
        **run_json("2026-12-03T00:00:00", {"a": True}),
        "comparisons": [comparison],
        "counts": {},
        "memory": {},
        "profile": {},
        "notes": {},
        "timings": {"total": 60.0},
    }
    data["meta"] |= {"python": "3.11", "cpus": 2}
    page = _report.markdown(data, "performance", AREAS)
    first_heading = page.index("### ")
    assert page[first_heading:].startswith("### Deliveries per second")
    assert "| memory backend (in process), SQLite | 600/s | 1,200/s | **0.50x**" in page
    assert "(performance.png)" in page
    assert "(performance-ratios.png)" in page
    for word in ("**ratio**", "**anchor A**", "**floor**", "**raw no-op job**"):
        assert word in page
