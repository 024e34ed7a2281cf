"""Telemetry: events about deliveries, for logs, metrics and traces.

Theory of operation
-------------------
The engine reports what happens as :class:`TelemetryEvent` values with a
mapping of metadata. A :class:`Telemetry` object fans each event out to the
handlers subscribed to it. Two promises hold for every handler:

- **Only safe metadata reaches it.** :func:`safe_meta` keeps the keys of
  :data:`SAFE_KEYS` and drops everything else, so a payload, a recipient
  address, a provider response or a secret never passes even if a caller puts
  it in the mapping. Values are coerced to ``str``, ``int``, ``float`` or
  ``None``.
- **A handler cannot break a delivery.** A handler that raises is logged (on
  the ``chimeway.telemetry`` logger) and the other handlers still run.

:meth:`Telemetry.span` wraps a unit of work (``"perform"``) and emits its
start, then its stop or exception event with the ``duration`` in seconds.

Two subscribers ship with chimeway: :class:`LoggingSubscriber` (stdlib
logging) and :class:`OpenTelemetrySubscriber` (the ``otel`` extra).
"""

from __future__ import annotations

import contextlib
import contextvars
import enum
import importlib
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from datetime import date, datetime
from types import MappingProxyType
from typing import Any, Final, TypeAlias

from chimeway_core.errors import MissingExtraError

__all__ = [
    "SAFE_KEYS",
    "Handler",
    "LoggingSubscriber",
    "MetaValue",
    "OpenTelemetrySubscriber",
    "Telemetry",
    "TelemetryEvent",
    "safe_meta",
]

_logger = logging.getLogger("chimeway.telemetry")


class TelemetryEvent(enum.StrEnum):
    """Everything chimeway reports. The value is the event's name in logs and traces."""

    NOTIFY_START = "chimeway.notify.start"
    """``notify()`` (or ``notify_many()``) started (``count`` set)."""
    NOTIFY_STOP = "chimeway.notify.stop"
    """``notify()`` wrote and queued its deliveries (``duration`` set)."""
    NOTIFY_EXCEPTION = "chimeway.notify.exception"
    """``notify()`` raised (``duration`` and ``exception_type`` set); nothing was written."""
    CREATED = "chimeway.delivery.created"
    """``notify()`` or ``resend()`` wrote a new delivery (not a repeat of a request)."""
    RELAYED = "chimeway.outbox.relayed"
    """A relay handed outbox rows to the queue (``count`` set; only when it handed any)."""
    PERFORM_START = "chimeway.perform.start"
    """A job claimed a delivery and starts working on it."""
    PERFORM_STOP = "chimeway.perform.stop"
    """A job finished (``duration`` set), whatever the delivery's outcome."""
    PERFORM_EXCEPTION = "chimeway.perform.exception"
    """A job raised (``duration`` and ``exception_type`` set)."""
    ATTEMPT_RECORDED = "chimeway.attempt.recorded"
    """A channel call's outcome was written to the ledger."""
    STATUS_TRANSITION = "chimeway.status.transition"
    """A delivery moved from ``from_status`` to ``to_status``."""
    SUPPRESSED = "chimeway.delivery.suppressed"
    """A policy suppressed a delivery (``reason`` set)."""
    DEFERRED = "chimeway.delivery.deferred"
    """A policy deferred a delivery to a later time."""
    EXHAUSTED = "chimeway.delivery.exhausted"
    """A delivery ran out of attempts and was cancelled."""
    DUPLICATE_IGNORED = "chimeway.job.duplicate_ignored"
    """A job found its delivery already terminal or claimed, and did nothing."""
    RESCUED = "chimeway.delivery.rescued"
    """The rescuer resolved an attempt left in flight by a dead worker."""
    RESENT = "chimeway.delivery.resent"
    """A delivery that ended unsent was resent (``copy_id``: the new delivery's id)."""
    UNHANDLED_OUTCOME = "chimeway.delivery.unhandled_outcome"
    """The dispatch table met an undocumented shape and raised."""


#: A metadata value after :func:`safe_meta`.
MetaValue: TypeAlias = str | int | float | None

#: What a subscriber is called with.
Handler: TypeAlias = Callable[[TelemetryEvent, Mapping[str, MetaValue]], None]

