"""What the fault suite found that chimeway does not handle yet, kept as strict xfails.

Each test states the behaviour chimeway should have; it is expected to fail
until the finding is fixed, and then fails loudly (``xfail_strict``) so the
marker is removed.
"""

from __future__ import annotations

import pytest

from tests.faults.conftest import Deploy
from tests.faults.deployments import RQDeployment, wait_for

pytestmark = pytest.mark.slow


@pytest.mark.xfail(
    strict=True,
    reason="finding: a chimeway RQ worker runs whatever importable function a job on its "
    "queue names (JSON arguments only, but any callable), not only chimeway's deliver",
)
def test_an_rq_job_naming_another_function_runs_nothing(deploy: Deploy) -> None:
    """A job on the chimeway queue that names os.mkdir instead of deliver makes no directory."""
    deployment = deploy("rq")
    assert isinstance(deployment, RQDeployment)
    deployment.start()
    canary = deployment.files.directory / "foreign-function-canary"
    queue = deployment.backend.queue
    job = queue.enqueue_call("os.mkdir", args=(str(canary),))
    assert wait_for(lambda: job.get_status(refresh=True) in {"finished", "failed"}, timeout=30)
    assert not canary.exists()
