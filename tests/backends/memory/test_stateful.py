"""A RuleBasedStateMachine checking MemoryBackend against a reference model of pending jobs.

Jobs go to three queues, and runs serve every queue or an ordered few.
"""

from __future__ import annotations

import itertools
import uuid
from datetime import UTC, datetime, timedelta

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from chimeway_backends.memory import DEFAULT_QUEUE, MemoryBackend
from chimeway_core.clock import VirtualClock
from chimeway_core.jobs import JobKind
from tests.backends.memory.fakes import ScriptedPerformer

T0 = datetime(2030, 1, 1, tzinfo=UTC)
IDS = [uuid.UUID(int=n) for n in range(1, 6)]
ids = st.sampled_from(IDS)
offsets = st.integers(min_value=-5, max_value=60).map(lambda s: timedelta(seconds=s))
QUEUES = [DEFAULT_QUEUE, "a", "b"]
queue_names = st.none() | st.sampled_from(QUEUES)
#: What a run serves: every queue, or some in an order.
served = st.none() | st.lists(st.sampled_from(QUEUES), min_size=1, max_size=3, unique=True)


class Model:
    """The reference: pending (run time, enqueue sequence, queue), run in that order.

    A run given queues takes, from the first of them with a due job, its earliest.
    """

    def __init__(self) -> None:
        self.now = T0
        self.jobs: dict[uuid.UUID, tuple[datetime, int, str]] = {}
        self.seq = itertools.count()
        self.scripts: dict[uuid.UUID, list[timedelta]] = {i: [] for i in IDS}
        self.calls: list[tuple[uuid.UUID, datetime]] = []

    def enqueue(self, delivery_id: uuid.UUID, run_at: datetime, queue: str | None) -> None:
        """Add a job, or move the pending one earlier (on the queue it is on)."""
        current = self.jobs.get(delivery_id)
        if current is None:
            self.jobs[delivery_id] = (run_at, next(self.seq), queue or DEFAULT_QUEUE)
        elif run_at < current[0]:
            self.jobs[delivery_id] = (run_at, next(self.seq), current[2])

    def _next(self, queues: list[str] | None) -> uuid.UUID | None:
        """The job to run now, if any is due on the served queues."""
        due = {i: job for i, job in self.jobs.items() if job[0] <= self.now}
        for queue in [None] if queues is None else queues:
            mine = {i: job for i, job in due.items() if queue is None or job[2] == queue}
            if mine:
                return min(mine, key=lambda i: mine[i][:2])
        return None

    def run(self, *, advance: bool, queues: list[str] | None = None) -> None:
        """Run due jobs in order, moving time to the next served job when ``advance``."""
        while True:
            delivery_id = self._next(queues)
            if delivery_id is None:
                later = [j[0] for j in self.jobs.values() if queues is None or j[2] in queues]
                if not advance or not later:
                    return
                self.now = max(self.now, min(later))
                continue
            del self.jobs[delivery_id]
            self.calls.append((delivery_id, self.now))
            script = self.scripts[delivery_id]
            if script:
                # A RETRY result names no queue: the next run goes to the default one.
                self.enqueue(delivery_id, self.now + script.pop(0), None)


class BackendMachine(RuleBasedStateMachine):
    """Enqueue, advance the clock and run; the backend must match the model at each step."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = VirtualClock(T0)
        self.backend = MemoryBackend(self.clock)
        self.performer = ScriptedPerformer(self.clock)
        self.model = Model()

    @rule(delivery_id=ids, offset=st.none() | offsets, queue=queue_names)
    def enqueue(self, delivery_id: uuid.UUID, offset: timedelta | None, queue: str | None) -> None:
        """Enqueue now or at an offset from now (possibly in the past), on a queue."""
        run_at = self.model.now if offset is None else self.model.now + offset
        self.backend.enqueue(delivery_id, at=None if offset is None else run_at, queue=queue)
        self.model.enqueue(delivery_id, run_at, queue)

    @rule(batch=st.lists(ids, max_size=4), queue=queue_names)
    def enqueue_many(self, batch: list[uuid.UUID], queue: str | None) -> None:
        """Enqueue several ids due now, on a queue."""
        self.backend.enqueue_many(batch, queue=queue)
        for delivery_id in batch:
            self.model.enqueue(delivery_id, self.model.now, queue)

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

    @rule(queues=served)
    def run_due(self, queues: list[str] | None) -> None:
        """Run what is due now on the served queues."""
        self.backend.run_due(self.performer, queues=queues)
        self.model.run(advance=False, queues=queues)

    @rule(queues=served)
    def run_until_idle(self, queues: list[str] | None) -> None:
        """Run everything served, moving virtual time to each delayed job of theirs."""
        self.backend.run_until_idle(self.performer, queues=queues)
        self.model.run(advance=True, queues=queues)
        left = {job.queue for job in self.backend.pending()}
        assert not left if queues is None else not left & set(queues)

    @invariant()
    def matches_the_model(self) -> None:
        """Pending jobs, the calls made and the clock agree with the model."""
        expected = sorted(self.model.jobs.items(), key=lambda item: item[1][:2])
        actual = [(job.delivery_id, job.run_at, job.queue) for job in self.backend.pending()]
        assert [(i, run_at, queue) for i, (run_at, _, queue) in expected] == actual
        assert self.model.calls == self.performer.calls
        assert self.model.now == self.clock.now()


TestBackendMachine = BackendMachine.TestCase