#: The only metadata keys that ever reach a handler.
SAFE_KEYS: Final = frozenset(
    {
        "delivery_id",
        "channel",
        "notification_key",
        "attempt",
        "max_attempts",
        "outcome",
        "error_class",
        "status",
        "from_status",
        "to_status",
        "reason",
        "action",
        "row",
        "duration",
        "job_kind",
        "worker",
        "event",
        "exception_type",
        "copy_id",
        "count",
        "trace_context",
        "age",
        "attempt_count",
        "call_duration",
    }
)

_MAX_TEXT: Final = 200

_SPANS: Final[Mapping[str, tuple[TelemetryEvent, TelemetryEvent, TelemetryEvent]]] = {
    "notify": (
        TelemetryEvent.NOTIFY_START,
        TelemetryEvent.NOTIFY_STOP,
        TelemetryEvent.NOTIFY_EXCEPTION,
    ),
    "perform": (
        TelemetryEvent.PERFORM_START,
        TelemetryEvent.PERFORM_STOP,
        TelemetryEvent.PERFORM_EXCEPTION,
    ),
}


def _coerce(value: object) -> MetaValue:
    # The engine's values are nearly all plain already: they are told by
    # their exact type first, the cheapest test there is, since this runs
    # for every key of every event.
    if type(value) is str:
        return value if len(value) <= _MAX_TEXT else value[:_MAX_TEXT]
    if value is None or type(value) is int or type(value) is float:
        return value
    match value:
        case None:
            return None
        case bool():
            return int(value)
        case enum.Enum():
            return _coerce(value.value)
        case int() | float():
            return value
        case str():
            return value[:_MAX_TEXT]
        case uuid.UUID():
            return str(value)
        case datetime() | date():
            return value.isoformat()
        case _:
            return str(value)[:_MAX_TEXT]


def safe_meta(meta: Mapping[str, object]) -> dict[str, MetaValue]:
    """Keep only the keys of :data:`SAFE_KEYS`, with values coerced to plain scalars.

    Unknown keys are dropped silently: that is the point. Enums become their
    value, UUIDs and datetimes strings, booleans ints, anything else its
    ``str()``; strings are cut to 200 characters.
    """
    return {key: _coerce(value) for key, value in meta.items() if key in SAFE_KEYS}


