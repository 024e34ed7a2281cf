"""A channel that POSTs the delivery payload as JSON to an HTTP endpoint.

Theory of operation
-------------------
One ``send`` is one logical POST, possibly over a few redirect hops. For each
hop the host is resolved, **every** resolved address is checked against the
:class:`~chimeway_core.channels._destinations.DestinationPolicy`, and the
request is sent to the checked IP itself (the URL is rewritten to the IP; the
``Host`` header and, for HTTPS, the TLS server name keep the original host, so
certificates are still verified against it). Redirects are followed by hand so
that each hop is checked the same way before any connection is made.

What the answer means:

========================================  ==========================================
2xx                                       :class:`~chimeway_core.outcomes.Sent`
408, 429, 5xx                             ``TemporaryFailure`` (``Retry-After`` kept)
301, 302, 307, 308                        followed (POST kept), up to ``max_redirects``
other 3xx and 4xx                         ``PermanentFailure``
refused destination or port (SSRF)        ``PermanentFailure``, nothing connected
DNS failure, connect error or timeout     ``TemporaryFailure``: nothing was sent
read/write timeout, dropped connection    raises :class:`~chimeway_core.errors.OutcomeUnknownError`
``timeout`` passed before an answer       raises ``OutcomeUnknownError`` (``TemporaryFailure``
                                          if no request had left)
========================================  ==========================================

``timeout`` is a deadline for the whole exchange — connecting, TLS, writing,
every byte of the answer's head, every redirect hop — enforced by
:class:`~chimeway_core._deadline.Deadline`: per-operation timeouts
alone let an endpoint that drips one byte per read timeout hold a worker past
its lease. For that, a send never reuses a pooled connection (each request
says ``Connection: close``), so every socket it uses is one it opened.

Nothing the provider says is echoed beyond the status code and a short,
sanitised message id header; the payload, the recipient and the URL (which
may be built from the recipient) never appear in a result or an error.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import math
import string
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Final

from chimeway_core._deadline import Deadline
from chimeway_core.channels._destinations import (
    DEFAULT_PORTS,
    DestinationPolicy,
    IPNetwork,
    Resolver,
    system_resolver,
)
from chimeway_core.channels.base import (
    DeliveryGuarantee,
    check_header_key,
    header_key_problem,
    positive_seconds,
)
from chimeway_core.errors import (
    MissingExtraError,
    OutcomeUnknownError,
    UnsafeDestinationError,
)
from chimeway_core.outcomes import (
    ChannelResult,
    ErrorClass,
    PermanentFailure,
    Sent,
    TemporaryFailure,
)
from chimeway_core.records import Delivery

if TYPE_CHECKING:
    import httpx

__all__ = ["WebhookChannel", "parse_retry_after"]

_FOLLOWED_REDIRECTS: Final = frozenset({301, 302, 307, 308})
_TEMPORARY_STATUSES: Final = frozenset({408, 429})
_DEFAULT_PORTS: Final = {"http": 80, "https": 443}
_MAX_MESSAGE_ID: Final = 128
_SAFE_ID_CHARS: Final = frozenset(string.ascii_letters + string.digits + "-_.:@/+=<>")
#: What the ``Idempotency-Key`` header can carry: visible ASCII, inner spaces
#: (RFC 9110 field-value, less obs-text, which httpx cannot encode from a str).


_sending = threading.local()


class _OriginOnly(logging.Filter):
    """On the ``httpx`` logger, shows a URL logged during a webhook send as its origin only.

    httpx logs every request's URL at INFO; a webhook URL's userinfo, path
    and query often carry a token, or the recipient.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(_sending, "active", False) and isinstance(record.args, tuple):
            record.args = tuple(_origin_only(arg) for arg in record.args)
        return True


def _origin_only(value: object) -> object:
    import httpx  # noqa: PLC0415 - see send()

    if not isinstance(value, httpx.URL):
        return value
    port = f":{value.port}" if value.port is not None else ""
    return f"{value.scheme}://{value.host}{port}/[redacted]"


@contextlib.contextmanager
def _redacted_logs() -> Iterator[None]:
    _sending.active = True
    try:
        yield
    finally:
        _sending.active = False


