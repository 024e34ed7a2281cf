"""A channel that sends one email per delivery over SMTP (stdlib :mod:`smtplib`).

Theory of operation
-------------------
One ``send`` opens a connection, optionally upgrades it with STARTTLS and
logs in, then walks MAIL FROM → RCPT TO → DATA by hand, so that every reply
is judged at the stage it came from:

- 2xx → :class:`~chimeway_core.outcomes.Sent`;
- 4xx at any stage → ``TemporaryFailure``;
- at RCPT or DATA, a 5.1.x enhanced code (or 550/551/553 without an enhanced
  code) → ``Bounced``: the mailbox does not exist or refuses mail;
- any other 5xx → ``PermanentFailure``;
- connection refused, timeout or drop before DATA → ``TemporaryFailure``:
  nothing was sent;
- a drop or timeout once DATA was sent → raises
  :class:`~chimeway_core.errors.OutcomeUnknownError`;
- the channel's ``timeout`` passed → the same as a drop at that stage:
  it is a deadline for the whole send (every round trip, STARTTLS
  included), enforced by :class:`~chimeway_core._deadline.Deadline`,
  so a server that drips one byte per socket timeout cannot hold a worker;
- a recipient that is not one plain ASCII address (non-ASCII, a list, a
  display name, malformed) → ``PermanentFailure`` before connecting: no
  retry can fix it, and a list must never be half-sent.

SMTP has no idempotency keys, so the default guarantee is at-most-once: an
unknown outcome is never sent again. The message still carries the key, in
``X-Idempotency-Key`` and in a ``Message-ID`` derived from it, so a receiving
system that dedupes on Message-ID can recognise a resend.

The server's reply text often quotes the recipient address, so results and
errors keep only the numeric code, the enhanced status code and a queue id.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import smtplib
import socket
import ssl
from collections.abc import Callable
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from email.utils import formatdate
from typing import Any, Final

from chimeway_core._deadline import Deadline
from chimeway_core.channels.base import (
    DeliveryGuarantee,
    check_header_key,
    header_key_problem,
    positive_seconds,
)
from chimeway_core.errors import InvalidDeliveryError, OutcomeUnknownError
from chimeway_core.outcomes import (
    Bounced,
    ChannelResult,
    ErrorClass,
    PermanentFailure,
    Sent,
    TemporaryFailure,
)
from chimeway_core.records import Delivery

__all__ = ["SMTPChannel", "message_id_for"]

_ENHANCED: Final = re.compile(r"\s*([245]\.\d{1,3}\.\d{1,3})(?![\d.])")
_QUEUE_ID: Final = re.compile(r"queued as ([A-Za-z0-9._-]{1,64})")
_MAILBOX_CODES: Final = frozenset({550, 551, 553})
#: One plain ASCII addr-spec (RFC 5321's dot-atom local part, a host name):
#: no display name, no list, no quoting, no address literal.
_ATOM: Final = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LABEL: Final = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_MAILBOX: Final = re.compile(rf"(?P<local>{_ATOM}(?:\.{_ATOM})*)@{_LABEL}(?:\.{_LABEL})*")
_MAX_LOCAL: Final = 64
_MAX_PATH: Final = 254
#: Round trips of one send (greeting, EHLO, STARTTLS, EHLO, AUTH x2, MAIL, RCPT,
#: DATA, end of data): ``timeout`` bounds each, so a send can take this many times it.
_ROUND_TRIPS: Final = 10


def message_id_for(idempotency_key: str, domain: str) -> str:
    """A ``Message-ID`` that is the same for every send with the same key."""
    digest = hashlib.sha256(idempotency_key.encode()).hexdigest()[:40]
    return f"<{digest}.chimeway@{domain}>"


class _WatchedSMTP(smtplib.SMTP):
    """smtplib's client, each socket of which its send's deadline can cut."""

    def __init__(self, deadline: Deadline, host: str, port: int, **options: Any) -> None:
        self._deadline = deadline  # before connecting, which the constructor does
        super().__init__(host, port, **options)

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        sock: socket.socket = super()._get_socket(host, port, timeout)  # type: ignore[misc]
        self._deadline.watch(sock)
        return sock


def _recipient_problem(recipient: str) -> str | None:
    """Why ``recipient`` is not one mailbox this channel can send to, or ``None``.

    Checked before connecting: a server would refuse it (or, for a list,
    accept part of it), and retrying cannot make it valid.
    """
    if not recipient.isascii():
        return "recipient is not an ASCII address (SMTPUTF8 is not supported)"
    match = _MAILBOX.fullmatch(recipient)
    if match is None:
        return "recipient is not a single email address"
    if len(match["local"]) > _MAX_LOCAL or len(recipient) > _MAX_PATH:
        return "recipient address is too long"
    return None


def _reply_text(reply: bytes | str) -> str:
    return reply.decode("utf-8", "replace") if isinstance(reply, bytes) else reply


def _classify_reply(code: int, reply: bytes | str, stage: str, *, mailbox: bool) -> ChannelResult:
    text = _reply_text(reply)
    enhanced_match = _ENHANCED.match(text)
    enhanced = enhanced_match.group(1) if enhanced_match else None
    response: dict[str, object] = {"code": code, "stage": stage}
    if enhanced is not None:
        response["enhanced_status"] = enhanced
    label = f"SMTP {code}{f' {enhanced}' if enhanced else ''} at {stage}"
    if 200 <= code < 300:
        if queue_id := _QUEUE_ID.search(text):
            response["queue_id"] = queue_id.group(1)
        return Sent(provider_response=response)
    if 400 <= code < 500:
        return TemporaryFailure(label, provider_response=response)
    is_mailbox_error = (
        enhanced.startswith("5.1.") if enhanced is not None else code in _MAILBOX_CODES
    )
    if mailbox and is_mailbox_error:
        return Bounced(label, provider_response=response)
    return PermanentFailure(label, provider_response=response)


class SMTPChannel:
    """Sends ``delivery.recipient`` one email built by ``subject_for`` and ``body_for``.

    ``timeout`` is the socket timeout of each SMTP round trip; the channel's
    :attr:`timeout` (ten of them) is the deadline of a whole send, past which
    its connection is cut. ``starttls=True``
    upgrades the connection (with ``ssl_context`` or the default context)
    before logging in with ``username``/``password``, if given. Guarantee:
    at-most-once by default, see the module docstring.
    """

    exception_class = ErrorClass.TEMPORARY

    def __init__(
        self,
        host: str,
        port: int = 25,
        *,
        sender: str,
        subject_for: Callable[[Delivery], str],
        body_for: Callable[[Delivery], str],
        timeout: float = 30.0,
        starttls: bool = False,
        ssl_context: ssl.SSLContext | None = None,
        username: str | None = None,
        password: str | None = None,
        local_hostname: str | None = None,
        message_id_domain: str | None = None,
        guarantee: DeliveryGuarantee = DeliveryGuarantee.AT_MOST_ONCE,
    ) -> None:
        self.socket_timeout = positive_seconds("timeout", timeout)
        for name, text in (("host", host), ("sender", sender)):
            if not isinstance(text, str) or not text:
                raise ValueError(f"{name} must be a non-empty str, got {text!r}")
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            raise ValueError(f"port must be an int from 1 to 65535, got {port!r}")
        for name, function in (("subject_for", subject_for), ("body_for", body_for)):
            if not callable(function):
                raise TypeError(f"{name} must be callable, not {type(function).__name__}")
        if (username is None) != (password is None):
            raise ValueError("username and password must be given together")
        self.host = host
        self.port = port
        self.sender = sender
        self.subject_for = subject_for
        self.body_for = body_for
        self.timeout = self.socket_timeout * _ROUND_TRIPS
        self.starttls = starttls
        self.ssl_context = ssl_context
        self.username = username
        self._password = password
        self.local_hostname = local_hostname
        self.message_id_domain = message_id_domain or (
            sender.rpartition("@")[2] or "chimeway.invalid"
        )
        self.guarantee = DeliveryGuarantee(guarantee)

    def __repr__(self) -> str:
        return f"SMTPChannel({self.host!r}, {self.port}, guarantee={self.guarantee.value})"

    def build_message(self, delivery: Delivery, idempotency_key: str) -> EmailMessage:
        """The email ``send`` would transmit for ``delivery``."""
        message = EmailMessage(policy=SMTP_POLICY)
        message["From"] = self.sender
        message["To"] = delivery.recipient
        message["Subject"] = self.subject_for(delivery)
        message["Date"] = formatdate(usegmt=True)
        message["Message-ID"] = message_id_for(idempotency_key, self.message_id_domain)
        message["X-Idempotency-Key"] = idempotency_key
        message.set_content(self.body_for(delivery))
        return message

    def check_delivery(self, delivery: Delivery) -> None:
        """Refuse, at ``notify()``, a delivery no SMTP server could take.

        A recipient that is not one plain ASCII address (a list, a display
        name, non-ASCII), or an idempotency key that cannot be a header value
        (it is sent as ``X-Idempotency-Key`` and in the ``Message-ID``):
        :class:`~chimeway_core.errors.InvalidDeliveryError` naming the field,
        never its value.
        """
        if (problem := _recipient_problem(delivery.recipient)) is not None:
            raise InvalidDeliveryError("recipient", problem.removeprefix("recipient "))
        check_header_key(delivery)

    def send(self, delivery: Delivery, idempotency_key: str) -> ChannelResult:
        """Send one email; see the module docstring for how replies are classified."""
        if (problem := _recipient_problem(delivery.recipient)) is not None:
            return PermanentFailure(problem)
        if (problem := header_key_problem(idempotency_key)) is not None:
            return PermanentFailure(f"idempotency key {problem}")
        try:
            data = self.build_message(delivery, idempotency_key).as_bytes()
        except (ValueError, TypeError) as error:
            # e.g. a subject with a newline: a header injection attempt or bad data.
            return PermanentFailure(f"cannot build the message ({type(error).__name__})")
        with Deadline(self.timeout) as deadline:
            try:
                connection = _WatchedSMTP(
                    deadline,
                    self.host,
                    self.port,
                    local_hostname=self.local_hostname,
                    timeout=self.socket_timeout,
                )
            except smtplib.SMTPConnectError as error:
                return _classify_reply(error.smtp_code, error.smtp_error, "connect", mailbox=False)
            except OSError as error:
                return TemporaryFailure(self._failed("SMTP connection failed", error, deadline))
            try:
                return self._transact(connection, delivery.recipient, data, deadline)
            finally:
                if not deadline.expired:
                    with contextlib.suppress(smtplib.SMTPException, OSError):
                        connection.quit()
                connection.close()

    def _failed(self, what: str, error: BaseException, deadline: Deadline) -> str:
        if deadline.expired:
            return f"{what}: not complete within the channel's timeout of {self.timeout:g} s"
        return f"{what} ({type(error).__name__})"

    def _transact(
        self, connection: smtplib.SMTP, recipient: str, data: bytes, deadline: Deadline
    ) -> ChannelResult:
        try:
            connection.ehlo_or_helo_if_needed()
            if self.starttls:
                connection.starttls(context=self.ssl_context)
                connection.ehlo()
            if self.username is not None and self._password is not None:
                connection.login(self.username, self._password)
            code, reply = connection.mail(self.sender)
            if code != 250:
                return _classify_reply(code, reply, "mail", mailbox=False)
            code, reply = connection.rcpt(recipient)
            if code not in {250, 251}:
                return _classify_reply(code, reply, "rcpt", mailbox=True)
        except smtplib.SMTPNotSupportedError:
            return PermanentFailure("SMTP server does not support a required extension")
        except smtplib.SMTPResponseException as error:
            return _classify_reply(error.smtp_code, error.smtp_error, "session", mailbox=False)
        except (smtplib.SMTPException, OSError) as error:
            return TemporaryFailure(
                self._failed("SMTP session failed before DATA", error, deadline)
            )
        try:
            code, reply = connection.data(data)
        except smtplib.SMTPDataError as error:
            return _classify_reply(error.smtp_code, error.smtp_error, "data", mailbox=True)
        except (smtplib.SMTPException, OSError) as error:
            # DATA went out: the server may have queued the message before dropping.
            raise OutcomeUnknownError(
                self._failed("SMTP connection lost after DATA", error, deadline)
            ) from error
        return _classify_reply(code, reply, "data", mailbox=True)