class Telemetry:
    """A set of handlers and the events sent to them.

    Thread-safe: handlers may subscribe and unsubscribe while events are
    emitted from worker threads. With no handler, :meth:`emit` costs one
    check. ``clock`` (seconds, monotonic) times :meth:`span`.
    """

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        if not callable(clock):
            raise TypeError(
                f"clock must be callable (time.perf_counter), not {type(clock).__name__}"
            )
        self._clock = clock
        self._lock = threading.Lock()
        # Replaced, never mutated, so emit() iterates a snapshot without locking.
        self._subscriptions: tuple[tuple[object, Handler], ...] = ()

    @property
    def handlers(self) -> tuple[Handler, ...]:
        """The subscribed handlers, in subscription order."""
        return tuple(handler for _, handler in self._subscriptions)

    def subscribe(self, handler: Handler) -> Callable[[], None]:
        """Call ``handler(event, meta)`` for every event; return a function that unsubscribes.

        Unsubscribing twice is harmless. Subscribing the same handler twice
        delivers each event to it twice. A ``handler`` that is not callable
        raises :class:`TypeError` here, not at every event.
        """
        if not callable(handler):
            raise TypeError(f"a telemetry handler must be callable, not {type(handler).__name__}")
        token = object()  # identifies this subscription, not the handler
        with self._lock:
            self._subscriptions = (*self._subscriptions, (token, handler))

        def unsubscribe() -> None:
            with self._lock:
                self._subscriptions = tuple(s for s in self._subscriptions if s[0] is not token)

        return unsubscribe

    def trace_context(self) -> str | None:
        """The W3C ``traceparent`` of the caller's current trace, or ``None``.

        Asked of the handlers that can tell (a ``current_trace_context()``
        method, as :class:`OpenTelemetrySubscriber` has), in subscription
        order; the first answer wins. The engine stores it with each delivery
        it writes, so the job that sends it continues the same trace. A
        handler that raises is logged and skipped.
        """
        for _, handler in self._subscriptions:
            current = getattr(handler, "current_trace_context", None)
            if current is None:
                continue
            try:
                found = current()
            except Exception:
                _logger.warning(
                    "telemetry handler raised on current_trace_context; ignored", exc_info=True
                )
                continue
            if isinstance(found, str) and found:
                return found
        return None

    def emit(self, event: TelemetryEvent, meta: Mapping[str, object] | None = None) -> None:
        """Send ``event`` with :func:`safe_meta` of ``meta`` to every handler.

        Never raises because of a handler: a failing handler is logged with
        its traceback and the next one runs.
        """
        subscriptions = self._subscriptions
        if not subscriptions:
            return
        event = TelemetryEvent(event)
        clean = safe_meta(meta or {})
        clean["event"] = event.value
        # One read-only view for every handler: none can alter what the next
        # sees, and nothing writes to ``clean`` after this point.
        view = MappingProxyType(clean)
        for _, handler in subscriptions:
            try:
                handler(event, view)
            except Exception:
                _logger.warning(
                    "telemetry handler %s raised on %s; ignored",
                    getattr(handler, "__qualname__", type(handler).__qualname__),
                    event.value,
                    exc_info=True,
                )

    @contextlib.contextmanager
    def span(
        self, prefix: str, meta: Mapping[str, object] | None = None
    ) -> Iterator[dict[str, object]]:
        """Emit ``<prefix>.start`` now and ``.stop`` or ``.exception`` at the end.

        ``prefix`` names a unit of work (``"notify"``, ``"perform"``). The block receives a
        dict it may add metadata to (say the ``outcome``); the stop or
        exception event carries it plus ``duration`` in seconds. On exception
        the event also carries ``exception_type`` (the type name, never the
        message) and the exception propagates unchanged.
        """
        try:
            start_event, stop_event, exception_event = _SPANS[prefix]
        except KeyError:
            raise ValueError(
                f"unknown telemetry span {prefix!r}; known: {sorted(_SPANS)}"
            ) from None
        data: dict[str, object] = dict(meta or {})
        self.emit(start_event, data)
        started = self._clock()
        try:
            yield data
        except BaseException as error:
            data["duration"] = self._clock() - started
            data["exception_type"] = type(error).__qualname__
            self.emit(exception_event, data)
            raise
        data["duration"] = self._clock() - started
        self.emit(stop_event, data)


_WARNING_EVENTS: Final = frozenset(
    {TelemetryEvent.PERFORM_EXCEPTION, TelemetryEvent.EXHAUSTED, TelemetryEvent.RESCUED}
)


class LoggingSubscriber:
    """Writes each event as one stdlib log record with structured ``extra``.

    The message is ``"<event> key=value ..."``; the same metadata is in
    ``record.chimeway`` (a dict) and the event name in ``record.chimeway_event``,
    for JSON formatters. Events go at ``level``, except exceptions, exhausted
    and rescued deliveries (``WARNING``) and unhandled outcomes (``ERROR``).
    """

    def __init__(self, logger: logging.Logger | None = None, level: int = logging.INFO) -> None:
        self.logger = logger if logger is not None else logging.getLogger("chimeway.events")
        self.level = level

    def _level_for(self, event: TelemetryEvent) -> int:
        if event is TelemetryEvent.UNHANDLED_OUTCOME:
            return logging.ERROR
        if event in _WARNING_EVENTS:
            return max(self.level, logging.WARNING)
        return self.level

    def __call__(self, event: TelemetryEvent, meta: Mapping[str, MetaValue]) -> None:
        """Log ``event``."""
        level = self._level_for(event)
        if not self.logger.isEnabledFor(level):
            return
        pairs = " ".join(f"{key}={value}" for key, value in meta.items() if key != "event")
        self.logger.log(
            level,
            "%s %s",
            event.value,
            pairs,
            extra={"chimeway": dict(meta), "chimeway_event": event.value},
        )


