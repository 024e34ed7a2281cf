"""The soak run of the fault suite: every scenario on every backend at a large size.

``python -m tests.faults.soak`` runs ``tests/faults/test_scenarios.py`` with
``CHIMEWAY_FAULTS_N=500`` (``--n`` to change it), then prints the table of
counts (also written to ``--table``, ``fault-soak.md`` by default). Extra
arguments go to pytest (``-k rq``, ``-x`` ...). The exit code is pytest's.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def main(argv: list[str] | None = None) -> int:
    """Run the soak; return pytest's exit code."""
    parser = argparse.ArgumentParser(prog="python -m tests.faults.soak", description=__doc__)
    parser.add_argument("--n", type=int, default=500, help="deliveries per scenario and backend")
    parser.add_argument("--table", default="fault-soak.md", help="where to write the table")
    options, pytest_args = parser.parse_known_args(argv)
    table = Path(options.table).resolve()
    env = {
        **os.environ,
        "CHIMEWAY_FAULTS_N": str(options.n),
        "CHIMEWAY_FAULTS_TABLE": str(table),
    }
    command = [sys.executable, "-m", "pytest", "tests/faults/test_scenarios.py", "-q"]
    code = subprocess.call([*command, "-p", "no:cacheprovider", *pytest_args], cwd=ROOT, env=env)
    if table.exists():
        print(f"\nfault suite soak, N={options.n} per scenario and backend:\n")
        print(table.read_text().split("\n\n", 1)[0])
    return code


if __name__ == "__main__":
    raise SystemExit(main())
