"""Negative controls: with the protection a scenario tests switched off, the scenario fails.

Each test reruns a scenario of :mod:`tests.faults.scenarios` with one
sabotage of :mod:`tests.faults.sabotage` (chimeway's code patched in the test
process and in every worker, never in ``src/``) and asserts that the history
checker reports the loss, the duplicate or the unexpected history that the
protection prevents. A scenario that still passed here would prove nothing.
Every control runs on the memory backend; a few also on real workers.
"""

from __future__ import annotations

import pytest

from tests.faults import scenarios
from tests.faults.conftest import Deploy
from tests.faults.history import Report

pytestmark = pytest.mark.slow

#: Small: a control only has to show the failure.
SIZE = 8
#: How long a control lets the deployment try before the checker looks.
GIVE_UP = {"memory": 5.0, "rq": 20.0, "celery-redis": 20.0, "celery-rabbitmq": 20.0}


def _failing(report: Report, *kinds: str) -> None:
    found = {kind: getattr(report.counts, kind) for kind in kinds}
    assert all(found.values()), f"expected {kinds} > 0\n{report.describe()}"


@pytest.mark.parametrize("backend", ["memory", "rq"])
def test_sigkill_without_the_rescuer_loses_deliveries(deploy: Deploy, backend: str) -> None:
    """With dead workers' attempts never resolved, the SIGKILLed deliveries are lost."""
    report = scenarios.sigkill(
        deploy, backend, SIZE, sabotage=("rescue-off",), timeout=GIVE_UP[backend]
    )
    _failing(report, "lost")


def test_poison_whose_deaths_are_forgotten_never_ends(deploy: Deploy) -> None:
    """A rescuer that forgets each death (a queue's own retry) loops the poison delivery."""
    report = scenarios.poison(deploy, "memory", SIZE, sabotage=("forget-deaths",), timeout=5)
    _failing(report, "lost", "unexpected")


def test_outbox_bypassed_loses_the_crashed_commits(deploy: Deploy) -> None:
    """Without outbox rows, deliveries committed before the producer crashed are never queued."""
    report = scenarios.outbox(deploy, "memory", SIZE, sabotage=("outbox-off",), timeout=5)
    _failing(report, "lost")


def test_queue_lost_without_requeue_loses_deliveries(deploy: Deploy) -> None:
    """Without the rescuer's requeue of stranded deliveries, a lost queue loses them."""
    report = scenarios.queue_lost(deploy, "memory", SIZE, sabotage=("requeue-off",), timeout=5)
    _failing(report, "lost")


def test_record_in_two_transactions_writes_partially(deploy: Deploy) -> None:
    """A record split in two transactions leaves attempts completed without their transition."""
    report = scenarios.pg_terminate(deploy, "memory", SIZE, sabotage=("split-record",), timeout=10)
    _failing(report, "unexpected")


def test_backend_acking_failed_jobs_loses_deliveries_in_an_outage(deploy: Deploy) -> None:
    """A backend that acknowledges a job whose perform raised loses deliveries in an outage."""
    report = scenarios.db_outage(deploy, "memory", SIZE, sabotage=("ack-on-error",), timeout=5)
    _failing(report, "lost")


@pytest.mark.parametrize("backend", ["memory", "rq"])
def test_skipping_the_lease_check_sends_twice(deploy: Deploy, backend: str) -> None:
    """Without the lease check, a redelivered or duplicated job calls the provider again."""
    report = scenarios.concurrency(
        deploy, backend, SIZE, sabotage=("lease-off",), timeout=GIVE_UP[backend]
    )
    _failing(report, "duplicated_raw", "unexpected")


def test_unfenced_late_write_overwrites_the_ledger(deploy: Deploy) -> None:
    """Without fencing, a call that outlived its lease writes after the delivery ended."""
    report = scenarios.concurrency(deploy, "memory", SIZE, sabotage=("fence-off",), timeout=5)
    _failing(report, "unexpected")


def test_unfenced_record_beats_a_cancel(deploy: Deploy) -> None:
    """Without fencing, a send recorded after a cancel makes a delivery cancelled and succeeded."""
    report = scenarios.cancel_race(deploy, "memory", SIZE, sabotage=("fence-off",), timeout=10)
    _failing(report, "unexpected")


def test_cold_shutdown_leaves_attempts_in_flight(deploy: Deploy) -> None:
    """A shutdown that does not wait for running jobs leaves their attempts in flight."""
    report = scenarios.sigterm(deploy, "memory", SIZE, graceful=False, timeout=30)
    _failing(report, "unexpected")


def test_unvalidated_text_breaks_the_refusal_contract(deploy: Deploy) -> None:
    """Without the NUL and surrogate checks, hostile text is accepted or fails in the driver."""
    report = scenarios.hostile(deploy, "memory", SIZE, sabotage=("validation-off",), timeout=5)
    _failing(report, "unexpected")


def test_a_worker_reading_pickle_runs_the_payload(deploy: Deploy) -> None:
    """A worker that deserializes pickle runs the pickled job's payload: the canary file appears."""
    report = scenarios.hostile(deploy, "rq", SIZE, sabotage=("pickle-on",), timeout=20)
    _failing(report, "unexpected")
    ran = any("pickle payload ran" in problem.detail for problem in report.problems)
    assert ran, report.describe()
