"""The Grafana dashboard in docs/ queries only what PrometheusCollector exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from chimeway_core.prometheus_collector import PrometheusCollector
from chimeway_core.store import SQLStore

pytestmark = pytest.mark.extras

DASHBOARD = Path(__file__).resolve().parents[2] / "docs" / "grafana" / "chimeway-dashboard.json"
_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


def test_every_series_the_dashboard_queries_is_exported(sqlite_store: SQLStore) -> None:
    """Each chimeway_* name in a panel's PromQL is a sample name of the collector's families."""
    exported = {
        f"{family.name}{suffix}"
        for family in PrometheusCollector(sqlite_store).describe()
        for suffix in _SUFFIXES[family.type]
    }
    dashboard = json.loads(DASHBOARD.read_text())
    queried = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"\bchimeway_[a-z_]+", target["expr"])
    }
    assert queried
    assert set() == queried - exported
