"""RQ workers timed to the end of their last job, not to the end of their burst.

``worker.work(burst=True)`` returns only after RQ has torn its command
listener down, and a plain RQ worker's listener now and then waits out a
60-second blocking read first (chimeway's worker classes read for half a
second). Timing to the return would charge that wait to whichever side drew
it: 1,000 jobs then take a minute. :func:`drained` times every side the same
way, to the moment its last job ended, and gives every side the short read,
so a burst also *returns* soon after its work is done: the waits made a
smoke run outlast its test's timeout.
"""

from __future__ import annotations

import time
from typing import Any


def drained(cls: type[Any]) -> type[Any]:
    """``cls`` (an RQ worker class) with ``drained_at``: when its last job ended, or 0.0."""

    class Drained(cls):  # type: ignore[misc,valid-type]
        drained_at = 0.0

        def subscribe(self) -> None:
            self.pubsub = self.connection.pubsub()
            self.pubsub.subscribe(**{self.pubsub_channel_name: self.handle_payload})
            self.pubsub_thread = self.pubsub.run_in_thread(
                sleep_time=0.5,
                daemon=True,
                exception_handler=getattr(self, "_pubsub_exception_handler", None),
            )

        def execute_job(self, job: Any, queue: Any) -> Any:
            result = super().execute_job(job, queue)
            self.drained_at = time.time()
            return result

    Drained.__name__ = Drained.__qualname__ = f"Drained{cls.__name__}"
    return Drained


def burst_seconds(worker: Any) -> float:
    """Run ``worker`` (of a :func:`drained` class) in burst mode; seconds to its last job's end."""
    started = time.time()
    worker.work(burst=True, logging_level="WARNING")
    if not worker.drained_at:
        raise RuntimeError("the burst ran no job")
    return float(worker.drained_at - started)
