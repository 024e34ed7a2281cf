"""The project's sessions, named by purpose. ``nox`` alone runs the CI set.

- ``tests``: the whole test suite with every extra, against the real services.
- ``core``: the core, engine, kit, command-line, ledger (SQLite) and memory
  backend tests with no extra installed — proof the core never needs a
  backend, a driver or a broker client. Tests that need a service or an extra
  carry a marker (``postgres``, ``redis``, ``rabbitmq``, ``extras``: see
  ``tests/selection.py``) and are deselected here by it, never skipped.
- ``lint``, ``typecheck``, ``docs``: ruff, mypy --strict, a strict docs build.
- ``bench``: the benchmarks (not in the default set; ``nox -s bench``).
- ``constraints``: rewrites ``constraints.txt`` (not in the default set).

Every session but ``constraints`` installs with ``-c constraints.txt``: the
exact versions chimeway is tested on, so CI never meets a new release by
accident. A new version, a new major above all, is a deliberate change:
``nox -s constraints`` resolves the newest versions ``pyproject.toml``
allows into a fresh environment and writes them out; review the diff, run
the sessions, commit both.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import nox

nox.options.sessions = ["lint", "typecheck", "core", "tests", "docs"]
nox.options.reuse_existing_virtualenvs = False
nox.needs_version = ">=2024.10.9"

PYPROJECT = nox.project.load_toml("pyproject.toml")
ALL_EXTRAS = ".[postgres,migrations,webhook,rq,celery,dramatiq,asyncio,web]"
#: The exact versions every session installs (``nox -s constraints`` writes it).
CONSTRAINTS = "constraints.txt"
PINNED = ("-c", CONSTRAINTS)
#: Every group the sessions install from, so the constraints cover them all.
GROUPS = ("test", "lint", "typecheck", "docs")

#: What the ``core`` session runs: every test folder whose conftest imports no extra.
CORE_TESTS = (
    "tests/core",
    "tests/engine",
    "tests/kit",
    "tests/cli",
    "tests/policies",
    "tests/store",
    "tests/telemetry",
    "tests/docs",
    "tests/backends/memory",
)
#: Deselects every test that needs a service or an extra (markers of tests/selection.py).
CORE_ONLY = "not postgres and not redis and not rabbitmq and not extras"


#: Debian's Chromium, which the console's browser tests drive (tests/web/browser).
CHROMIUM = Path("/usr/bin/chromium")


def ensure_chromium(session: nox.Session) -> None:
    """Install Debian's ``chromium`` package when it is missing (root and apt-get needed).

    Playwright drives this browser; it never downloads one of its own.
    Already installed: nothing runs. Not root, or no apt-get: the session
    fails saying what to install.
    """
    if CHROMIUM.exists():
        return
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        session.error(
            f"the browser tests need Chromium at {CHROMIUM}: install Debian's chromium "
            "package (apt-get install chromium) as root, or run the session as root"
        )
    session.run("apt-get", "update", external=True)
    session.run("apt-get", "install", "-y", "chromium", external=True)


@nox.session
def tests(session: nox.Session) -> None:
    """Run the whole suite against the real PostgreSQL, Redis and RabbitMQ (and Chromium).

    With no arguments, the fault suite (``tests/faults``) runs in a second
    pytest process beside the rest: it spends its ten minutes waiting on
    worker processes it kills and restarts, not computing, and it shares no
    Redis database, queue or PostgreSQL database with the other tests. Its
    output follows the rest's; either failing fails the session. Arguments
    (``nox -s tests -- tests/engine``) run as given, in one process.
    """
    ensure_chromium(session)
    session.install(ALL_EXTRAS, *nox.project.dependency_groups(PYPROJECT, "test"), *PINNED)
    env = {"HYPOTHESIS_PROFILE": os.environ.get("HYPOTHESIS_PROFILE", "ci")}
    if session.posargs:
        session.run("pytest", *session.posargs, env=env)
        return
    scratch = Path(session.create_tmp())
    log = scratch / "faults.log"
    with log.open("wb") as out:
        faults = subprocess.Popen(
            [
                *(str(Path(session.bin) / "pytest"), "tests/faults", "-p", "no:cacheprovider"),
                "--durations=10",
                *("--basetemp", str(scratch / "faults-tmp")),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **env},
        )
    try:
        session.run("pytest", "tests", "--ignore=tests/faults", "--durations=25", env=env)
    finally:
        code = faults.wait()
        session.log("the fault suite, run beside the rest:\n" + log.read_text(errors="replace"))
    if code != 0:
        session.error(f"the fault suite failed (exit {code}); its output is above")


@nox.session
def core(session: nox.Session) -> None:
    """Run the core's tests with no extra installed, on SQLite and the memory backend."""
    session.install(".", "pytest>=8", "hypothesis>=6.100", *PINNED)
    session.run(
        "python",
        "-c",
        "import importlib.util as u, sys; "
        "extras = [m for m in ('rq', 'celery', 'dramatiq', 'redis', 'psycopg', 'httpx', 'alembic') "
        "if u.find_spec(m)]; "
        "sys.exit(f'extras leaked into the core session: {extras}' if extras else 0)",
    )
    session.run("pytest", "-m", CORE_ONLY, *(session.posargs or CORE_TESTS))


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check over everything."""
    session.install(*nox.project.dependency_groups(PYPROJECT, "lint"), *PINNED)
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy --strict on src/."""
    session.install(ALL_EXTRAS, *nox.project.dependency_groups(PYPROJECT, "typecheck"), *PINNED)
    session.run("mypy", "--strict", "src")


