"""A RuleBasedStateMachine checking MemoryBackend against a reference model of pending jobs."""

from __future__ import annotations

import itertools
import uuid
from datetime import UTC, datetime, timedelta

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from chimeway_backends.memory import MemoryBackend
from chimeway_core.clock import VirtualClock
from chimeway_core.jobs import JobKind
from tests.backends.memory.fakes import ScriptedPerformer

T0 = datetime(2030, 1, 1, tzinfo=UTC)
IDS = [uuid.UUID(int=n) for n in range(1, 6)]
ids = st.sampled_from(IDS)
offsets = st.integers(min_value=-5, max_value=60).map(lambda s: timedelta(seconds=s))


class Model:
    """The reference: a dict of pending run times, ordered by (run_at, enqueue sequence)."""

    def __init__(self) -> None:
        self.now = T0
        self.jobs: dict[uuid.UUID, tuple[datetime, int]] = {}
        self.seq = itertools.count()
        self.scripts: dict[uuid.UUID, list[timedelta]] = {i: [] for i in IDS}
        self.calls: list[tuple[uuid.UUID, datetime]] = []

    def enqueue(self, delivery_id: uuid.UUID, run_at: datetime) -> None:
        """Add a job, or move the pending one earlier."""
        current = self.jobs.get(delivery_id)
        if current is None or run_at < current[0]:
            self.jobs[delivery_id] = (run_at, next(self.seq))

    def run(self, *, advance: bool) -> None:
        """Run due jobs in order, moving time to the next job when ``advance``."""
        while self.jobs:
            delivery_id, (run_at, _) = min(self.jobs.items(), key=lambda item: item[1])
            if run_at > self.now:
                if not advance:
                    return
                self.now = run_at
            del self.jobs[delivery_id]
            self.calls.append((delivery_id, self.now))
            script = self.scripts[delivery_id]
            if script:
                self.enqueue(delivery_id, self.now + script.pop(0))


class BackendMachine(RuleBasedStateMachine):
    """Enqueue, advance the clock and run; the backend must match the model at each step."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = VirtualClock(T0)
        self.backend = MemoryBackend(self.clock)
        self.performer = ScriptedPerformer(self.clock)
        self.model = Model()

    @rule(delivery_id=ids, offset=st.none() | offsets)
    def enqueue(self, delivery_id: uuid.UUID, offset: timedelta | None) -> None:
        """Enqueue now or at an offset from now (possibly in the past)."""
        run_at = self.model.now if offset is None else self.model.now + offset
        self.backend.enqueue(delivery_id, at=None if offset is None else run_at)
        self.model.enqueue(delivery_id, run_at)

    @rule(batch=st.lists(ids, max_size=4))
    def enqueue_many(self, batch: list[uuid.UUID]) -> None:
        """Enqueue several ids due now."""
        self.backend.enqueue_many(batch)
        for delivery_id in batch:
            self.model.enqueue(delivery_id, self.model.now)

    @rule(delivery_id=ids, delays=st.lists(st.integers(0, 30), max_size=3))
    def script_retries(self, delivery_id: uuid.UUID, delays: list[int]) -> None:
        """Make the next runs of a delivery return RETRY after the given delays."""
        steps = [timedelta(seconds=d) for d in delays]
        self.model.scripts[delivery_id].extend(steps)
        self.performer.scripts[delivery_id].extend((JobKind.RETRY, step) for step in steps)

    @rule(seconds=st.integers(0, 40))
    def advance(self, seconds: int) -> None:
        """Move virtual time forward."""
        self.clock.advance(seconds)
        self.model.now += timedelta(seconds=seconds)

    @rule()
    def run_due(self) -> None:
        """Run what is due now."""
        self.backend.run_due(self.performer)
        self.model.run(advance=False)

    @rule()
    def run_until_idle(self) -> None:
        """Run everything, moving virtual time to each delayed job."""
        self.backend.run_until_idle(self.performer)
        self.model.run(advance=True)
        assert [] == self.backend.pending()

    @invariant()
    def matches_the_model(self) -> None:
        """Pending jobs, the calls made and the clock agree with the model."""
        expected = sorted(self.model.jobs.items(), key=lambda item: item[1])
        actual = [(job.delivery_id, job.run_at) for job in self.backend.pending()]
        assert [(i, run_at) for i, (run_at, _) in expected] == actual
        assert self.model.calls == self.performer.calls
        assert self.model.now == self.clock.now()


TestBackendMachine = BackendMachine.TestCase