def _import_otel(module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtraError("otel", feature="OpenTelemetrySubscriber") from None


#: The messaging semantic conventions' attributes of each span (OpenTelemetry
#: semantic conventions, messaging spans): chimeway is the messaging system,
#: the channel the destination, the delivery the message.
_SPAN_KINDS: Final = {"notify": ("PRODUCER", "send"), "perform": ("CONSUMER", "process")}

#: Each safe key's attribute name; the stored trace context is never one.
_ATTRIBUTE_NAMES: Final = {key: f"chimeway.{key}" for key in SAFE_KEYS - {"trace_context"}}

#: The attributes that name a delivery, the same in every event about it. A
#: span event leaves out those its span carries already, with the same value.
_IDENTITY: Final = frozenset(
    {
        "chimeway.delivery_id",
        "chimeway.channel",
        "chimeway.notification_key",
        "chimeway.max_attempts",
        "messaging.destination.name",
        "messaging.message.id",
    }
)


class _Route(enum.Enum):
    """What an event does to spans."""

    OPEN = "start"
    STOP = "stop"
    EXCEPTION = "exception"
    RECORD = "record"


#: Each event's route, unit of work (``None`` for a recorded event) and span name.
_ROUTES: Final[Mapping[TelemetryEvent, tuple[_Route, str | None, str]]] = {
    event: (_Route.RECORD, None, event.value) for event in TelemetryEvent
} | {
    event: (route, unit, f"chimeway.{unit}")
    for unit, events in _SPANS.items()
    for route, event in zip((_Route.OPEN, _Route.STOP, _Route.EXCEPTION), events, strict=True)
}


class _OpenSpan:
    """A span an OpenTelemetrySubscriber opened, and the attributes it carries so far."""

    __slots__ = ("attributes", "owner", "span", "token", "unit")

    def __init__(
        self, owner: int, unit: str, span: Any, token: object, attributes: dict[str, Any]
    ) -> None:
        self.owner = owner
        self.unit = unit
        self.span = span
        self.token = token
        self.attributes = attributes


#: The spans the OpenTelemetrySubscribers have open in this context, innermost last.
_OPEN: contextvars.ContextVar[tuple[_OpenSpan, ...]] = contextvars.ContextVar(
    "chimeway_open_spans", default=()
)


class OpenTelemetrySubscriber:
    """Turns events into OpenTelemetry spans (needs the ``otel`` extra).

    - ``notify`` is a span ``chimeway.notify`` (kind PRODUCER) in the
      caller's trace. Its context is what the engine stores with the
      deliveries it writes (:meth:`current_trace_context`).
    - ``perform`` is one span ``chimeway.perform`` (kind CONSUMER) per job, a
      child of the stored context: every job of a delivery (first attempt,
      retries) is in the trace of the request that notified. It is the
      current span while the channel is called, so an instrumented HTTP or
      SMTP client's spans nest under it. Its attributes at the end say what
      the job left: the status after the attempt, the attempt's number,
      outcome, error class, action and dispatch row; an exception sets the
      status to error.
    - Every other event (the attempt recorded, the status transition, ...)
      is a span event on the current span when one is recording; otherwise
      (the rescuer, a duplicate at notify time) a zero-length span of its
      own in the delivery's stored trace, or the current one.

    A span event carries what the event adds: the attributes naming the
    delivery (its id, channel, key, max attempts, messaging destination and
    message id) are its span's, once; the notify span of one delivery takes
    them from its first event.

    Attributes are the safe metadata prefixed ``chimeway.`` (the stored
    trace context is never one), plus the messaging conventions'
    ``messaging.system`` (``chimeway``), ``messaging.operation.type``,
    ``messaging.destination.name`` (the channel) and ``messaging.message.id``
    (the delivery id).

    ``tracer_provider`` defaults to the global one. Raises
    :class:`~chimeway_core.errors.MissingExtraError` if ``opentelemetry-api``
    is not installed.
    """

    def __init__(self, tracer_provider: Any = None) -> None:
        self._trace = _import_otel("opentelemetry.trace")
        self._context = _import_otel("opentelemetry.context")
        tracecontext = _import_otel("opentelemetry.trace.propagation.tracecontext")
        self._propagator = tracecontext.TraceContextTextMapPropagator()
        self._tracer = self._trace.get_tracer("chimeway", tracer_provider=tracer_provider)
        self._kinds = {
            unit: getattr(self._trace.SpanKind, kind) for unit, (kind, _) in _SPAN_KINDS.items()
        }

    def current_trace_context(self) -> str | None:
        """The W3C ``traceparent`` of the current span, or ``None`` when there is none."""
        carrier: dict[str, str] = {}
        self._propagator.inject(carrier)
        return carrier.get("traceparent")

    def _parent(self, meta: Mapping[str, MetaValue]) -> Any:
        """The stored trace's context if the event carries one, else ``None`` (the current)."""
        stored = meta.get("trace_context")
        if not isinstance(stored, str):
            return None
        context = self._propagator.extract({"traceparent": stored})
        # An unreadable value extracts to no span: the current context then.
        if not self._trace.get_current_span(context).get_span_context().is_valid:
            return None
        return context

    @staticmethod
    def _attributes(unit: str | None, meta: Mapping[str, MetaValue]) -> dict[str, Any]:
        # Built once per event, of the plain str/int/float values safe_meta
        # made: the SDK's own checks of each value then find nothing to convert.
        names = _ATTRIBUTE_NAMES
        attributes: dict[str, Any] = {
            names[key]: value for key, value in meta.items() if value is not None and key in names
        }
        if unit is not None:
            attributes["messaging.system"] = "chimeway"
            attributes["messaging.operation.type"] = _SPAN_KINDS[unit][1]
        channel, delivery_id = meta.get("channel"), meta.get("delivery_id")
        if isinstance(channel, str):
            attributes["messaging.destination.name"] = channel
        if isinstance(delivery_id, str):
            attributes["messaging.message.id"] = delivery_id
        return attributes

    def __call__(self, event: TelemetryEvent, meta: Mapping[str, MetaValue]) -> None:
        """Open or close a span, or record ``event`` on one."""
        route, unit, name = _ROUTES[event]
        if unit is None:
            self._record(event, meta)
        elif route is _Route.OPEN:
            self._open(unit, name, meta)
        else:
            self._close(unit, name, route, meta)

    def _open(self, unit: str, name: str, meta: Mapping[str, MetaValue]) -> None:
        attributes = self._attributes(unit, meta)
        span = self._tracer.start_span(
            name, context=self._parent(meta), kind=self._kinds[unit], attributes=attributes
        )
        token = self._context.attach(self._trace.set_span_in_context(span))
        _OPEN.set((*_OPEN.get(), _OpenSpan(id(self), unit, span, token, attributes)))

    def _close(self, unit: str, name: str, route: _Route, meta: Mapping[str, MetaValue]) -> None:
        attributes = self._attributes(unit, meta)
        stack = _OPEN.get()
        for index in range(len(stack) - 1, -1, -1):
            opened = stack[index]
            if opened.owner == id(self) and opened.unit == unit:
                _OPEN.set(stack[:index] + stack[index + 1 :])
                self._context.detach(opened.token)
                span = opened.span
                # Only what the job changed: the span carries the rest already.
                carried = opened.attributes
                attributes = {
                    key: value for key, value in attributes.items() if carried.get(key) != value
                }
                break
        else:
            # Subscribed after the start: the span is recorded whole, back-dated.
            end = time.time_ns()
            duration = meta.get("duration")
            seconds = float(duration) if isinstance(duration, int | float) else 0.0
            span = self._tracer.start_span(
                name, context=self._parent(meta), start_time=end - int(seconds * 1e9)
            )
        span.set_attributes(attributes)
        if route is _Route.EXCEPTION:
            span.set_status(self._trace.Status(self._trace.StatusCode.ERROR))
        span.end()

    def _record(self, event: TelemetryEvent, meta: Mapping[str, MetaValue]) -> None:
        attributes = self._attributes(None, meta)
        current = self._trace.get_current_span()
        if current.is_recording():
            stack = _OPEN.get()
            if stack and stack[-1].span is current:
                attributes = self._on_span(stack[-1], attributes)
            current.add_event(event.value, attributes=attributes)
            return
        now = time.time_ns()
        span = self._tracer.start_span(
            event.value, context=self._parent(meta), start_time=now, attributes=attributes
        )
        span.end(end_time=now)

    @staticmethod
    def _on_span(opened: _OpenSpan, attributes: dict[str, Any]) -> dict[str, Any]:
        """An event's attributes on ``opened``: the delivery's own are the span's, once.

        The notify span of one delivery takes them from its first event (its
        stop would set them anyway); every event then leaves out those the
        span carries with the same value.
        """
        carried = opened.attributes
        if (
            opened.unit == "notify"
            and carried.get("chimeway.count") == 1
            and "chimeway.delivery_id" not in carried
        ):
            identity = {key: value for key, value in attributes.items() if key in _IDENTITY}
            opened.span.set_attributes(identity)
            carried.update(identity)
        return {
            key: value
            for key, value in attributes.items()
            if key not in _IDENTITY or carried.get(key) != value
        }
