"""What in a Celery app's configuration weakens chimeway's guarantees.

:func:`check_configuration` lists the problems, one line each;
:func:`warn_configuration` issues one :class:`CeleryConfigurationWarning`
per problem (every worker does, at start).
"""

from __future__ import annotations

import warnings
from typing import Any, Final

from chimeway_backends.celery.backend import APP_ATTRIBUTE, CeleryBackend

__all__ = ["CeleryConfigurationWarning", "check_configuration", "warn_configuration"]

_PICKLE: Final = frozenset({"pickle", "application/x-python-serialize"})
_KOMBU_REDIS_VISIBILITY_TIMEOUT: Final = 3600.0


class CeleryConfigurationWarning(UserWarning):
    """A Celery setting weakens chimeway's delivery guarantees (see the message)."""


def check_configuration(app: Any, *, longest_delay: float) -> list[str]:
    """What in ``app``'s configuration weakens chimeway's guarantees; one line per problem.

    ``longest_delay`` is the longest retry delay chimeway may schedule, in
    seconds (``RetryPolicy.max_delay``). Checked: the Redis visibility
    timeout against it (an unacknowledged eta task is redelivered when it
    runs out), late acknowledgement and reject-on-worker-lost on the
    chimeway task, pickle in ``accept_content``, the prefetch multiplier,
    eager mode and ``worker_deduplicate_successful_tasks``. An empty list
    means nothing to report.
    """
    conf = app.conf
    problems: list[str] = []
    with app.connection_for_write() as connection:
        driver = connection.transport.driver_type
    if driver == "redis":
        options = conf.broker_transport_options or {}
        timeout = float(options.get("visibility_timeout", _KOMBU_REDIS_VISIBILITY_TIMEOUT))
        if timeout < longest_delay:
            problems.append(
                f"broker_transport_options['visibility_timeout'] is {timeout:g} s, shorter "
                f"than the longest retry delay ({longest_delay:g} s): Redis redelivers an "
                "eta task that long unacknowledged, so jobs are duplicated; raise it above "
                "RetryPolicy.max_delay"
            )
    task = getattr(app, APP_ATTRIBUTE, None)
    task = task.task if isinstance(task, CeleryBackend) else None
    acks_late = task.acks_late if task is not None else conf.task_acks_late
    reject = task.reject_on_worker_lost if task is not None else conf.task_reject_on_worker_lost
    if not acks_late:
        problems.append(
            "late acknowledgement is off (task_acks_late): a job acknowledged before it "
            "runs is lost when its worker dies"
        )
    if not reject:
        problems.append(
            "task_reject_on_worker_lost is off: the job of a worker process that died "
            "mid-call is not requeued"
        )
    accepted = {str(item) for item in conf.accept_content or ()}
    if accepted & _PICKLE:
        problems.append(
            "accept_content allows pickle: a message on the queue can run code in the "
            "worker; chimeway's jobs are JSON, accept ['json'] only"
        )
    if conf.worker_prefetch_multiplier != 1:
        problems.append(
            f"worker_prefetch_multiplier is {conf.worker_prefetch_multiplier}; 1 is "
            "recommended so a busy or dying worker holds no more jobs than it runs"
        )
    if conf.task_always_eager:
        problems.append(
            "task_always_eager is on: retries run at once, ignoring their eta; use a "
            "worker (or chimeway's memory backend in tests)"
        )
    if conf.worker_deduplicate_successful_tasks:
        problems.append(
            "worker_deduplicate_successful_tasks is on: a delivery's jobs share one task "
            "id, so a redelivered job can be skipped as a duplicate of an earlier one"
        )
    return problems


def warn_configuration(app: Any, *, longest_delay: float) -> None:
    """Issue a :class:`CeleryConfigurationWarning` per :func:`check_configuration` problem."""
    for problem in check_configuration(app, longest_delay=longest_delay):
        warnings.warn(problem, CeleryConfigurationWarning, stacklevel=2)
