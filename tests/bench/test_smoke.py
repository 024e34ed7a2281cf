"""The benchmarks' smoke run: every code path of ``bench/run.py`` against the real services.

It asserts only that the run succeeds and writes the documented JSON, never
anything about timings: figures come from a full run, by hand or
``nox -s bench``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.services import POSTGRES_ADMIN_URL, RABBITMQ_URL, require

ROOT = Path(__file__).resolve().parents[2]
EXPECTED_KEYS = {
    "meta",
    "comparisons",
    "counts",
    "machine",
    "memory",
    "profile",
    "targets",
    "notes",
}
EXPECTED_AREAS = {
    "core",
    "engine",
    "async",
    "bulk",
    "rq",
    "celery",
    "dramatiq",
    "scaling",
    "web",
}

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.rabbitmq]


def test_smoke_run_writes_the_results(tmp_path: Path) -> None:
    """``bench/run.py --smoke`` exits 0 and writes JSON with every section, in a temp folder."""
    for service in ("postgres", "redis", "rabbitmq"):
        require(service)
    latest = ROOT / "bench" / "results" / "latest.json"
    committed = latest.read_bytes() if latest.exists() else None
    env = {
        **os.environ,
        "CHIMEWAY_TEST_POSTGRES_URL": POSTGRES_ADMIN_URL,
        "CHIMEWAY_BENCH_RABBITMQ_URL": RABBITMQ_URL,
    }
    completed = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--smoke", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
        check=False,
    )
    assert 0 == completed.returncode, completed.stderr[-4000:]
    data = json.loads((tmp_path / "latest.json").read_text())
    assert EXPECTED_KEYS <= set(data)
    assert True is data["meta"]["smoke"]
    assert [] == data["meta"]["failed_areas"]
    assert EXPECTED_AREAS <= {comparison["area"] for comparison in data["comparisons"]}
    assert data["targets"]
    assert {"layers", "functions"} <= set(data["profile"])
    assert "<!-- bench:start -->" in (tmp_path / "performance.md").read_text()
    assert committed == (latest.read_bytes() if latest.exists() else None)
