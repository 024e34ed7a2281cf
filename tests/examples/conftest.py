"""What the example applications' tests share: loading an example as deployed, its mail, its page.

Each example reads its settings from the environment when its modules are
imported, as a deployed application does: :func:`load_example` sets them,
imports the example afresh and migrates chimeway's tables.
"""

from __future__ import annotations

import email
import importlib
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest

from chimeway_core.migrations import upgrade
from tests.channels.conftest import SMTPTestServer, smtp_server

__all__ = ["ROOT", "load_example", "missing_quotes", "recipients", "smtp_server"]

#: The repository: examples/ and docs/ below it, and the workers' working directory.
ROOT = Path(__file__).resolve().parents[2]


def load_example(
    package: str, env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> tuple[ModuleType, ModuleType]:
    """``examples.<package>``'s ``notify`` and ``app`` modules, imported under ``env``.

    chimeway's tables are migrated on ``env["DATABASE_URL"]`` first.
    """
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    for module in ("app", "notify"):
        sys.modules.pop(f"examples.{package}.{module}", None)
    upgrade(env["DATABASE_URL"])
    notify = importlib.import_module(f"examples.{package}.notify")
    return notify, importlib.import_module(f"examples.{package}.app")


def recipients(smtp: SMTPTestServer) -> list[str]:
    """Who the SMTP server received mail for, in order."""
    return [email.message_from_bytes(message)["To"] for message in smtp.handler.messages]


def missing_quotes(page: Path, sources: list[Path]) -> list[str]:
    """The lines of ``page``'s Python blocks that no line of ``sources`` holds (stripped).

    A framework page explains the example a test runs, quoting it: this keeps
    the two from drifting apart.
    """
    lines = {line.strip() for source in sources for line in source.read_text("utf-8").splitlines()}
    blocks = re.findall(r"```python\n(.*?)```", page.read_text("utf-8"), re.S)
    assert len(blocks) >= 3
    quoted = [
        line.strip()
        for block in blocks
        for line in block.splitlines()
        if line.strip() and not line.startswith("# examples/")
    ]
    return [line for line in quoted if line not in lines]
