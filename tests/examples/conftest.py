"""What the example applications' tests share: loading an example as deployed, its mail, its page.

Each example reads its settings from the environment when its modules are
imported, as a deployed application does: :func:`load_example` sets them,
imports the example afresh and migrates chimeway's tables.
"""

from __future__ import annotations

import email
import importlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType

import pytest

from chimeway_core.migrations import upgrade
from tests.channels.conftest import SMTPTestServer, smtp_server
from tests.cli.conftest import COMMAND

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


def deliver_with_celery(
    app: str, env: Mapping[str, str], smtp: SMTPTestServer, expected: int
) -> list[str]:
    """Run ``chimeway worker --backend celery`` on ``app`` until ``expected`` emails arrived.

    The recipients, in order; the worker is stopped with SIGTERM either way.
    """
    worker = subprocess.Popen(
        [*COMMAND, "worker", "--backend", "celery", "--app", app, "--concurrency", "1"],
        cwd=ROOT,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 90
        while len(smtp.handler.messages) < expected and time.monotonic() < deadline:
            assert worker.poll() is None, worker.communicate()[0]
            time.sleep(0.2)
    finally:
        worker.send_signal(signal.SIGTERM)
        output, _ = worker.communicate(timeout=60)
    assert expected == len(smtp.handler.messages), output
    return recipients(smtp)
