"""Arguments no command can use get one line and exit 2, never a traceback."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from chimeway_core.cli.parser import LARGEST_INT
from tests.cli.conftest import COMMAND, Invoke, command_env, sqlite_ledger

UNDECODABLE = os.fsdecode(b"\xff\xfe")  # how Python hands a program bytes that are not UTF-8


@pytest.mark.parametrize(
    ("args", "position"),
    [
        (["show", UNDECODABLE], 2),
        (["list", "--channel", UNDECODABLE], 3),
        (["demo", "--db", f"sqlite:///{UNDECODABLE}.db"], 3),
        ([UNDECODABLE], 1),
    ],
)
def test_an_argument_that_is_not_utf8_is_refused(
    invoke: Invoke, args: list[str], position: int
) -> None:
    """Undecodable bytes in any argument: one line naming its position, exit 2."""
    result = invoke(*args)
    assert (
        2,
        "",
        [f"chimeway: error: argument {position} is not valid UTF-8 (see 'chimeway --help')"],
    ) == (
        result.code,
        result.stdout,
        result.stderr_lines,
    )


def test_undecodable_bytes_from_a_real_shell_get_the_same_line(tmp_path: Path) -> None:
    """The same through a real process given raw bytes, as a shell would pass them."""
    done = subprocess.run(
        [*(os.fsencode(part) for part in COMMAND), b"demo", b"--db", b"sqlite:///\xff.db"],
        cwd=tmp_path,
        env=command_env(),
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert (
        2,
        b"",
        b"chimeway: error: argument 3 is not valid UTF-8 (see 'chimeway --help')\n",
    ) == (
        done.returncode,
        done.stdout,
        done.stderr,
    )


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["list", "--limit", str(10**30)], "--limit"),
        (["list", "--limit", str(-(10**30))], "--limit"),
        (["prune", "--older-than", "1d", "--batch-size", str(LARGEST_INT + 1)], "--batch-size"),
        (["demo", "--seed", str(10**4000)], "--seed"),
    ],
)
def test_a_whole_number_too_large_is_refused(
    tmp_path: Path, invoke: Invoke, args: list[str], option: str
) -> None:
    """Past 2**31 - 1 either way: one line naming the option, exit 2, nothing run."""
    _, url = sqlite_ledger(tmp_path / "ledger.sqlite3")
    result = invoke(*args, "--db", url)
    prog = f"chimeway {args[0]}"
    assert (
        2,
        "",
        [
            f"{prog}: error: argument {option}: too large (at most {LARGEST_INT} either way) "
            f"(see '{prog} --help')"
        ],
    ) == (result.code, result.stdout, result.stderr_lines)


def test_the_largest_whole_number_is_taken(tmp_path: Path, invoke: Invoke) -> None:
    """2**31 - 1 itself is a valid --limit (the control case)."""
    _, url = sqlite_ledger(tmp_path / "ledger.sqlite3")
    result = invoke("list", "--limit", str(LARGEST_INT), "--db", url)
    assert (0, "", "no deliveries match\n") == (result.code, result.stderr, result.stdout)
