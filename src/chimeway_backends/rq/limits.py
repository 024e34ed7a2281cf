"""How long an RQ job may run: per channel, or one fixed ``job_timeout``.

Theory of operation
-------------------
A job claims its delivery with a lease of ``channel.timeout +
engine.lease_margin`` seconds. RQ's job timeout (its *death penalty*, a
``SIGALRM`` in the process that runs the job) must let the call have its
whole ``timeout`` and stop it before the lease lapses, when the rescuer may
hand the delivery to another worker. Channels with different timeouts have
different windows: the webhook channel's (100 s) and the SMTP channel's
(300 s) do not even overlap under the default margin of 30 s.

**Per channel** (:class:`~chimeway_backends.rq.RQBackend` with
``job_timeout=None``, the default). The job's RQ timeout, the one RQ's own
bookkeeping uses (the started-job registry's expiry, heartbeats, a forking
worker's monitor, which kills the work horse 60 s past it), is
:func:`job_limit`: the engine's longest lease, so RQ never takes a running
job for dead. Once the job has claimed its delivery the engine calls the
backend's ``before_call``, and the alarm is set again to :func:`call_limit`
from then: the channel's ``timeout`` plus half the margin, halfway through
the window. It only ever moves earlier, so RQ's bookkeeping still covers the
job (a job slow to claim, past what is left of the longest lease, is stopped
sooner, never later). Either way the job ends in :class:`JobTimeLimitExceeded`, and the
attempt is left in flight for the rescuer.

**Fixed** (``job_timeout=<seconds>``). Every job gets that many seconds, as
RQ does it; the worker warns at start for each channel whose window it
misses (:func:`check_timeouts`).
"""

from __future__ import annotations

import logging
import math
import signal
import threading
from typing import TYPE_CHECKING, Any, ClassVar

from rq.timeouts import BaseTimeoutException, JobTimeoutException, UnixSignalDeathPenalty

if TYPE_CHECKING:
    from chimeway_core.engine import Chimeway

__all__ = [
    "ChimewayDeathPenalty",
    "JobTimeLimitExceeded",
    "call_limit",
    "check_timeouts",
    "job_limit",
]

_log = logging.getLogger(__name__)


class JobTimeLimitExceeded(BaseException):
    """RQ's job timeout cut a chimeway job short.

    A :class:`BaseException`, like a worker dying, so the engine does not take
    it for the channel's own failure: a call cut off mid-flight may have
    reached the provider. The attempt stays in flight until its lease expires
    and the rescuer resolves it as outcome ``unknown`` (retried with the same
    idempotency key, or cancelled, as the channel's guarantee says). RQ records
    the job in its ``FailedJobRegistry``.
    """


class ChimewayDeathPenalty(UnixSignalDeathPenalty):
    """RQ's SIGALRM job timeout, raising :class:`JobTimeLimitExceeded` for jobs.

    Other timeouts RQ arms with the same class (callbacks, the work-horse
    monitor) keep their own exceptions. While a job's penalty is armed,
    :meth:`shorten` may bring it forward (a channel's own limit).
    """

    #: The job penalty armed now in this process, and the thread it stops.
    _armed: ClassVar[tuple[ChimewayDeathPenalty, int] | None] = None

    def __init__(
        self,
        timeout: int,
        exception: type[BaseException] = BaseTimeoutException,
        **kwargs: Any,
    ) -> None:
        if exception is JobTimeoutException:
            exception = JobTimeLimitExceeded
        super().__init__(timeout, exception, **kwargs)  # type: ignore[no-untyped-call]  # rq untyped
        self._limit = f"{timeout} seconds"

    def setup_death_penalty(self) -> None:
        """Arm RQ's alarm; a job's penalty is remembered, for :meth:`shorten`."""
        super().setup_death_penalty()  # type: ignore[no-untyped-call]  # rq untyped
        if self._exception is JobTimeLimitExceeded:
            ChimewayDeathPenalty._armed = (self, threading.get_ident())

    def cancel_death_penalty(self) -> None:
        """Disarm RQ's alarm."""
        if ChimewayDeathPenalty._armed is not None and ChimewayDeathPenalty._armed[0] is self:
            ChimewayDeathPenalty._armed = None
        super().cancel_death_penalty()  # type: ignore[no-untyped-call]  # rq untyped

    def handle_death_penalty(self, signum: int, frame: Any) -> None:  # noqa: ARG002 - signal's
        """Raise the penalty's exception, naming the limit that was reached."""
        raise self._exception(f"Task exceeded maximum timeout value ({self._limit})")

    @classmethod
    def shorten(cls, seconds: float, why: str) -> bool:
        """Make the armed job penalty fire ``seconds`` from now, if that is sooner.

        Only from the thread the penalty stops; ``why`` names the limit in
        the exception. Returns whether an armed penalty was moved: outside an
        RQ job (a test calling ``perform()`` itself) nothing is armed.
        """
        armed = cls._armed
        if armed is None or armed[1] != threading.get_ident() or seconds <= 0:
            return False
        penalty = armed[0]
        left, _ = signal.getitimer(signal.ITIMER_REAL)
        if left and left <= seconds:
            return False
        penalty._limit = why
        signal.setitimer(signal.ITIMER_REAL, seconds)
        return True


def call_limit(timeout: float, lease: float) -> float:
    """Seconds a claimed call may run: halfway between the channel's timeout and its lease."""
    return timeout + (lease - timeout) / 2


def job_limit(engine: Chimeway, job_timeout: int | None) -> int:
    """RQ's timeout for every job: ``job_timeout``, or else the engine's longest lease.

    Whole seconds, as RQ takes them; at least one.
    """
    if job_timeout is not None:
        return job_timeout
    leases = [channel.timeout + engine.lease_margin for channel in engine.channels.values()]
    return max(1, math.ceil(max(leases, default=engine.lease_margin)))


def check_timeouts(engine: Chimeway, job_timeout: int | None, *, per_channel: bool) -> None:
    """Warn, once per channel, where the job timeout cannot fall inside the channel's window.

    ``per_channel`` says whether the worker's death penalty can be brought
    forward to each channel's limit (a :class:`ChimewayDeathPenalty`).
    """
    if job_timeout is None:
        if not per_channel:
            _log.warning(
                "per-channel job limits need chimeway's death penalty (ChimewayDeathPenalty); "
                "this worker's stops every job after %s s, the longest lease, too late for "
                "every channel's lease",
                job_limit(engine, None),
            )
        return
    for name, channel in sorted(engine.channels.items()):
        lease = channel.timeout + engine.lease_margin
        if not channel.timeout < job_timeout <= lease:
            _log.warning(
                "channel %r: RQ job_timeout=%s s should be above the channel timeout (%s s) "
                "and at most its lease (%s s = timeout + lease_margin); leave job_timeout "
                "unset for a limit per channel",
                name,
                job_timeout,
                channel.timeout,
                lease,
            )
