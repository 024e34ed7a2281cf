"""``chimeway inspect``, ``list``, ``show`` and ``cancel`` against real ledgers."""

from __future__ import annotations

import json
import sys
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final
from uuid import UUID

import pytest
from sqlalchemy import select

from chimeway_core.schema import DeliveryRow
from chimeway_core.store import SQLStore
from tests.cli.conftest import Invoke, add_deliveries, run_all, sqlite_ledger

INSPECT_KEYS = {
    "database",
    "now",
    "total",
    "counts",
    "due",
    "due_lag_seconds",
    "outbox",
    "outbox_due",
    "oldest_non_terminal",
    "stuck_total",
    "stuck",
}


def _ids_with(store: SQLStore, **where: object) -> list[str]:
    """Ids of deliveries whose columns equal ``where``."""
    query = select(DeliveryRow.id).filter_by(**where).order_by(DeliveryRow.idempotency_key)
    with store.engine.connect() as conn:
        return [str(i) for i in conn.execute(query).scalars()]


def test_inspect_show_and_cancel_in_subprocesses(
    demo_ledger: tuple[SQLStore, str], tmp_path: Path
) -> None:
    """Against the demo's ledger: inspect and show print JSON; cancelling a terminal one exits 1."""
    store, url = demo_ledger
    exhausted = _ids_with(store, reason="retries_exhausted")[0]
    succeeded = _ids_with(store, status="succeeded")[0]
    inspect, show, cancel = run_all(
        ("inspect", "--db", url, "--json"),
        ("show", exhausted, "--db", url, "--json"),
        ("cancel", succeeded, "--db", url),
        cwd=tmp_path,
    )
    assert (0, "") == (inspect.code, inspect.stderr)
    summary = json.loads(inspect.stdout)
    assert INSPECT_KEYS == set(summary)
    expected = {(s.value, r): n for (s, r), n in store.counts().items()}
    assert expected == {(c["status"], c["reason"]): c["count"] for c in summary["counts"]}
    assert (120, 0, None, []) == (
        summary["total"],
        summary["outbox"],
        summary["oldest_non_terminal"],
        summary["stuck"],
    )
    assert (0, "") == (show.code, show.stderr)
    assert {"delivery", "attempts", "journal", "explanation"} == set(json.loads(show.stdout))
    assert (1, "") == (cancel.code, cancel.stdout)
    assert [
        f"chimeway: error: delivery {succeeded} is already succeeded, a terminal status; "
        "nothing to cancel"
    ] == cancel.stderr_lines


def test_inspect_prints_counts_and_health(
    demo_ledger: tuple[SQLStore, str], invoke: Invoke
) -> None:
    """The text summary has the counts, the outbox and the two health lines."""
    _, url = demo_ledger
    result = invoke("inspect", "--db", url)
    assert (0, "") == (result.code, result.stderr)
    assert "deliveries: 120; due now, no worker on it: 0" in result.stdout
    assert "outbox: no rows" in result.stdout
    assert "oldest non-terminal: none, every delivery is terminal" in result.stdout
    assert "stuck (lease expired, attempt in flight): none" in result.stdout


def test_inspect_reads_the_database_url_from_the_environment(
    demo_ledger: tuple[SQLStore, str], invoke: Invoke
) -> None:
    """Without --db, CHIMEWAY_DATABASE_URL names the ledger."""
    _, url = demo_ledger
    result = invoke("inspect", "--json", env={"CHIMEWAY_DATABASE_URL": url})
    assert 0 == result.code
    assert 120 == json.loads(result.stdout)["total"]


