"""Fixtures of the fault suite: deployments on a fresh PostgreSQL ledger, the size, the table.

``CHIMEWAY_FAULTS_N`` sets how many deliveries each scenario injects per
backend (20 by default: the CI size). Every report a test records is printed
as one table at the end of the run, and written (Markdown, then one JSON
line per report) to ``CHIMEWAY_FAULTS_TABLE`` when that is set.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final

import attrs
import pytest
from sqlalchemy import Engine, make_url

from chimeway_core.store import SQLStore
from tests.faults import sabotage as sabotage_module
from tests.faults.app import Settings
from tests.faults.deployments import (
    CeleryDeployment,
    Deployment,
    MemoryDeployment,
    RQDeployment,
    new_queue,
)
from tests.faults.dramatiq_deployment import QUEUE_PREFIX, DramatiqDeployment
from tests.faults.history import Report, table
from tests.faults.proxy import TcpProxy
from tests.services import require

#: Deliveries per scenario and backend.
N: Final = int(os.environ.get("CHIMEWAY_FAULTS_N", "20"))
#: Every backend, in the order of the table.
BACKENDS: Final = ("memory", "rq", "celery-redis", "celery-rabbitmq", "dramatiq-rabbitmq")
_SERVICES: Final = {
    "memory": (),
    "rq": ("redis",),
    "celery-redis": ("redis",),
    "celery-rabbitmq": ("rabbitmq",),
    "dramatiq-rabbitmq": ("rabbitmq",),
}
#: How many worker deaths a scenario that kills workers may cause, where fewer than N's:
#: a killed ``dramatiq`` worker process stops its whole command, started again from
#: scratch, so each death costs seconds. Every kind of kill still runs.
DEATHS: Final = {"dramatiq-rabbitmq": 6}
_REPORTS: list[Report] = []
#: Held while a test uses the suite's Redis database, which every deployment flushes:
#: two runs of the suite on one machine (two clones, a soak and a test) take turns.
_REDIS_LOCK: Final = Path(tempfile.gettempdir()) / "chimeway-faults-redis.lock"

Deploy = Callable[..., Deployment]


@pytest.fixture
def n() -> int:
    """How many deliveries a scenario injects (``CHIMEWAY_FAULTS_N``)."""
    return N


def killing_size(backend: str, n: int, deaths: int) -> int:
    """The size of a scenario whose deliveries each kill ``deaths`` workers (see DEATHS)."""
    most = DEATHS.get(backend)
    return n if most is None else max(1, min(n, most // deaths))


@pytest.fixture
def record() -> Callable[[Report], None]:
    """Add a report to the run's table."""
    return _REPORTS.append


@pytest.fixture
def deploy(
    tmp_path: Path,
    postgres_database: str,
    postgres_engine: Engine,
    pg_store: SQLStore,  # truncates the ledger after the test
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Deploy]:
    """Build deployments for this test; each is stopped and cleaned up after it.

    ``deploy(backend, sabotage=(...), nodes=2, realtime=False, db_proxy=False,
    **settings)``: ``sabotage`` switches protections off in the test process
    and in every worker; ``db_proxy`` routes the workers' database
    connections through a :class:`TcpProxy` (``deployment.db_proxy``).
    """
    made: list[Deployment] = []
    proxies: list[TcpProxy] = []
    locks = contextlib.ExitStack()
    holding = False

    def make(
        backend: str,
        *,
        sabotage: tuple[str, ...] = (),
        nodes: int = 2,
        realtime: bool = False,
        db_proxy: bool = False,
        workers: int | None = None,
        **overrides: Any,
    ) -> Deployment:
        require("postgres")
        for service in _SERVICES[backend]:
            require(service)
        nonlocal holding
        if "redis" in _SERVICES[backend] and not holding:
            locks.enter_context(_redis_lock())
            holding = True
        db_url = postgres_database
        proxy = None
        if db_proxy:
            url = make_url(postgres_database)
            proxy = TcpProxy((url.host or "127.0.0.1", url.port or 5432))
            proxies.append(proxy)
            db_url = url.set(port=proxy.port).render_as_string(hide_password=False)
        sabotage_module.apply(sabotage, monkeypatch.setattr)
        settings = Settings(
            directory=str(tmp_path / f"run-{len(made)}"),
            db_url=db_url,
            admin_db_url=postgres_database,
            queue=new_queue(QUEUE_PREFIX if backend.startswith("dramatiq") else "faults-"),
            sabotage=sabotage,
            **overrides,
        )
        deployment: Deployment
        if backend == "memory":
            deployment = MemoryDeployment(settings, postgres_engine, nodes=nodes, realtime=realtime)
        elif backend == "rq":
            deployment = RQDeployment(settings, postgres_engine, workers=workers or 2)
        elif backend == "dramatiq-rabbitmq":
            deployment = DramatiqDeployment(settings, postgres_engine, workers=workers or 2)
        else:
            broker = backend.split("-")[1]
            deployment = CeleryDeployment(
                settings, postgres_engine, broker=broker, workers=workers or 1
            )
        deployment.db_proxy = proxy
        made.append(deployment)
        return deployment

    with locks:
        yield make
        for deployment in made:
            deployment.close()
        for proxy in proxies:
            proxy.close()


@contextlib.contextmanager
def _redis_lock() -> Iterator[None]:
    """Hold the suite's Redis database for this process (an advisory file lock)."""
    with _REDIS_LOCK.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Print the fault table of this run (and write it to ``CHIMEWAY_FAULTS_TABLE``)."""
    if not _REPORTS:
        return
    reports = sorted(
        _REPORTS, key=lambda r: (int(r.scenario.split()[0]), BACKENDS.index(r.backend))
    )
    rendered = table(reports)
    terminalreporter.write_sep("=", f"fault suite: N={N} per scenario and backend")
    terminalreporter.write_line(rendered)
    target = os.environ.get("CHIMEWAY_FAULTS_TABLE")
    if target:
        lines = [rendered, ""]
        lines += [
            json.dumps({"scenario": r.scenario, "backend": r.backend, **attrs.asdict(r.counts)})
            for r in reports
        ]
        Path(target).write_text("\n".join(lines) + "\n")
