"""The fault scenarios on every backend, at the CI size: nothing lost, doubled or unexpected.

Each test runs one scenario of :mod:`tests.faults.scenarios` against one
backend and asserts that the history checker counted no lost delivery, no
duplicate effect (with or without idempotency keys) and nothing unexpected.
The counts go to the table printed at the end of the run. Where a worker's
death is dear (Dramatiq), the scenarios that kill run fewer deliveries
(:func:`~tests.faults.conftest.killing_size`).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.faults import scenarios
from tests.faults.conftest import BACKENDS, Deploy, killing_size
from tests.faults.history import Report

pytestmark = pytest.mark.slow


def _clean(record: Callable[[Report], None], report: Report) -> None:
    record(report)
    counts = report.counts
    actual = (counts.lost, counts.duplicated, counts.duplicated_raw, counts.unexpected)
    assert (0, 0, 0, 0) == actual, report.describe()


@pytest.mark.parametrize("backend", BACKENDS)
def test_sigkill(deploy: Deploy, backend: str, n: int, record: Callable[[Report], None]) -> None:
    """SIGKILL during the call, before it and after the commit: every delivery ends once."""
    _clean(record, scenarios.sigkill(deploy, backend, killing_size(backend, n, 1)))


@pytest.mark.parametrize("backend", BACKENDS)
def test_poison(deploy: Deploy, backend: str, n: int, record: Callable[[Report], None]) -> None:
    """A delivery that kills every worker it meets ends cancelled after max_attempts deaths."""
    size = killing_size(backend, n, scenarios.MAX)
    _clean(record, scenarios.poison(deploy, backend, size))


@pytest.mark.parametrize("backend", BACKENDS)
def test_outbox(deploy: Deploy, backend: str, n: int, record: Callable[[Report], None]) -> None:
    """A crash between commit and enqueue is relayed later, exactly once."""
    _clean(record, scenarios.outbox(deploy, backend, n))


@pytest.mark.parametrize("backend", BACKENDS)
def test_queue_lost(deploy: Deploy, backend: str, n: int, record: Callable[[Report], None]) -> None:
    """A flushed Redis, dropped RabbitMQ connections or a lost memory queue lose nothing."""
    _clean(record, scenarios.queue_lost(deploy, backend, n))


@pytest.mark.parametrize("backend", BACKENDS)
def test_pg_terminate(
    deploy: Deploy, backend: str, n: int, record: Callable[[Report], None]
) -> None:
    """A connection terminated mid-record writes nothing partial and the delivery still ends."""
    _clean(record, scenarios.pg_terminate(deploy, backend, n))


@pytest.mark.parametrize("backend", BACKENDS)
def test_db_outage(deploy: Deploy, backend: str, n: int, record: Callable[[Report], None]) -> None:
    """A database outage acknowledges nothing uncommitted and workers recover by themselves."""
    _clean(record, scenarios.db_outage(deploy, backend, n))


@pytest.mark.parametrize("backend", BACKENDS)
def test_concurrency(
    deploy: Deploy, backend: str, n: int, record: Callable[[Report], None]
) -> None:
    """Duplicate jobs, a redelivery mid-run and a lease expiring mid-call make one success."""
    _clean(record, scenarios.concurrency(deploy, backend, n))


@pytest.mark.parametrize("backend", BACKENDS)
def test_cancel_race(
    deploy: Deploy, backend: str, n: int, record: Callable[[Report], None]
) -> None:
    """A cancel racing a send ends as whichever committed first, never both."""
    _clean(record, scenarios.cancel_race(deploy, backend, n))


@pytest.mark.parametrize("backend", BACKENDS)
def test_sigterm(deploy: Deploy, backend: str, n: int, record: Callable[[Report], None]) -> None:
    """A graceful SIGTERM completes or releases every call in flight."""
    _clean(record, scenarios.sigterm(deploy, backend, n))


@pytest.mark.parametrize("backend", BACKENDS)
def test_hostile(deploy: Deploy, backend: str, n: int, record: Callable[[Report], None]) -> None:
    """Hostile jobs and inputs run nothing, write nothing invalid and leak no secret."""
    _clean(record, scenarios.hostile(deploy, backend, n))