def test_show_explains_an_exhausted_delivery(
    demo_ledger: tuple[SQLStore, str], invoke: Invoke
) -> None:
    """show --json has the delivery, every attempt, every journal entry and the explanation."""
    store, url = demo_ledger
    delivery_id = _ids_with(store, reason="retries_exhausted")[0]
    result = invoke("show", delivery_id, "--db", url, "--json")
    assert (0, "") == (result.code, result.stderr)
    shown = json.loads(result.stdout)
    assert {"delivery", "attempts", "journal", "explanation"} == set(shown)
    delivery = shown["delivery"]
    assert (delivery_id, "cancelled", "retries_exhausted", True) == (
        delivery["id"],
        delivery["status"],
        delivery["reason"],
        delivery["terminal"],
    )
    assert "payload" not in delivery
    assert list(range(1, delivery["attempt_count"] + 1)) == [a["number"] for a in shown["attempts"]]
    assert "created" == shown["journal"][0]["kind"]
    assert ("exhaust", "cancelled") == (
        shown["journal"][-1]["event"],
        shown["journal"][-1]["to_status"],
    )
    explanation = shown["explanation"]
    assert explanation[0].endswith("created: ready")
    assert explanation[-1].endswith("transition: exhaust failed -> cancelled (retries_exhausted)")
    assert len(shown["attempts"]) * 2 + len(shown["journal"]) == len(explanation)


def test_show_prints_the_delivery_attempts_journal_and_explanation(
    demo_ledger: tuple[SQLStore, str], invoke: Invoke
) -> None:
    """The text form has the four sections; --payload adds the payload."""
    store, url = demo_ledger
    delivery_id = _ids_with(store, status="succeeded")[0]
    result = invoke("show", delivery_id, "--db", url, "--payload")
    assert (0, "") == (result.code, result.stderr)
    lines = result.stdout.splitlines()
    assert f"delivery {delivery_id}" == lines[0]
    for section in ("attempts", "journal", "explanation"):
        assert section in lines
    assert any(line.split()[:2] == ["status", "succeeded"] for line in lines)
    [payload] = [line.split(None, 1)[1] for line in lines if line.split()[:1] == ["payload"]]
    assert "welcome" == json.loads(payload)["template"]
    header = lines.index("attempts") + 1
    assert lines[header].split()[-3:] == ["worker", "provider", "response"]
    [attempt] = [line for line in lines[header + 1 :] if line.split()[:1] == ["1"]]
    assert attempt.endswith('{"status": 202}')  # the simulated provider's answer


def test_cancel_moves_a_live_delivery_to_cancelled(tmp_path: Path, invoke: Invoke) -> None:
    """cancel --json cancels a ready delivery; a second cancel exits 1."""
    store, url = sqlite_ledger(tmp_path / "live.sqlite3")
    (delivery_id,) = add_deliveries(store, 1)
    result = invoke("cancel", delivery_id, "--db", url, "--json")
    assert (0, "") == (result.code, result.stderr)
    assert {
        "id": delivery_id,
        "previous_status": "ready",
        "status": "cancelled",
        "reason": "cancelled",
    } == json.loads(result.stdout)
    again = invoke("cancel", delivery_id, "--db", url)
    assert 1 == again.code
    assert "already cancelled (cancelled)" in again.stderr
    store.engine.dispose()


_TELEMETRY_APP: Final = "chimeway_cli_telemetry_app"

_TELEMETRY_APP_SOURCE: Final = """
    import os

    from chimeway_backends.memory import MemoryBackend
    from chimeway_core import Sent, Telemetry
    from chimeway_core.channels import CallableChannel
    from chimeway_core.engine import Chimeway
    from chimeway_core.store import SQLStore

    EVENTS = []


    def engine():
        telemetry = Telemetry()
        telemetry.subscribe(lambda event, meta: EVENTS.append((event, dict(meta))))
        store = SQLStore(os.environ["CHIMEWAY_DATABASE_URL"])
        channels = {"log": CallableChannel(lambda delivery, key: Sent())}
        return Chimeway(store, MemoryBackend(), channels, telemetry=telemetry)
"""


