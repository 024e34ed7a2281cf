"""``chimeway worker``'s Celery node options are refused where they mean nothing.

That they reach a real Celery worker is tested with one, in
``tests/backends/celery/test_worker_options.py``.
"""

from __future__ import annotations

import pytest

from tests.cli.conftest import Invoke


@pytest.mark.parametrize(
    ("options", "named"),
    [
        (
            ["--hostname", "w1@%h"],
            "--hostname: a memory worker is not a Celery node; this option is",
        ),
        (
            ["--without-gossip", "--without-remote-control"],
            "--without-gossip, --without-remote-control: a memory worker is not a Celery node; "
            "these options are",
        ),
        (["--without-mingle"], "--without-mingle: a memory"),
        (["--without-heartbeat"], "--without-heartbeat: a memory"),
    ],
)
def test_node_options_on_a_memory_worker_are_refused(
    invoke: Invoke, options: list[str], named: str
) -> None:
    """A memory worker has no node: each option is named, exit 2, before the app is loaded."""
    result = invoke("worker", "--backend", "memory", *options, "--app", "no_such_module:engine")
    assert (2, "") == (result.code, result.stdout)
    (line,) = result.stderr_lines
    assert line.startswith(f"chimeway: error: {named}")
    assert line.endswith("for --backend celery")


@pytest.mark.parametrize(
    ("hostname", "shown"),
    [
        ("", "''"),
        ("two words@%h", "'two words@%h'"),
        ("w1@\x1b[31mhost", "'w1@\\x1b[31mhost'"),
        ("w" * 201, f"'{'w' * 60}'"),
        ("é" * 101, f"'{'é' * 60}'"),  # 202 bytes
    ],
)
def test_a_hostname_celery_cannot_use_is_refused(invoke: Invoke, hostname: str, shown: str) -> None:
    """Empty, spaced, with control characters or over 200 bytes: one line, exit 2."""
    result = invoke("worker", "--backend", "memory", "--hostname", hostname)
    assert (2, "") == (result.code, result.stdout)
    assert [
        "chimeway: error: --hostname must be 1 to 200 bytes of printable characters and no "
        f"spaces, like worker1@%h; got {shown}"
    ] == result.stderr_lines
