"""The project's sessions, named by purpose. ``nox`` alone runs the CI set.

- ``tests``: the whole test suite with every extra, against the real services.
- ``core``: the core, engine, kit, command-line, ledger (SQLite) and memory
  backend tests with no extra installed — proof the core never needs a
  backend, a driver or a broker client. Tests that need a service or an extra
  carry a marker (``postgres``, ``redis``, ``rabbitmq``, ``extras``: see
  ``tests/selection.py``) and are deselected here by it, never skipped.
- ``lint``, ``typecheck``, ``docs``: ruff, mypy --strict, a strict docs build.
- ``bench``: the benchmarks (not in the default set; ``nox -s bench``).
"""

from __future__ import annotations

import os

import nox

nox.options.sessions = ["lint", "typecheck", "core", "tests", "docs"]
nox.options.reuse_existing_virtualenvs = False
nox.needs_version = ">=2024.10.9"

PYPROJECT = nox.project.load_toml("pyproject.toml")
ALL_EXTRAS = ".[postgres,migrations,webhook,rq,celery]"

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


@nox.session
def tests(session: nox.Session) -> None:
    """Run the whole suite against the real PostgreSQL, Redis and RabbitMQ."""
    session.install(ALL_EXTRAS, *nox.project.dependency_groups(PYPROJECT, "test"))
    session.run(
        "pytest",
        *(session.posargs or ["tests"]),
        env={"HYPOTHESIS_PROFILE": os.environ.get("HYPOTHESIS_PROFILE", "ci")},
    )


@nox.session
def core(session: nox.Session) -> None:
    """Run the core's tests with no extra installed, on SQLite and the memory backend."""
    session.install(".", "pytest>=8", "hypothesis>=6.100")
    session.run(
        "python",
        "-c",
        "import importlib.util as u, sys; "
        "extras = [m for m in ('rq', 'celery', 'redis', 'psycopg', 'httpx', 'alembic') "
        "if u.find_spec(m)]; "
        "sys.exit(f'extras leaked into the core session: {extras}' if extras else 0)",
    )
    session.run("pytest", "-m", CORE_ONLY, *(session.posargs or CORE_TESTS))


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check over everything."""
    session.install(*nox.project.dependency_groups(PYPROJECT, "lint"))
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy --strict on src/."""
    session.install(ALL_EXTRAS, *nox.project.dependency_groups(PYPROJECT, "typecheck"))
    session.run("mypy", "--strict", "src")


@nox.session
def docs(session: nox.Session) -> None:
    """Build the documentation site in strict mode (warnings are errors), then check it.

    The build serves Mermaid from the site itself: the first build on a machine
    fetches the pinned release with ``npm pack`` (docs/_ext/offline_mermaid.py),
    so npm must be on the path. The check fails on a raw Sphinx role left on a
    page or an asset loaded from another host (docs/_ext/check_site.py).
    """
    session.install(".", *nox.project.dependency_groups(PYPROJECT, "docs"))
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
    session.install(ALL_EXTRAS, "matplotlib")
    session.run("python", "bench/run.py", *session.posargs)
