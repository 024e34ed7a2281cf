"""What a test needs beyond the core, as markers a session selects by.

A test that needs a service is marked ``postgres``, ``redis`` or ``rabbitmq``;
one that needs an optional extra (a driver, a queue client, httpx, alembic,
aiosmtpd, OpenTelemetry) is marked ``extras``. The ``core`` nox session runs
with no extra installed and deselects them all with
``-m "not postgres and not redis and not rabbitmq and not extras"``; the
``tests`` session selects everything, so there a missing service or extra
fails.

Two marks are put on by this plugin rather than by hand:

- every test that uses the PostgreSQL session database (``postgres_database``
  and the fixtures built on it) is marked ``postgres``; the ``store`` fixture's
  PostgreSQL parameter carries the mark itself, as it reaches the database
  through ``getfixturevalue``;
- a test module that imports an extra at module level cannot be imported
  without it. Where that import fails, the module is collected as one item,
  marked ``extras``, that fails naming the missing module: deselected by
  ``-m "not extras"``, never skipped.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Final

import pytest

#: Top-level modules an optional extra or a test-only dependency provides.
EXTRA_MODULES: Final = frozenset(
    {
        "aiosmtpd",
        "alembic",
        "celery",
        "django",
        "dramatiq",
        "fastapi",
        "flask",
        "flask_sqlalchemy",
        "griffe",
        "httpx",
        "jinja2",
        "kombu",
        "markupsafe",
        "mkdocs",
        "opentelemetry",
        "pika",
        "playwright",
        "prometheus_client",
        "psycopg",
        "redis",
        "rq",
    }
)


def pytest_configure(config: pytest.Config) -> None:
    """Register the ``extras`` marker (the service markers are in pyproject.toml)."""
    config.addinivalue_line(
        "markers", "extras: needs an optional extra or a test-only dependency (see EXTRA_MODULES)"
    )


class _MissingExtra(pytest.Item):
    """Stands for a test module that could not be imported for want of ``missing``."""

    def __init__(self, *, missing: str, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.missing = missing
        self.add_marker(pytest.mark.extras)

    def runtest(self) -> None:
        """Fail: the module's tests cannot run here."""
        pytest.fail(
            f"{self.path.name} imports {self.missing!r}, which is not installed;"
            f' install the extras or deselect with -m "not extras"',
            pytrace=False,
        )

    def reportinfo(self) -> tuple[Path, int | None, str]:
        """Where and what: the module, and the module it misses."""
        return self.path, None, f"{self.name} (needs {self.missing})"


class _Module(pytest.Module):
    """A test module that turns a missing extra at import into one ``extras`` item."""

    def collect(self) -> Iterable[pytest.Item | pytest.Collector]:
        """The module's tests, or one failing ``extras`` item if an extra is missing."""
        try:
            return super().collect()
        except self.CollectError as error:
            cause = error.__cause__
            if not isinstance(cause, ModuleNotFoundError) or cause.name is None:
                raise
            missing = cause.name.partition(".")[0]
            if missing not in EXTRA_MODULES:
                raise
            return [_MissingExtra.from_parent(self, name="<module>", missing=missing)]


def pytest_pycollect_makemodule(module_path: Path, parent: pytest.Collector) -> pytest.Module:
    """Collect every test module through :class:`_Module`."""
    return _Module.from_parent(parent, path=module_path)


@pytest.hookimpl(tryfirst=True)  # before -m deselects
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark ``postgres`` every test that uses the PostgreSQL session database."""
    for item in items:
        if "postgres_database" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.postgres)
