"""What in a Celery app's configuration weakens chimeway's guarantees, or breaks them.

:func:`check_configuration` lists the problems, one line each;
:func:`warn_configuration` issues one :class:`CeleryConfigurationWarning`
per problem (every worker does, at start). Pickle is not warned about but
refused: :func:`refuse_pickle` raises :class:`UnsafeSerializerError` when
the app would let chimeway's task take a pickle message, and every worker
of the app calls it while it is built, before it connects to the broker.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from typing import Any, Final

from celery.exceptions import SecurityError
from kombu.serialization import registry

from chimeway_backends.celery.backend import APP_ATTRIBUTE, TASK_NAME, CeleryBackend
from chimeway_core.errors import ChimewayError

__all__ = [
    "CeleryConfigurationWarning",
    "UnsafeSerializerError",
    "check_configuration",
    "pickle_problems",
    "refuse_pickle",
    "warn_configuration",
]

#: kombu's content type for pickle; ``"pickle"`` is its name.
_PICKLE_TYPE: Final = "application/x-python-serialize"
_KOMBU_REDIS_VISIBILITY_TIMEOUT: Final = 3600.0


class CeleryConfigurationWarning(UserWarning):
    """A Celery setting weakens chimeway's delivery guarantees (see the message)."""


class UnsafeSerializerError(ChimewayError, SecurityError):  # type: ignore[misc]  # celery is untyped
    """A Celery app would let chimeway's task take pickle: its worker refuses to start.

    A pickle message runs code in the worker as it is read, so anyone who
    can write to the broker could run code there; chimeway's jobs are JSON
    and never need it. Raised by :func:`refuse_pickle` while a worker of the
    app is built, before it connects to the broker, so no message is taken.
    ``app`` is the app's name, ``settings`` the offending settings' names and
    ``problems`` one line per setting, each with its fix. Also Celery's own
    :class:`~celery.exceptions.SecurityError`: ``celery worker`` prints the
    message alone and exits 1.
    """

    def __init__(self, app: str, settings: tuple[str, ...], problems: tuple[str, ...]) -> None:
        self.app = app
        self.settings = settings
        self.problems = problems
        super().__init__(
            f"chimeway refuses to start a worker of the Celery app {app!r}: it would let "
            f"chimeway's task take pickle, and a pickle message runs code in the worker; "
            + "; ".join(problems)
            + ". chimeway's jobs are JSON: if other tasks of the app need pickle, give "
            "chimeway a Celery app of its own"
        )

    def __reduce__(self) -> tuple[object, ...]:
        # The message is not the constructor's argument: tell pickle what is.
        return (type(self), (self.app, self.settings, self.problems))


def _pickles(values: Any) -> list[str]:
    """The entries of a content list (a comma-separated string too) that mean pickle."""
    if values is None:
        return []
    items: Iterable[object] = values.split(",") if isinstance(values, str) else values
    found = []
    for item in items:
        name = str(item).strip().lower()
        if _PICKLE_TYPE in (name, registry.name_to_type.get(name)):
            found.append(str(item))
    return found


def pickle_problems(app: Any) -> list[tuple[str, str]]:
    """Each setting of ``app`` that lets chimeway's task take pickle: ``(setting, problem)``.

    Checked: ``accept_content`` and ``result_accept_content`` naming pickle
    (``"pickle"`` or ``"application/x-python-serialize"``),
    ``task_serializer = "pickle"``, and a ``serializer`` of pickle on the
    ``chimeway.deliver`` task itself (``task_annotations``, or an
    assignment). Each problem names its fix. Empty: nothing to refuse.
    """
    conf = app.conf
    problems: list[tuple[str, str]] = []
    accepted = _pickles(conf.accept_content)
    if accepted:
        problems.append(
            (
                "accept_content",
                f"accept_content allows pickle ({', '.join(map(repr, accepted))}): "
                "set accept_content=['json']",
            )
        )
    results = _pickles(conf.result_accept_content)
    if results:
        problems.append(
            (
                "result_accept_content",
                f"result_accept_content allows pickle ({', '.join(map(repr, results))}): "
                "set result_accept_content=['json'] or leave it unset",
            )
        )
    if _pickles([conf.task_serializer]):
        problems.append(
            (
                "task_serializer",
                f"task_serializer is {conf.task_serializer!r}: set task_serializer='json'",
            )
        )
    task = app.tasks.get(TASK_NAME)  # finalizes the app: task_annotations applied
    serializer = getattr(task, "serializer", None)
    if _pickles([serializer]):
        problems.append(
            (
                f"{TASK_NAME}.serializer",
                f"the {TASK_NAME} task's serializer is {serializer!r} (task_annotations or "
                "an assignment): remove it, the task is declared JSON",
            )
        )
    return problems


def refuse_pickle(app: Any) -> None:
    """Raise :class:`UnsafeSerializerError` if ``app`` lets chimeway's task take pickle.

    What is checked is :func:`pickle_problems`. Every worker of an app with a
    :class:`CeleryBackend` calls this while it is built (``celery worker``,
    :func:`~chimeway_backends.celery.run_worker`, ``chimeway worker``).
    """
    problems = pickle_problems(app)
    if problems:
        raise UnsafeSerializerError(
            str(app.main),
            tuple(setting for setting, _ in problems),
            tuple(problem for _, problem in problems),
        )


def check_configuration(app: Any, *, longest_delay: float) -> list[str]:
    """What in ``app``'s configuration weakens chimeway's guarantees; one line per problem.

    ``longest_delay`` is the longest retry delay chimeway may schedule, in
    seconds (``RetryPolicy.max_delay``). Checked: the Redis visibility
    timeout against it (an unacknowledged eta task is redelivered when it
    runs out), late acknowledgement and reject-on-worker-lost on the
    chimeway task, every way of accepting pickle (:func:`pickle_problems`;
    a worker refuses to start on those), the prefetch multiplier, eager
    mode and ``worker_deduplicate_successful_tasks``. An empty list means
    nothing to report.
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
    problems.extend(
        f"{problem}; a pickle message on the queue runs code in the worker"
        for _, problem in pickle_problems(app)
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