def test_cancel_with_app_emits_what_the_engines_cancel_emits(
    tmp_path: Path, invoke: Invoke, monkeypatch: pytest.MonkeyPatch
) -> None:
    """cancel --app reports through the engine's telemetry the event Chimeway.cancel emits."""
    (tmp_path / f"{_TELEMETRY_APP}.py").write_text(textwrap.dedent(_TELEMETRY_APP_SOURCE))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, _TELEMETRY_APP, raising=False)
    store, url = sqlite_ledger(tmp_path / "live.sqlite3")
    by_engine, by_cli = add_deliveries(store, 2)
    monkeypatch.setenv("CHIMEWAY_DATABASE_URL", url)
    app = __import__(_TELEMETRY_APP)
    app.engine().cancel(UUID(by_engine))
    result = invoke("cancel", by_cli, "--db", url, "--app", f"{_TELEMETRY_APP}:engine", "--json")
    assert (0, "cancelled") == (result.code, json.loads(result.stdout)["status"])
    (engine_event, engine_meta), (cli_event, cli_meta) = app.EVENTS
    # Only the delivery's own id and age (seconds from notify to the cancel) differ.
    assert cli_meta["age"] >= 0
    assert (engine_event, {**engine_meta, "delivery_id": by_cli, "age": cli_meta["age"]}) == (
        cli_event,
        cli_meta,
    )
    assert "chimeway.status.transition" == cli_event
    assert ("ready", "cancelled") == (cli_meta["from_status"], cli_meta["to_status"])
    monkeypatch.delitem(sys.modules, _TELEMETRY_APP)
    store.engine.dispose()


def test_inspect_reports_stuck_deliveries_and_exits_1(tmp_path: Path, invoke: Invoke) -> None:
    """A lease that expired with its attempt in flight is listed as stuck (exit 1)."""
    store, url = sqlite_ledger(tmp_path / "stuck.sqlite3")
    past = datetime.now(UTC) - timedelta(hours=1)
    stuck_id, waiting_id = add_deliveries(store, 2, now=past)
    claim = store.claim(UUID(stuck_id), owner="dead-worker", lease_seconds=5, now=past)
    assert claim is not None
    result = invoke("inspect", "--db", url, "--json")
    assert (1, "") == (result.code, result.stderr)
    summary = json.loads(result.stdout)
    assert [(stuck_id, 1, "dead-worker")] == [
        (s["id"], s["attempt"], s["lease_owner"]) for s in summary["stuck"]
    ]
    assert summary["oldest_non_terminal"]["id"] in {stuck_id, waiting_id}
    assert 1 == summary["outbox"]  # the waiting one's: the claim cleared the stuck one's
    # The stuck one is not due: its attempt is in flight until a rescuer resolves it.
    assert (1, 1) == (summary["due"], summary["outbox_due"])
    assert 3590 < summary["due_lag_seconds"] < 3700
    text = invoke("inspect", "--db", url)
    assert 1 == text.code
    assert "stuck (lease expired, attempt in flight): 1" in text.stdout
    assert "due now, no worker on it: 1, the oldest due 36" in text.stdout
    store.engine.dispose()


def test_inspect_counts_every_stuck_delivery_and_lists_the_first_100(
    tmp_path: Path, invoke: Invoke
) -> None:
    """Past 100 stuck deliveries the count is still exact; the list stops at 100."""
    store, url = sqlite_ledger(tmp_path / "many_stuck.sqlite3")
    past = datetime.now(UTC) - timedelta(hours=1)
    for delivery_id in add_deliveries(store, 102, now=past):
        assert store.claim(UUID(delivery_id), owner="dead", lease_seconds=5, now=past)
    result = invoke("inspect", "--db", url, "--json")
    summary = json.loads(result.stdout)
    assert (1, 102, 100) == (result.code, summary["stuck_total"], len(summary["stuck"]))
    text = invoke("inspect", "--db", url)
    assert "stuck (lease expired, attempt in flight): 102 (the first 100 listed)" in text.stdout
    store.engine.dispose()


