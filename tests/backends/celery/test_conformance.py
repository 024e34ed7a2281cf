"""The backend conformance cases on the Celery backend, over Redis and over RabbitMQ."""

from __future__ import annotations

from typing import Any

import pytest

from chimeway_core.engine import Chimeway
from tests.backends.celery.conformance import RETRY, BackendConformance, MakeEngine, RunUntilIdle
from tests.backends.celery.conftest import InProcessCelery, JobWatch, run_watched_until_idle


class TestCeleryConformance(BackendConformance):
    """Every conformance case, with an embedded solo worker on each broker."""

    @pytest.fixture
    def make_engine(self, in_process: InProcessCelery) -> MakeEngine:
        """Engines on a CeleryBackend with a worker running for them."""

        def make(
            channels: dict[str, Any], *, policies: tuple[Any, ...] = (), retry: Any = RETRY
        ) -> Chimeway:
            return in_process.make_engine(channels, policies=policies, retry=retry)

        return make

    @pytest.fixture
    def run_until_idle(self, job_watch: JobWatch) -> RunUntilIdle:
        """Wait for the embedded worker to finish every job and every delivery."""

        def run(engine: Chimeway) -> list[BaseException]:
            return run_watched_until_idle(engine, job_watch)

        return run
