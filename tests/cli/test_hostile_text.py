"""Text from outside (recipients, keys, errors) cannot drive the operator's terminal."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from chimeway_core.cli.output import printable
from chimeway_core.records import NewDelivery
from tests.cli.conftest import Invoke, sqlite_ledger

HOSTILE = "eve@example.test\x1b[2J\x1b[H\nstatus     succeeded\r\x9b31m\u202egnp.exe"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("plain text, tabs\tkept", "plain text, tabs\tkept"),
        ("\x1b[2J", "\\x1b[2J"),
        ("a\nb\rc", "a\\x0ab\\x0dc"),
        ("\x00\x07\x7f", "\\x00\\x07\\x7f"),
        ("\x9b31m", "\\x9b31m"),
        ("\u202eevil\u2066", "\\u202eevil\\u2066"),
        ("émoji ✓ 漢字", "émoji ✓ 漢字"),
    ],
)
def test_printable_escapes_every_control_character(text: str, expected: str) -> None:
    """C0 (but tab), DEL, C1 and direction overrides are written as escapes; letters are kept."""
    assert expected == printable(text)


def _hostile_delivery(tmp_path: Path) -> tuple[str, str]:
    store, url = sqlite_ledger(tmp_path / "hostile.sqlite3")
    (created,) = store.create_many(
        [NewDelivery(channel="log", recipient=HOSTILE, idempotency_key=f"key-{HOSTILE}")],
        now=datetime.now(UTC),
    )
    store.engine.dispose()
    return str(created.delivery.id), url


@pytest.mark.parametrize("command", ["show", "list"])
def test_show_and_list_write_hostile_text_inert(
    tmp_path: Path, invoke: Invoke, command: str
) -> None:
    """No escape sequence reaches the terminal and no forged line appears."""
    delivery_id, url = _hostile_delivery(tmp_path)
    args = (command, delivery_id, "--db", url) if command == "show" else (command, "--db", url)
    result = invoke(*args)
    assert (0, "") == (result.code, result.stderr)
    lines = result.stdout.splitlines()
    assert [] == [line for line in lines if any(c in line for c in "\x1b\r\x9b\u202e")]
    assert not any(line.split()[:2] == ["status", "succeeded"] for line in lines)
    if command == "show":  # list shows no recipient
        assert "\\x1b[2J\\x1b[H\\x0astatus" in result.stdout


def test_show_json_escapes_hostile_text_and_keeps_it_exact(tmp_path: Path, invoke: Invoke) -> None:
    """--json escapes every control character, and decodes back to the stored text."""
    delivery_id, url = _hostile_delivery(tmp_path)
    result = invoke("show", delivery_id, "--db", url, "--json")
    assert (0, "") == (result.code, result.stderr)
    assert not any(c in result.stdout for c in "\x1b\r\x9b\u202e")
    assert HOSTILE == json.loads(result.stdout)["delivery"]["recipient"]
