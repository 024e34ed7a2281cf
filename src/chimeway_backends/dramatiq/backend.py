"""Enqueueing deliveries as Dramatiq messages, and running them: :class:`DramatiqBackend`.

The backend declares the actor ``chimeway.deliver`` on the application's
own broker and a middleware that runs in every worker of that broker; the
actor translates :func:`chimeway_core.worker.run_job`'s verdict into
Dramatiq's idiom (see :mod:`chimeway_backends.dramatiq`).
"""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime
from typing import Any, Final, assert_never
from uuid import UUID

import dramatiq
import pika
import pika.exceptions
import redis.exceptions
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import Middleware, TimeLimitExceeded

from chimeway_backends.dramatiq.encoder import refuse_unsafe_encoder
from chimeway_core._checks import queue_or, seconds
from chimeway_core.backend import Backend
from chimeway_core.engine import Chimeway
from chimeway_core.errors import InvalidJobError
from chimeway_core.jobs import job_id_for
from chimeway_core.worker import EngineSource, Verdict, rescue, run_job

__all__ = ["ACTOR_NAME", "DEFAULT_QUEUE", "ChimewayMiddleware", "DramatiqBackend"]

_log = logging.getLogger(__name__)

#: The actor every chimeway message names.
ACTOR_NAME: Final = "chimeway.deliver"
#: The queue chimeway's messages go to unless told otherwise.
DEFAULT_QUEUE: Final = "chimeway"


def ledger_decides(retries: int, exception: BaseException) -> bool:
    """The chimeway actor's ``retry_when``: only the actor's own :class:`dramatiq.Retry`.

    Dramatiq's Retries middleware asks this instead of counting attempts
    (``retry_when`` takes precedence over ``max_retries``, even one a
    message carries), so it never adds attempts of its own: a time limit, a
    refused message or an unhandled outcome fails the message, and the
    ledger decides what comes next.
    """
    del retries
    return isinstance(exception, dramatiq.Retry)


