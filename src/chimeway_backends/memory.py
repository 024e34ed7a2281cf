"""The in-memory backend, kept at its old import path.

It lives in the core now, :mod:`chimeway_core.memory` (the embedded default
and the test double need no adapter); this module re-exports its names.
"""

from __future__ import annotations

from chimeway_core.memory import (
    DEFAULT_ERROR_RETRY_DELAY,
    DEFAULT_QUEUE,
    JobFailure,
    MaxJobsExceededError,
    MemoryBackend,
    MemoryWorker,
    QueuedJob,
    RunStats,
)

__all__ = [
    "DEFAULT_ERROR_RETRY_DELAY",
    "DEFAULT_QUEUE",
    "JobFailure",
    "MaxJobsExceededError",
    "MemoryBackend",
    "MemoryWorker",
    "QueuedJob",
    "RunStats",
]
