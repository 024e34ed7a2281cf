"""``chimeway demo``: the report, its determinism, its database, its JSON."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from chimeway_core.store import SQLStore
from tests.cli.conftest import Invoke, run, run_all


def _report(stdout: str) -> tuple[list[str], str]:
    """The deterministic lines and the final throughput line."""
    *lines, last = stdout.rstrip("\n").splitlines()
    return lines, last


def test_demo_runs_300_deliveries_and_prints_the_status_table(tmp_path: Path) -> None:
    """-n 300 finishes in seconds, exits 0 and prints statuses, attempts, rows and throughput."""
    started = time.monotonic()
    result = run("demo", "-n", "300", cwd=tmp_path)
    elapsed = time.monotonic() - started
    assert (0, "") == (result.code, result.stderr)
    lines, last = _report(result.stdout)
    assert last.startswith("throughput: ")
    assert "deliveries/s" in last
    for heading in ("final status", "attempts per delivery", "dispatch rows fired"):
        assert any(line.startswith(heading) for line in lines), heading
    total = next(line for line in lines if line.startswith("total"))
    assert ["total", "300"] == total.split()
    assert "every delivery ended in a terminal status (300)" in lines
    assert any(line.startswith("succeeded ") and "ACK" in line for line in lines)
    database = tmp_path / "chimeway-demo.sqlite3"
    assert database.is_file()
    assert f"database: sqlite:///{database} (recreated)" in lines
    assert elapsed < 30


def test_same_seed_prints_the_same_report_and_another_seed_does_not(tmp_path: Path) -> None:
    """Two runs with one seed differ only in the throughput line; another seed differs."""
    # Each run in its own directory (the same file name: the header matches), all at once.
    for name in ("first", "second", "other"):
        (tmp_path / name).mkdir()
    first, second, other = run_all(
        ("demo", "-n", "60", "--seed", "7", "--db", "sqlite:///chimeway-demo.sqlite3"),
        ("demo", "-n", "60", "--seed", "7", "--db", "sqlite:///chimeway-demo.sqlite3"),
        ("demo", "-n", "60", "--seed", "8", "--db", "sqlite:///chimeway-demo.sqlite3"),
        cwds=[tmp_path / "first", tmp_path / "second", tmp_path / "other"],
    )
    assert [0, 0, 0] == [first.code, second.code, other.code]
    first_lines, first_last = _report(first.stdout)
    second_lines, second_last = _report(second.stdout)
    other_lines, _ = _report(other.stdout)
    assert first_lines == second_lines
    assert first_last.startswith("throughput: ")
    assert second_last.startswith("throughput: ")
    assert first_lines != other_lines


def test_json_report_parses_with_every_section(invoke: Invoke) -> None:
    """--json prints one JSON document with the report's sections."""
    result = invoke("demo", "-n", "40", "--seed", "2", "--json")
    assert (0, "") == (result.code, result.stderr)
    report = json.loads(result.stdout)
    assert {
        "deliveries",
        "seed",
        "database",
        "mix",
        "statuses",
        "attempts",
        "rows",
        "provider",
        "job_failures",
        "virtual_seconds",
        "all_terminal",
        "wall_seconds",
        "deliveries_per_second",
    } == set(report)
    assert (40, 2, True) == (report["deliveries"], report["seed"], report["all_terminal"])
    assert 40 == sum(s["count"] for s in report["statuses"])
    assert 40 == sum(report["attempts"].values())
    assert 0.55 == report["mix"]["success"]  # the default mix's share, as written


def test_mix_decides_the_outcomes(invoke: Invoke) -> None:
    """A mix of only bounces cancels every delivery as bounced after one attempt."""
    result = invoke("demo", "-n", "30", "--mix", "bounce=1", "--json")
    assert 0 == result.code
    report = json.loads(result.stdout)
    assert [{"status": "cancelled", "reason": "bounced", "count": 30}] == report["statuses"]
    assert {"1": 30} == {k: v for k, v in report["attempts"].items() if v}


def test_given_database_must_be_empty_unless_reset(tmp_path: Path, invoke: Invoke) -> None:
    """--db with deliveries in it is refused in one line; --reset empties it first."""
    url = f"sqlite:///{tmp_path / 'given.sqlite3'}"
    assert 0 == invoke("demo", "-n", "20", "--db", url).code
    refused = invoke("demo", "-n", "20", "--db", url)
    assert 2 == refused.code
    assert 1 == len(refused.stderr_lines)
    assert "already holds 20 deliveries" in refused.stderr
    reset = invoke("demo", "-n", "25", "--db", url, "--reset")
    assert 0 == reset.code
    assert f"database: {url} (reset)" in reset.stdout
    store = SQLStore(url)
    assert 25 == sum(store.counts().values())
    store.engine.dispose()


def test_demo_ignores_the_database_environment_variable(tmp_path: Path, invoke: Invoke) -> None:
    """CHIMEWAY_DATABASE_URL never redirects the demo into an application's ledger."""
    elsewhere = tmp_path / "application.sqlite3"
    result = invoke("demo", "-n", "10", env={"CHIMEWAY_DATABASE_URL": f"sqlite:///{elsewhere}"})
    assert 0 == result.code
    assert not elsewhere.exists()
    assert (tmp_path / "chimeway-demo.sqlite3").is_file()


@pytest.mark.postgres
def test_demo_runs_on_postgres(tmp_path: Path, fresh_postgres: str) -> None:
    """--db postgresql+psycopg://... runs the demo on PostgreSQL, creating the tables."""
    result = run("demo", "-n", "60", "--seed", "3", "--db", fresh_postgres, cwd=tmp_path)
    assert (0, "") == (result.code, result.stderr)
    assert "every delivery ended in a terminal status (60)" in result.stdout
    store = SQLStore(fresh_postgres)
    assert 60 == sum(store.counts().values())
    store.engine.dispose()