@pytest.mark.parametrize("command", ["show", "cancel"])
def test_unknown_delivery_exits_1(
    command: str, demo_ledger: tuple[SQLStore, str], invoke: Invoke
) -> None:
    """show and cancel of an id the ledger does not hold exit 1 with one line."""
    _, url = demo_ledger
    result = invoke(command, "0b0e7a3c-1f5e-4c36-9d4e-2f1e0e9f1d11", "--db", url)
    assert 1 == result.code
    assert [
        "chimeway: error: no delivery with id 0b0e7a3c-1f5e-4c36-9d4e-2f1e0e9f1d11"
    ] == result.stderr_lines


@pytest.mark.parametrize("query", ["uri=true", "mode=ro&uri=true"])
def test_inspect_reads_a_ledger_named_by_a_sqlite_uri(
    tmp_path: Path, invoke: Invoke, query: str
) -> None:
    """With uri=true the database is a SQLite URI naming its file, read-only with mode=ro."""
    path = tmp_path / "led ger.sqlite3"
    store, _ = sqlite_ledger(path)
    add_deliveries(store, 3)
    store.engine.dispose()
    uri = f"sqlite:///file:{str(path).replace(' ', '%20')}?{query}"
    result = invoke("inspect", "--db", uri, "--json")
    assert (0, "") == (result.code, result.stderr)
    assert 3 == json.loads(result.stdout)["total"]


def test_list_selects_newest_first_and_says_when_more_match(tmp_path: Path, invoke: Invoke) -> None:
    """Each filter narrows the list; --limit cuts it and says more match; --json agrees."""
    store, url = sqlite_ledger(tmp_path / "ledger.sqlite3")
    now = datetime.now(UTC)
    old = add_deliveries(store, 2, now=now - timedelta(days=3))
    new = add_deliveries(store, 3, now=now - timedelta(minutes=5))
    store.cancel(UUID(new[0]), now=now)
    newest_first = sorted(new, reverse=True) + sorted(old, reverse=True)  # one time each: by id

    everything = invoke("list", "--db", url)
    limited = invoke("list", "--db", url, "--limit", "2", "--json")
    recent = invoke("list", "--db", url, "--since", "1h", "--json")
    cancelled = invoke("list", "--db", url, "--status", "cancelled", "--reason", "cancelled")
    nobody = invoke("list", "--db", url, "--recipient", "nobody@example.test")
    by_recipient_and_key = invoke(
        "list", "--db", url, "--recipient", "r1@example.test", "--key", old[1], "--json"
    )

    assert (0, "") == (everything.code, everything.stderr)
    lines = everything.stdout.splitlines()
    assert lines[0].split() == ["id", "status", "reason", "channel", "attempts", "created_at"]
    assert newest_first == [line.split()[0] for line in lines[1:-1]]
    assert "5 shown, newest first" == lines[-1]
    assert {"deliveries", "more"} == set(json.loads(limited.stdout))
    assert (newest_first[:2], True) == (
        [d["id"] for d in json.loads(limited.stdout)["deliveries"]],
        json.loads(limited.stdout)["more"],
    )
    assert sorted(new) == sorted(d["id"] for d in json.loads(recent.stdout)["deliveries"])
    assert [new[0], "cancelled"] == cancelled.stdout.splitlines()[1].split()[:2]
    assert (0, "no deliveries match\n") == (nobody.code, nobody.stdout)
    assert [old[1]] == [d["id"] for d in json.loads(by_recipient_and_key.stdout)["deliveries"]]
    store.engine.dispose()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (("--limit", "0"), "--limit must be at least 1"),
        (("--status", "lost"), "argument --status: invalid choice: 'lost'"),
        (("--since", "soon"), "'soon' is not an age"),
        (("--since", "1e12d"), "year 1"),
    ],
)
def test_list_refuses_bad_options_in_one_line(
    tmp_path: Path, invoke: Invoke, options: tuple[str, ...], message: str
) -> None:
    """A bad --limit, --status or --since: exit 2, one line saying why."""
    _, url = sqlite_ledger(tmp_path / "ledger.sqlite3")
    result = invoke("list", "--db", url, *options)
    assert (2, "") == (result.code, result.stdout)
    assert 1 == len(result.stderr_lines), result.stderr
    assert message in result.stderr