class DramatiqBackend(Backend):
    """Chimeway's backend on a Dramatiq broker: a :class:`~chimeway_core.backend.Backend`.

    Declares the actor ``chimeway.deliver`` on ``broker`` (its messages and
    their retries go to ``queue``, also called ``default_queue``) and adds a
    :class:`ChimewayMiddleware` to it; one backend per broker. ``engine`` is
    what the worker performs with: a :class:`Chimeway`, its import path, or
    ``None`` for ``CHIMEWAY_APP``; it is resolved lazily, once per process,
    so the module that builds the engine with this backend can name itself.
    ``rescue_interval`` is how often (seconds) every worker process runs the
    rescuer (``None``: never). ``error_retry_delay`` is how long (seconds) a
    job whose ``perform()`` crashed waits before it runs again.
    ``time_limit`` (seconds) is the actor's Dramatiq time limit (``None``:
    the TimeLimit middleware's, 10 minutes by default): set it longer than
    the longest channel timeout and shorter than that timeout plus the
    engine's ``lease_margin``.

    Dramatiq's time limit (``TimeLimitExceeded``, raised inside the channel
    call) is one of its ``interrupts``: the attempt is left in flight and
    rescued as ``unknown``, never recorded as the channel's own failure.

    Raises :class:`~chimeway_backends.dramatiq.encoder.UnsafeEncoderError`
    if Dramatiq's encoder is not JSON (``dramatiq.set_encoder(PickleEncoder())``):
    chimeway's actor takes JSON arguments only.
    """

    name = "dramatiq"
    #: Raised by Dramatiq inside a running actor to stop it; see :class:`Backend`.
    interrupts: tuple[type[BaseException], ...] = (TimeLimitExceeded,)
    unavailable = (
        dramatiq.errors.BrokerConnectionError,
        pika.exceptions.AMQPError,
        redis.exceptions.ConnectionError,
        redis.exceptions.TimeoutError,
        OSError,
    )

    def __init__(
        self,
        broker: dramatiq.Broker,
        *,
        queue: str = DEFAULT_QUEUE,
        engine: Chimeway | str | None = None,
        rescue_interval: float | None = 30.0,
        error_retry_delay: float = 10.0,
        time_limit: float | None = None,
    ) -> None:
        if not isinstance(broker, dramatiq.Broker):
            raise TypeError(f"broker must be a dramatiq.Broker, not {type(broker).__name__}")
        if not isinstance(queue, str) or not queue:
            raise ValueError(f"queue must be a non-empty str, got {queue!r}")
        refuse_unsafe_encoder()
        source = EngineSource(engine)
        if ACTOR_NAME in broker.actors:
            raise ValueError(f"{broker!r} already has a DramatiqBackend; make one per broker")
        if rescue_interval is not None:
            seconds("rescue_interval", rescue_interval, positive=True)
        seconds("error_retry_delay", error_retry_delay)
        options: dict[str, object] = {"retry_when": ledger_decides, "max_retries": 0}
        if time_limit is not None:
            options["time_limit"] = int(seconds("time_limit", time_limit, positive=True) * 1000)
        self.broker = broker
        self.queue = queue
        self.rescue_interval = rescue_interval
        self.error_retry_delay = error_retry_delay
        self.source = source
        backend = self

        def deliver(*args: object, **kwargs: object) -> None:
            backend._deliver(args, kwargs)

        deliver.__doc__ = "Perform one chimeway delivery job: the only argument is its id."
        # Not the @actor decorator: it refuses options a broker without the
        # Retries middleware does not know, and retry_when only matters with it.
        self.actor: dramatiq.Actor[..., None] = dramatiq.Actor(
            deliver,
            broker=broker,
            actor_name=ACTOR_NAME,
            queue_name=queue,
            priority=0,
            options=options,
        )
        self.middleware = ChimewayMiddleware(self)
        broker.add_middleware(self.middleware)

    def __repr__(self) -> str:
        return f"DramatiqBackend(broker={type(self.broker).__name__}, queue={self.queue!r})"

    @property
    def default_queue(self) -> str:
        """The queue jobs go to without ``queue=``: ``queue``."""
        return self.queue

    # -- enqueueing ---------------------------------------------------------
    # The message id is job_id_for(delivery_id); Dramatiq does not
    # deduplicate on it (a duplicate job is harmless: see the package).

    def _enqueue(self, delivery_id: UUID, at: datetime | None, queue: str) -> None:
        self.send(delivery_id, at=at, queue=queue)

    def _enqueue_many(self, delivery_ids: list[UUID], queue: str) -> None:
        for delivery_id in delivery_ids:
            self.send(delivery_id, at=None, queue=queue)

    def send(self, delivery_id: UUID, *, at: datetime | None, queue: str) -> None:
        """Put the delivery's message on ``queue``; at ``at`` through Dramatiq's delay queue."""
        if queue not in self.broker.get_declared_queues():
            self.broker.declare_queue(queue)
        message: dramatiq.Message[None] = dramatiq.Message(
            queue_name=queue,
            actor_name=ACTOR_NAME,
            args=(str(delivery_id),),
            kwargs={},
            options={},
            message_id=job_id_for(delivery_id),
        )
        delay = None
        if at is not None:
            millis = int((at - datetime.now(UTC)).total_seconds() * 1000)
            delay = millis if millis > 0 else None
        self.broker.enqueue(message, delay=delay)

    def _ping(self) -> None:
        if isinstance(self.broker, RedisBroker):
            self.broker.client.ping()
        elif isinstance(self.broker, RabbitmqBroker):
            # A connection of its own: the broker's, per thread, may be stale.
            pika.BlockingConnection(self.broker.parameters).close()

    def _service(self) -> str:
        return f"the Dramatiq {type(self.broker).__name__}{self._where()}"

    def _where(self) -> str:
        """`` at `` the broker's address, no password; empty for a broker of another kind."""
        if isinstance(self.broker, RedisBroker):
            kwargs = self.broker.client.connection_pool.connection_kwargs
            where = kwargs.get("path") or f"{kwargs.get('host')}:{kwargs.get('port')}"
            return f" at redis://{where}/{kwargs.get('db', 0)}"
        if isinstance(self.broker, RabbitmqBroker):
            params = self.broker.parameters
            first = params[0] if isinstance(params, list) else params
            return f" at amqp://{first.host}:{first.port}/{first.virtual_host}"
        return ""

    # -- the worker side ----------------------------------------------------

    def bind(self, engine: Chimeway) -> None:
        """Perform this process's jobs with ``engine`` (built after, and with, this backend).

        The in-process alternative to an import path. Raises
        :class:`ValueError` if another engine is already in use.
        """
        try:
            self.source.install(engine, replace=False)
        except ValueError:
            raise ValueError("this DramatiqBackend already performs with another engine") from None

    def engine(self) -> Chimeway:
        """The engine this backend's actor performs with, resolved once per process."""
        return self.source.get()

    def _deliver(self, args: tuple[object, ...], kwargs: dict[str, object]) -> None:
        try:
            verdict = run_job(self.source, args, kwargs)
        except InvalidJobError:
            raise  # a message that is no delivery id fails for good
        except Exception as error:
            _log.exception(
                "chimeway job for delivery %s crashed; retrying in %ss",
                args[0] if args else None,
                self.error_retry_delay,
            )
            # Dramatiq's Retries middleware puts the message back on the
            # queue it came from (ledger_decides lets this one through).
            raise dramatiq.Retry(str(error), delay=int(self.error_retry_delay * 1000)) from error
        match verdict.verdict:
            case Verdict.ACK:
                return
            case Verdict.AGAIN:
                assert verdict.run_at is not None
                self._again(args[0], verdict.run_at, verdict.queue)
            case Verdict.FAIL:
                assert verdict.error is not None
                if verdict.run_at is not None:
                    self._again(args[0], verdict.run_at, verdict.queue)
                raise verdict.error
            case _:
                assert_never(verdict.verdict)

    def _again(self, delivery_id: object, run_at: datetime, queue: str | None) -> None:
        assert isinstance(delivery_id, str)  # run_job accepted it
        self.send(UUID(delivery_id), at=run_at, queue=queue_or(queue, self.queue))