def _install_log_filter() -> None:
    logger = logging.getLogger("httpx")
    if not any(isinstance(f, _OriginOnly) for f in logger.filters):
        logger.addFilter(_OriginOnly())


def _httpx() -> object:
    try:
        return importlib.import_module("httpx")
    except ImportError:
        raise MissingExtraError("webhook", feature="WebhookChannel (httpx)") from None


def _check_static_url(raw: str) -> None:
    """Raise ValueError unless ``raw`` is an http(s) URL with a host (never echoing it)."""
    import httpx  # noqa: PLC0415 - the webhook extra is optional; _httpx() checked it

    # The URL is not repeated in the message: it may hold a token.
    try:
        url = httpx.URL(raw)
    except httpx.InvalidURL:
        raise ValueError("url is not a valid URL") from None
    if url.scheme not in _DEFAULT_PORTS or not url.host:
        raise ValueError("url must be an http:// or https:// URL with a host")


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP-date).

    ``None`` when absent or unparseable; a date in the past gives ``0.0``.
    """
    if value is None:
        return None
    text = value.strip()
    if text.isdigit():
        seconds = float(text)
        return seconds if math.isfinite(seconds) else None
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # an HTTP-date is GMT by definition
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())


def _safe_message_id(value: str | None) -> str | None:
    if not value:
        return None
    cleaned = "".join(c for c in value[:_MAX_MESSAGE_ID] if c in _SAFE_ID_CHARS)
    return cleaned or None


class WebhookChannel:
    """POSTs the delivery's payload as JSON with an ``Idempotency-Key`` header.

    Guarantee: at-least-once by default — right for a receiver that dedupes on
    ``Idempotency-Key``; pass ``AT_MOST_ONCE`` for one that does not.

    ``url`` is a fixed URL or ``url_for(delivery) -> str``. Destinations are
    refused unless public, see :class:`DestinationPolicy`: ``allow_private``
    and ``allow_networks`` open private ranges (tests use loopback this way).
    Every hop's port must be one of ``allow_ports`` (80 and 443 unless given
    others), whatever its address. ``resolver(host, port)`` replaces DNS. ``client`` is an
    :class:`httpx.Client` to reuse (connection pooling, TLS settings); the
    channel never closes it and never lets it follow redirects. Without one, a
    short-lived client is made per ``send``, ignoring proxy environment
    variables. ``headers`` are sent on every hop to the original origin and
    dropped on a cross-origin redirect, since they often carry credentials.

    ``connect_timeout``, ``write_timeout`` and ``read_timeout`` are httpx's
    per-operation timeouts. ``timeout`` is the deadline of a whole send,
    redirects included (by default the per-operation timeouts of every hop
    added up); past it the send is cut off, see the module docstring.
    """

    exception_class = ErrorClass.TEMPORARY

    def __init__(
        self,
        url: str | Callable[[Delivery], str],
        *,
        connect_timeout: float = 5.0,
        read_timeout: float = 10.0,
        write_timeout: float = 10.0,
        timeout: float | None = None,
        headers: Mapping[str, str] | None = None,
        allow_private: bool = False,
        allow_networks: Iterable[str | IPNetwork] = (),
        allow_ports: Iterable[int] = DEFAULT_PORTS,
        resolver: Resolver | None = None,
        client: httpx.Client | None = None,
        max_redirects: int = 3,
        message_id_headers: Sequence[str] = ("X-Message-Id", "X-Request-Id"),
        guarantee: DeliveryGuarantee = DeliveryGuarantee.AT_LEAST_ONCE,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        _httpx()  # fail at construction, not at the first delivery
        _install_log_filter()
        self.connect_timeout = positive_seconds("connect_timeout", connect_timeout)
        self.read_timeout = positive_seconds("read_timeout", read_timeout)
        self.write_timeout = positive_seconds("write_timeout", write_timeout)
        if isinstance(max_redirects, bool) or not isinstance(max_redirects, int):
            raise TypeError(f"max_redirects must be an int, not {type(max_redirects).__name__}")
        if max_redirects < 0:
            raise ValueError(f"max_redirects must be >= 0, got {max_redirects!r}")
        if isinstance(url, str):
            _check_static_url(url)
        elif not callable(url):
            raise TypeError(f"url must be a str or a callable, not {type(url).__name__}")
        self._url = url
        if headers is not None and not (
            isinstance(headers, Mapping)
            and all(isinstance(k, str) and isinstance(v, str) for k, v in headers.items())
        ):
            raise TypeError("headers must be a mapping of str names to str values")
        self.headers = dict(headers or {})
        self.policy = DestinationPolicy(allow_private, tuple(allow_networks), allow_ports)
        self.resolver: Resolver = resolver if resolver is not None else system_resolver
        self.client = client
        self.max_redirects = max_redirects
        self.message_id_headers = tuple(message_id_headers)
        self.guarantee = DeliveryGuarantee(guarantee)
        self._clock = clock if clock is not None else (lambda: datetime.now(UTC))
        per_hop = self.connect_timeout + self.write_timeout + self.read_timeout
        self.timeout = (
            per_hop * (max_redirects + 1)
            if timeout is None
            else positive_seconds("timeout", timeout)
        )

    def __repr__(self) -> str:
        # Never the URL: it may embed a token or be built from the recipient.
        return f"WebhookChannel(guarantee={self.guarantee.value}, policy={self.policy!r})"

    def check_delivery(self, delivery: Delivery) -> None:
        """Refuse, at ``notify()``, a delivery whose idempotency key cannot be a header value.

        The key is sent as the ``Idempotency-Key`` header: printable ASCII
        with no leading or trailing space (the ledger holds it to 255
        characters). Raises :class:`~chimeway_core.errors.InvalidDeliveryError`
        on ``idempotency_key``, without repeating the key.
        """
        check_header_key(delivery)

    def send(self, delivery: Delivery, idempotency_key: str) -> ChannelResult:
        """POST the payload once (following allowed redirects) and classify the answer."""
        import httpx  # noqa: PLC0415 - the webhook extra is optional; checked in __init__

        if (problem := header_key_problem(idempotency_key)) is not None:
            # Written before notify() checked it: nothing can be sent, ever.
            return PermanentFailure(f"idempotency key {problem}")

        try:
            body = json.dumps(delivery.payload, allow_nan=False, separators=(",", ":")).encode()
        except (TypeError, ValueError) as error:
            return PermanentFailure(f"payload is not JSON-serialisable ({type(error).__name__})")
        raw_url: object = self._url(delivery) if callable(self._url) else self._url
        if not isinstance(raw_url, str):
            # A programming error: no retry fixes it, and the value (often a URL
            # with its token) must not reach the attempt's error.
            return PermanentFailure(f"url_for returned a {type(raw_url).__name__}, not a str")
        try:
            url = httpx.URL(raw_url)
        except httpx.InvalidURL:
            return PermanentFailure("invalid webhook URL")
        with Deadline(self.timeout) as deadline:
            if self.client is not None:
                return self._post(self.client, url, body, idempotency_key, deadline)
            with httpx.Client(follow_redirects=False, trust_env=False) as client:
                return self._post(client, url, body, idempotency_key, deadline)

    def _post(
        self,
        client: httpx.Client,
        url: httpx.URL,
        body: bytes,
        idempotency_key: str,
        deadline: Deadline,
    ) -> ChannelResult:
        import httpx  # noqa: PLC0415 - see send()

        origin = (url.scheme, url.host, url.port)
        hops = 0
        while True:
            same_origin = (url.scheme, url.host, url.port) == origin
            if deadline.expired:
                return TemporaryFailure(
                    f"redirects used up the channel's timeout of {self.timeout:g} s"
                )
            outcome = self._post_once(client, url, body, idempotency_key, deadline, same_origin)
            if not isinstance(outcome, httpx.Response):
                return outcome
            status, location = outcome.status_code, outcome.headers.get("location")
            if status not in _FOLLOWED_REDIRECTS:
                return self._classify(status, outcome.headers, hops)
            if location is None:
                return PermanentFailure(f"HTTP {status} redirect without a Location header")
            if hops >= self.max_redirects:
                return PermanentFailure(
                    f"more than {self.max_redirects} redirects",
                    provider_response={"status": status},
                )
            try:
                target = url.join(location)
            except Exception:  # any malformed Location is the provider's fault
                return PermanentFailure(f"HTTP {status} redirect to an invalid Location")
            if url.scheme == "https" and target.scheme == "http":
                return PermanentFailure(f"HTTP {status} redirect from https to http refused")
            url = target
            hops += 1

    def _post_once(
        self,
        client: httpx.Client,
        url: httpx.URL,
        body: bytes,
        idempotency_key: str,
        deadline: Deadline,
        same_origin: bool,
    ) -> ChannelResult | httpx.Response:
        import httpx  # noqa: PLC0415 - see send()

        if url.scheme not in _DEFAULT_PORTS:
            return PermanentFailure("webhook URL scheme must be http or https")
        if not url.host:
            return PermanentFailure("webhook URL has no host")
        port = url.port if url.port is not None else _DEFAULT_PORTS[url.scheme]
        try:
            self.policy.check_port(url.host, port)
            address = self.policy.resolve(url.host, port, self.resolver)
        except UnsafeDestinationError as error:
            return PermanentFailure(str(error), provider_response={"refused": error.category})
        except OSError as error:
            return TemporaryFailure(f"could not resolve the host ({type(error).__name__})")

        # Credentials go to the first origin only: ours (``headers``) and the
        # client's (its headers and auth). The client's cookie jar is never
        # used: it is keyed by the dialled IP, which many origins may share.
        headers: dict[str, str] = {}
        if same_origin:
            headers.update(client.headers)
            headers.update(self.headers)
        headers.update(
            {
                "Host": url.netloc.decode("ascii"),
                "Content-Type": "application/json",
                "Idempotency-Key": idempotency_key,
                "User-Agent": "chimeway",
                "Connection": "close",
            }
        )
        timeout = httpx.Timeout(
            connect=deadline.clamp(self.connect_timeout),
            read=deadline.clamp(self.read_timeout),
            write=deadline.clamp(self.write_timeout),
            pool=deadline.clamp(self.connect_timeout),
        )
        extensions: dict[str, object] = {"timeout": timeout.as_dict(), "trace": deadline.trace}
        if url.scheme == "https":
            extensions["sni_hostname"] = url.host
        request = httpx.Request(
            "POST",
            url.copy_with(host=str(address)),
            content=body,
            headers=headers,
            extensions=extensions,
        )
        try:
            with _redacted_logs():
                response = client.send(
                    request,
                    follow_redirects=False,
                    stream=True,
                    auth=httpx.USE_CLIENT_DEFAULT if same_origin else None,
                )
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as error:
            return TemporaryFailure(f"connection failed, nothing was sent ({type(error).__name__})")
        except httpx.UnsupportedProtocol:
            return PermanentFailure("webhook URL protocol is not supported")
        except httpx.TransportError as error:
            # The request (or part of it) left; whether the provider acted is unknown.
            if deadline.expired:
                raise OutcomeUnknownError(
                    f"webhook answer not complete within the channel's timeout of "
                    f"{self.timeout:g} s ({type(error).__name__})"
                ) from error
            raise OutcomeUnknownError(
                f"webhook request sent but no response received ({type(error).__name__})"
            ) from error
        # Only the status line and headers matter; the body is never read or echoed.
        response.close()
        return response

    def _classify(self, status: int, headers: httpx.Headers, hops: int) -> ChannelResult:
        response: dict[str, object] = {"status": status}
        if hops:
            response["redirects"] = hops
        if 200 <= status < 300:
            for name in self.message_id_headers:
                message_id = _safe_message_id(headers.get(name))
                if message_id is not None:
                    response["message_id"] = message_id
                    break
            return Sent(provider_response=response)
        if status in _TEMPORARY_STATUSES or 500 <= status < 600:
            retry_after = parse_retry_after(headers.get("retry-after"), self._clock())
            if retry_after is not None:
                response["retry_after"] = retry_after
            return TemporaryFailure(f"HTTP {status}", retry_after, provider_response=response)
        return PermanentFailure(f"HTTP {status}", provider_response=response)
