"""The Dramatiq backend: chimeway deliveries as messages on the user's Dramatiq broker.

A package of what is specific to Dramatiq: the backend, its actor and its
middleware (:mod:`.backend`), the check that Dramatiq's encoder is JSON
(:mod:`.encoder`), :func:`run_worker` (:mod:`.worker`), the test
harness (:mod:`.harness`) and the command line's entry (:mod:`.cli`, loaded
only by the command line). The worker half every backend shares is
:mod:`chimeway_core.worker`. Every public name is imported on first use.

Theory of operation
-------------------
:class:`DramatiqBackend` declares one actor, ``chimeway.deliver``, on the
application's own broker (RabbitMQ or Redis). Its only argument is a
delivery id (a canonical UUID string, in Dramatiq's JSON messages); anything
else (another type, a second argument, a keyword) raises
:class:`~chimeway_core.errors.InvalidJobError` before the ledger is read,
and the message fails without a retry and without a channel call.
Dramatiq's encoder must be JSON: with ``dramatiq.set_encoder(PickleEncoder())``
the backend is not built and no worker of its broker boots
(:class:`UnsafeEncoderError`), since a worker decodes every message, pickle
included, before any actor can refuse it.

Every message of one delivery has the Dramatiq message id
:func:`~chimeway_core.jobs.job_id_for`. Dramatiq does not deduplicate on
it: a second enqueue of a pending delivery makes a second message, which is
harmless by construction (``perform()`` acknowledges a terminal, leased or
not-yet-due delivery without side effect, and one job at a time wins the
claim). A job due later goes through Dramatiq's own delay queue
(``broker.enqueue(message, delay=...)``: the message carries its ``eta``).

The actor runs :meth:`Chimeway.perform <chimeway_core.engine.Chimeway.perform>`
and translates what comes back, as :mod:`chimeway_core.jobs` prescribes:

- ``ACK``: the actor returns; the message is acknowledged.
- ``RETRY`` / ``DEFER``: a new message for the delivery is sent, delayed to
  ``run_at``, on the queue the engine names; then the actor returns.
- :class:`~chimeway_core.errors.UnhandledOutcomeError`: the next run is sent
  for the error's ``run_at`` (when the engine set one), then the error is
  raised and the message fails.
- any other exception (the database is down): logged, and
  :class:`dramatiq.Retry` after ``error_retry_delay`` seconds, which
  Dramatiq's Retries middleware puts back on the queue it came from.

Retries belong to the ledger: the actor's ``retry_when``
(:func:`~chimeway_backends.dramatiq.backend.ledger_decides`) lets Dramatiq's
Retries middleware retry only that :class:`dramatiq.Retry`, never adding an
attempt of its own. Dramatiq's time limit (``TimeLimitExceeded``) is one of
the backend's ``interrupts``: a call it cuts off is left in flight for the
rescuer, and the message fails.

The backend's middleware (:class:`ChimewayMiddleware`) runs in every worker
of the broker, ``dramatiq proj.tasks`` as well as :func:`run_worker`: it
drops database connections a worker process inherited, declares every queue
the engine routes to, and runs :meth:`Chimeway.rescue
<chimeway_core.engine.Chimeway.rescue>` every ``rescue_interval`` seconds in
a thread of each worker process.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from chimeway_backends import LazyExports, require

require("dramatiq", "the Dramatiq backend", "dramatiq", "pika", "redis")

if TYPE_CHECKING:
    from chimeway_backends.dramatiq.backend import (
        ACTOR_NAME,
        DEFAULT_QUEUE,
        ChimewayMiddleware,
        DramatiqBackend,
        ledger_decides,
    )
    from chimeway_backends.dramatiq.encoder import UnsafeEncoderError, refuse_unsafe_encoder
    from chimeway_backends.dramatiq.worker import run_worker

__all__ = [
    "ACTOR_NAME",
    "DEFAULT_QUEUE",
    "ChimewayMiddleware",
    "DramatiqBackend",
    "UnsafeEncoderError",
    "ledger_decides",
    "refuse_unsafe_encoder",
    "run_worker",
]

# Each public name and the module it comes from, imported on first use (PEP 562).
_HOMES: Final = {
    "ACTOR_NAME": "backend",
    "DEFAULT_QUEUE": "backend",
    "ChimewayMiddleware": "backend",
    "DramatiqBackend": "backend",
    "UnsafeEncoderError": "encoder",
    "ledger_decides": "backend",
    "refuse_unsafe_encoder": "encoder",
    "run_worker": "worker",
}


_EXPORTS: Final = LazyExports(__name__, _HOMES, __all__)
__getattr__ = _EXPORTS.get
__dir__ = _EXPORTS.names