class ChimewayMiddleware(Middleware):
    """The worker side, in every worker of the backend's broker: the rescuer on a timer.

    In a worker process it drops database connections inherited over a
    fork; when the worker boots it refuses a non-JSON encoder
    (:class:`~chimeway_backends.dramatiq.encoder.UnsafeEncoderError`), then declares every
    queue the engine routes to
    (so the worker consumes them too) and starts a thread that runs
    :func:`chimeway_core.worker.rescue` every ``rescue_interval`` seconds,
    stopped with the worker.
    """

    def __init__(self, backend: DramatiqBackend) -> None:
        self.backend = backend
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.booted = False

    def after_process_boot(self, broker: dramatiq.Broker) -> None:
        """A new worker process: drop the pooled connections it inherited, if any."""
        del broker
        self.booted = True
        self.backend.source.after_fork()

    def boot_process(self) -> None:
        """Tell the broker's middleware this process boots, as ``dramatiq`` does; once only.

        For a :class:`dramatiq.Worker` started in this process: Dramatiq's
        TimeLimit starts its timer thread then, and without it no time limit
        ever fires.
        """
        if not self.booted:
            self.backend.broker.emit_after("process_boot")

    def before_worker_boot(self, broker: dramatiq.Broker, worker: Any) -> None:
        """Refuse a non-JSON encoder, resolve the engine and declare its routed queues.

        All before the worker consumes; ``UnsafeEncoderError`` stops
        the worker's boot (the encoder may have been set after the backend
        was built, by a module the worker imported).
        """
        del worker
        refuse_unsafe_encoder()
        engine = self.backend.engine()
        for queue in engine.worker_queues(self.backend.queue):
            if queue not in broker.get_declared_queues():
                broker.declare_queue(queue)

    def after_worker_boot(self, broker: dramatiq.Broker, worker: Any) -> None:
        """Start the rescue thread, unless the backend's ``rescue_interval`` is ``None``."""
        del broker, worker
        interval = self.backend.rescue_interval
        if interval is None or self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._rescue_loop, args=(interval,), name="chimeway-rescue", daemon=True
        )
        self._thread.start()

    def before_worker_shutdown(self, broker: dramatiq.Broker, worker: Any) -> None:
        """Stop the rescue thread (a pass under way finishes first)."""
        del broker, worker
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join()

    def _rescue_loop(self, interval: float) -> None:
        while not self._stop.wait(interval):
            rescue(self.backend.source, interval)