@nox.session
def docs(session: nox.Session) -> None:
    """Build the documentation site in strict mode (warnings are errors), then check it.

    The build serves Mermaid from the site itself: the first build on a machine
    fetches the pinned release with ``npm pack`` (docs/_ext/offline_mermaid.py),
    so npm must be on the path. The check fails on a raw Sphinx role left on a
    page or an asset loaded from another host (docs/_ext/check_site.py).
    """
    session.install(".", *nox.project.dependency_groups(PYPROJECT, "docs"), *PINNED)
    session.run(
        "mkdocs", "build", "--strict", "--site-dir", "site", env={"NO_MKDOCS_2_WARNING": "1"}
    )
    session.run("python", "docs/_ext/check_site.py", "site")


@nox.session
def bench(session: nox.Session) -> None:
    """Run every benchmark on the local services and write results, chart and docs table.

    ``bench/run.py``: ``nox -s bench -- --smoke`` for a seconds-long check that
    writes to a temporary folder; ``-- --only core,engine`` for some areas.
    """
    # asyncpg: the async area; the OpenTelemetry SDK: the engine's traces-on case.
    session.install(ALL_EXTRAS, "matplotlib", "asyncpg", "opentelemetry-sdk", *PINNED)
    session.run("python", "bench/run.py", *session.posargs)


@nox.session
def constraints(session: nox.Session) -> None:
    """Rewrite constraints.txt: the newest versions pyproject.toml allows, resolved afresh.

    Installs every extra and every dependency group into this session's new
    environment without the old constraints, then writes ``pip freeze`` (less
    chimeway itself). Review the diff before committing it: a new major
    version of an extra also needs its bound in pyproject.toml raised first.
    """
    groups = [req for group in GROUPS for req in nox.project.dependency_groups(PYPROJECT, group)]
    extras = ".[postgres,migrations,webhook,rq,celery,dramatiq,otel,prometheus,testing,asyncio,web]"
    session.install(extras, *groups)
    frozen = session.run("pip", "freeze", "--exclude", "chimeway", silent=True)
    assert isinstance(frozen, str)
    header = (
        "# The exact versions every nox session installs (-c constraints.txt), CI included.\n"
        "# Written by `nox -s constraints`; a change here is deliberate: see noxfile.py.\n"
    )
    Path(CONSTRAINTS).write_text(header + frozen)
