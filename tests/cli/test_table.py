"""``chimeway table``: the dispatch table, in text and JSON."""

from __future__ import annotations

import json
from pathlib import Path

from chimeway_core.cli.table import JSON_KEYS
from chimeway_core.dispatch import CATCH_ALL, DISPATCH_ROWS
from chimeway_core.render import dispatch_table_rows
from tests.cli.conftest import Invoke, run


def test_table_prints_every_row(tmp_path: Path) -> None:
    """Every row of DISPATCH_ROWS, and the catch-all, is printed with its action."""
    result = run("table", cwd=tmp_path)
    assert (0, "") == (result.code, result.stderr)
    lines = result.stdout.splitlines()
    assert lines[0].split()[0] == "row"
    names = [line.split()[0] for line in lines[1:]]
    assert [row.name for row in DISPATCH_ROWS] + [CATCH_ALL, CATCH_ALL] == names
    for row, line in zip(DISPATCH_ROWS, lines[1:], strict=False):
        assert line.split()[-1] == row.action.value.upper()


def test_table_json_is_the_rendered_rows(invoke: Invoke) -> None:
    """--json is a list of objects with one key per column, in table order."""
    result = invoke("table", "--json")
    assert 0 == result.code
    _, *body = dispatch_table_rows()
    assert [dict(zip(JSON_KEYS, row, strict=True)) for row in body] == json.loads(result.stdout)
