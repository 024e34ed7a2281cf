"""The command-line pages stay true: the quickstart's example and output, every option."""

from __future__ import annotations

import argparse
import contextlib
import io
import re
from pathlib import Path

import pytest

from chimeway_core.cli import build_parser
from tests.cli.conftest import Invoke

DOCS = Path(__file__).resolve().parents[2] / "docs"


def _block(page: str, marker: str) -> str:
    """The fenced block between ``<!-- marker:start -->`` and ``<!-- marker:end -->``."""
    text = (DOCS / page).read_text()
    found = re.search(
        rf"<!-- {marker}:start -->\n```[a-z]*\n(.*?)```\n<!-- {marker}:end -->", text, re.S
    )
    assert found is not None, f"no {marker} block in {page}"
    return found.group(1)


def _comparable(lines: list[str]) -> list[str]:
    """Lines without the machine-specific ones (the database path, the throughput)."""
    return [
        line
        for line in lines
        if not line.startswith(("database: ", "look inside: ", "throughput: "))
    ]


def test_quickstart_demo_output_is_what_the_demo_prints(invoke: Invoke) -> None:
    """The report shown in the quickstart is the demo's real output for -n 200."""
    command, *shown = _block("quickstart.md", "demo-output").splitlines()
    assert "$ chimeway demo -n 200" == command
    result = invoke(*command.split()[2:])
    assert 0 == result.code
    assert _comparable(shown) == _comparable(result.stdout.splitlines())


def test_quickstart_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The embedding example delivers its notification and explains it."""
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "quickstart"}
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(_block("quickstart.md", "embed-example"), "quickstart.md", "exec"), namespace)
    namespace["store"].engine.dispose()  # type: ignore[attr-defined]
    lines = printed.getvalue().splitlines()
    assert "succeeded" == lines[0]
    assert lines[-1].endswith("transition: succeed ready -> succeeded")


def _options(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    found: set[tuple[str, ...]] = set()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found.add((*prefix, name))
                found |= _options(sub, (*prefix, name))
        else:
            found |= {
                (*prefix, option)
                for option in action.option_strings
                if option.startswith("--") and option not in {"--help", "--version"}
            }
    return found


def _sections(page: str) -> dict[str, str]:
    """Each command named in a ``## `chimeway ...` `` heading, mapped to that section's text."""
    sections: dict[str, str] = {}
    for heading, body in re.findall(r"^## (.*?)\n(.*?)(?=^## |\Z)", page, re.S | re.M):
        for command in re.findall(r"`chimeway ([a-z]+(?: upgrade| check)?)`", heading):
            sections[command] = body
    return sections


def test_every_command_and_option_is_documented() -> None:
    """docs/cli.md has a section per command naming each of its long options."""
    sections = _sections((DOCS / "cli.md").read_text())
    missing = []
    for *command, last in sorted(_options(build_parser())):
        name = " ".join(command)
        if not last.startswith("--"):
            name = " ".join((*command, last))
            if name != "db" and name not in sections:
                missing.append(name)
        elif name and last not in sections.get(name, ""):
            missing.append(f"{name} {last}")
    assert [] == missing
