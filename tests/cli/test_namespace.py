"""``--namespace``: the ledger commands read and write one namespace's tables and no other's."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from chimeway_core.records import NewDelivery
from chimeway_core.store import SQLStore
from tests.cli.conftest import Invoke, run

NOW = datetime(2030, 1, 1, tzinfo=UTC)


def _fill(url: str, namespace: str | None, recipients: list[str]) -> list[str]:
    store = SQLStore(url, namespace=namespace)
    try:
        specs = [NewDelivery(channel="sms", recipient=r) for r in recipients]
        return [str(made.delivery.id) for made in store.create_many(specs, now=NOW)]
    finally:
        store.engine.dispose()


@pytest.mark.extras
def test_each_command_sees_its_namespace_only(tmp_path: Path, invoke: Invoke) -> None:
    url = f"sqlite:///{tmp_path / 'app.db'}"
    upgraded = invoke("db", "upgrade", "--db", url, "--namespace", "billing", "--json")
    assert (0, "billing") == (upgraded.code, json.loads(upgraded.stdout)["namespace"])
    assert 0 == invoke("db", "upgrade", "--db", url).code
    billing = _fill(url, "billing", ["+1", "+2"])
    default = _fill(url, None, ["+3"])
    listed = invoke("list", "--db", url, "--namespace", "billing", "--json")
    assert sorted(billing) == sorted(row["id"] for row in json.loads(listed.stdout)["deliveries"])
    assert (0, 1) == (
        invoke("show", default[0], "--db", url).code,
        invoke("show", billing[0], "--db", url).code,
    )
    # From here on the environment names the namespace.
    env = {"CHIMEWAY_DATABASE_URL": url, "CHIMEWAY_NAMESPACE": "billing"}
    assert 0 == invoke("show", billing[0], env=env).code
    assert 1 == invoke("show", default[0], env=env).code
    cancelled = invoke("cancel", billing[1], "--db", url, "--namespace", "billing")
    assert (0, 1) == (cancelled.code, invoke("cancel", default[0], env=env).code)
    inspected = json.loads(
        invoke("inspect", "--db", url, "--namespace", "billing", "--json").stdout
    )
    assert 2 == sum(row["count"] for row in inspected["counts"])
    checked = invoke("db", "check", "--db", url, "--namespace", "billing")
    assert (0, f"{url} (namespace billing): ") == (checked.code, checked.stdout[: len(url) + 22])
    assert 1 == invoke("db", "check", "--db", url, "--namespace", "shipping").code


@pytest.mark.extras
def test_a_namespace_without_tables_says_how_to_make_them(tmp_path: Path, invoke: Invoke) -> None:
    url = f"sqlite:///{tmp_path / 'app.db'}"
    assert 0 == invoke("db", "upgrade", "--db", url).code
    result = invoke("inspect", "--db", url, "--namespace", "shipping")
    assert 2 == result.code
    assert "chimeway db upgrade --db URL --namespace shipping" in result.stderr


@pytest.mark.parametrize("name", ["Billing", "pg_toast", "a-b", ""])
def test_a_bad_namespace_is_a_usage_error(tmp_path: Path, invoke: Invoke, name: str) -> None:
    url = f"sqlite:///{tmp_path / 'app.db'}"
    result = invoke("list", "--db", url, "--namespace", name)
    assert 2 == result.code
    assert "--namespace" in result.stderr
    assert not (tmp_path / "app.db").exists()


@pytest.mark.postgres
@pytest.mark.extras
def test_postgres_schema_made_and_checked_by_the_console_script(
    fresh_postgres: str, tmp_path: Path
) -> None:
    made = run("db", "upgrade", "--db", fresh_postgres, "--namespace", "billing", cwd=tmp_path)
    assert (0, "") == (made.code, made.stderr)
    _fill(fresh_postgres, "billing", ["+1"])
    listed = run("list", "--db", fresh_postgres, "--namespace", "billing", "--json", cwd=tmp_path)
    assert 1 == len(json.loads(listed.stdout)["deliveries"])
    missing = run("list", "--db", fresh_postgres, cwd=tmp_path)
    assert 2 == missing.code
    assert "has no chimeway tables" in missing.stderr
