"""SMTPChannel against a real aiosmtpd server on 127.0.0.1."""

from __future__ import annotations

import contextlib
import email
import socket
import threading
import time
from collections.abc import Callable, Iterator
from email.policy import default as default_policy
from pathlib import Path

import pytest

from chimeway_core import Chimeway, SQLStore
from chimeway_core.channels import DeliveryGuarantee, SMTPChannel
from chimeway_core.channels.base import header_key_problem
from chimeway_core.channels.smtp import message_id_for
from chimeway_core.errors import InvalidDeliveryError, OutcomeUnknownError
from chimeway_core.memory import MemoryBackend
from chimeway_core.outcomes import Bounced, PermanentFailure, Sent, TemporaryFailure
from chimeway_core.records import Delivery

from .conftest import SMTPTestServer, free_port, make_delivery

RECIPIENT = "alice@example.com"


def channel(port: int, **kwargs: object) -> SMTPChannel:
    """An SMTP channel to loopback with short timeouts."""
    options: dict[str, object] = {
        "sender": "noreply@chimeway.test",
        "subject_for": lambda d: f"Hello ({d.notification_key})",
        "body_for": lambda d: f"Your order {d.payload['order']} shipped.",
        "timeout": 0.5,
    }
    options.update(kwargs)
    return SMTPChannel("127.0.0.1", port, **options)  # type: ignore[arg-type]


def delivery(recipient: str = RECIPIENT) -> Delivery:
    """A delivery to ``recipient`` with an order payload."""
    return make_delivery(payload={"order": 42}, recipient=recipient)


def test_accepted_message_is_sent_with_idempotency_headers(smtp_server: SMTPTestServer) -> None:
    """A 250 is Sent, and the message carries the key and a Message-ID derived from it."""
    result = channel(smtp_server.port).send(delivery(), "idem-123")
    expected = Sent(
        provider_response={
            "code": 250,
            "stage": "data",
            "enhanced_status": "2.0.0",
            "queue_id": "ABC123",
        }
    )
    assert expected == result
    (raw,) = smtp_server.handler.messages
    message = email.message_from_bytes(raw, policy=default_policy)
    assert ("idem-123", message_id_for("idem-123", "chimeway.test"), RECIPIENT) == (
        message["X-Idempotency-Key"],
        message["Message-ID"],
        message["To"],
    )
    assert "Your order 42 shipped." == message.get_content().strip()


def test_message_id_is_stable_per_key() -> None:
    """The same key gives the same Message-ID; another key another one."""
    assert message_id_for("a", "x.test") == message_id_for("a", "x.test")
    assert message_id_for("a", "x.test") != message_id_for("b", "x.test")


@pytest.mark.parametrize(
    "reply", ["421 4.3.2 Service shutting down", "451 4.7.1 Greylisted, try later"]
)
def test_4xx_recipient_reply_is_temporary(smtp_server: SMTPTestServer, reply: str) -> None:
    """A 4xx at RCPT is a temporary failure."""
    smtp_server.handler.rcpt_replies[RECIPIENT] = reply
    result = channel(smtp_server.port).send(delivery(), "k")
    assert isinstance(result, TemporaryFailure)
    assert int(reply[:3]) == result.provider_response["code"]


def test_554_is_permanent(smtp_server: SMTPTestServer) -> None:
    """A 554 (transaction failed) is a permanent failure, not a bounce."""
    smtp_server.handler.rcpt_replies[RECIPIENT] = "554 Transaction failed"
    result = channel(smtp_server.port).send(delivery(), "k")
    assert (
        PermanentFailure("SMTP 554 at rcpt", provider_response={"code": 554, "stage": "rcpt"})
        == result
    )


@pytest.mark.parametrize(
    ("reply", "enhanced"),
    [
        ("550 No such user here", None),
        ("550 5.1.1 User unknown", "5.1.1"),
        ("553 Mailbox name not allowed", None),
        ("551 User not local", None),
    ],
)
def test_mailbox_errors_bounce(
    smtp_server: SMTPTestServer, reply: str, enhanced: str | None
) -> None:
    """550-class mailbox replies at RCPT are bounces."""
    smtp_server.handler.rcpt_replies[RECIPIENT] = reply
    result = channel(smtp_server.port).send(delivery(), "k")
    assert isinstance(result, Bounced)
    expected = {"code": int(reply[:3]), "stage": "rcpt"}
    if enhanced:
        expected["enhanced_status"] = enhanced
    assert expected == dict(result.provider_response)


def test_550_with_policy_enhanced_code_is_permanent(smtp_server: SMTPTestServer) -> None:
    """A 550 whose enhanced code is not 5.1.x (a policy block) is permanent, not a bounce."""
    smtp_server.handler.rcpt_replies[RECIPIENT] = "550 5.7.1 Message rejected as spam"
    result = channel(smtp_server.port).send(delivery(), "k")
    assert isinstance(result, PermanentFailure)


def test_data_rejection_is_classified(smtp_server: SMTPTestServer) -> None:
    """A 5xx at the end of DATA is classified like any reply."""
    smtp_server.handler.data_reply = "552 5.3.4 Message too big"
    result = channel(smtp_server.port).send(delivery(), "k")
    assert isinstance(result, PermanentFailure)
    assert "data" == result.provider_response["stage"]


def test_refused_connection_is_temporary() -> None:
    """Connection refused is a temporary failure: nothing was sent."""
    result = channel(free_port()).send(delivery(), "k")
    assert TemporaryFailure("SMTP connection failed (ConnectionRefusedError)") == result


def test_stall_after_data_is_outcome_unknown(smtp_server: SMTPTestServer) -> None:
    """A server that takes the message and never answers makes the outcome unknown."""
    smtp_server.handler.data_action = "sleep"
    with pytest.raises(OutcomeUnknownError, match="after DATA"):
        channel(smtp_server.port, timeout=0.2).send(delivery(), "k")
    assert 1 == len(smtp_server.handler.messages)


def test_disconnect_after_data_is_outcome_unknown(smtp_server: SMTPTestServer) -> None:
    """A server that drops the connection once it has the message makes the outcome unknown."""
    smtp_server.handler.data_action = "close"
    with pytest.raises(OutcomeUnknownError, match="SMTPServerDisconnected"):
        channel(smtp_server.port).send(delivery(), "k")


def test_header_injection_in_recipient_is_refused(smtp_server: SMTPTestServer) -> None:
    """A recipient with a newline fails permanently before connecting."""
    result = channel(smtp_server.port).send(delivery("a@b.test\r\nBcc: x@y.test"), "k")
    assert PermanentFailure("recipient is not a single email address") == result
    assert [] == smtp_server.handler.messages


def test_defaults() -> None:
    """SMTP is at-most-once by default and its timeout bounds every round trip."""
    smtp = channel(25, timeout=2.0)
    assert (DeliveryGuarantee.AT_MOST_ONCE, 20.0) == (smtp.guarantee, smtp.timeout)


@pytest.mark.parametrize(
    ("arguments", "error", "message"),
    [
        ({"host": ""}, ValueError, "host must be a non-empty str"),
        ({"port": 0}, ValueError, "port must be an int from 1 to 65535"),
        ({"port": "25"}, ValueError, "port must be an int"),
        ({"sender": ""}, ValueError, "sender must be a non-empty str"),
        ({"subject_for": "Welcome"}, TypeError, "subject_for must be callable"),
        ({"body_for": None}, TypeError, "body_for must be callable"),
        ({"timeout": "30"}, TypeError, "timeout must be a number"),
    ],
)
def test_a_wrong_argument_is_named(
    arguments: dict[str, object], error: type[Exception], message: str
) -> None:
    """SMTPChannel refuses a wrong host, port, sender, template or timeout at construction."""
    given: dict[str, object] = {
        "host": "smtp.example.com",
        "port": 587,
        "sender": "noreply@example.com",
        "subject_for": lambda _d: "Hi",
        "body_for": lambda _d: "Hello",
        **arguments,
    }
    with pytest.raises(error, match=message):
        SMTPChannel(**given)  # type: ignore[arg-type]


REFUSED_RECIPIENTS = {
    "jörg@example.com": "recipient is not an ASCII address (SMTPUTF8 is not supported)",
    "alice@exämple.com": "recipient is not an ASCII address (SMTPUTF8 is not supported)",
    "alice@example.com, bob@example.com": "recipient is not a single email address",
    "alice@example.com,bob@example.com": "recipient is not a single email address",
    "alice@example.com;bob@example.com": "recipient is not a single email address",
    "Alice <alice@example.com>": "recipient is not a single email address",
    "<alice@example.com>": "recipient is not a single email address",
    '"alice smith"@example.com': "recipient is not a single email address",
    "alice@[127.0.0.1]": "recipient is not a single email address",
    "alice": "recipient is not a single email address",
    "@example.com": "recipient is not a single email address",
    "alice@": "recipient is not a single email address",
    "alice@@example.com": "recipient is not a single email address",
    "alice..smith@example.com": "recipient is not a single email address",
    "alice@example..com": "recipient is not a single email address",
    "alice@-example.com": "recipient is not a single email address",
    "alice smith@example.com": "recipient is not a single email address",
    "alice@example.com\nBcc: eve@example.com": "recipient is not a single email address",
    f"{'a' * 65}@example.com": "recipient address is too long",
    f"alice@{'.'.join(c * 60 for c in 'abcde')}.com": "recipient address is too long",
}


@pytest.mark.parametrize(("recipient", "problem"), REFUSED_RECIPIENTS.items())
def test_a_recipient_no_server_could_take_fails_permanently_before_connecting(
    recipient: str, problem: str
) -> None:
    """Not one plain ASCII address: permanent before any connection (nothing listens here)."""
    result = channel(free_port()).send(delivery(recipient), "k")
    assert PermanentFailure(problem) == result
    assert recipient not in repr(result)


def test_a_list_of_recipients_is_never_half_sent(smtp_server: SMTPTestServer) -> None:
    """A comma-separated recipient reaches no RCPT TO and sends no message."""
    result = channel(smtp_server.port).send(delivery("alice@example.com, bob@example.com"), "k")
    assert (PermanentFailure("recipient is not a single email address"), []) == (
        result,
        smtp_server.handler.messages,
    )


@pytest.mark.parametrize(
    "recipient",
    ["a.b+tag@sub.example.co.uk", "o'brien@example.ie", "x@localhost", f"{'a' * 64}@example.com"],
)
def test_plain_addresses_are_sent(smtp_server: SMTPTestServer, recipient: str) -> None:
    """Ordinary addresses pass the check and reach the server (the control case)."""
    result = channel(smtp_server.port).send(delivery(recipient), "k")
    assert isinstance(result, Sent)
    assert 1 == len(smtp_server.handler.messages)


def test_header_injection_in_the_subject_is_refused(smtp_server: SMTPTestServer) -> None:
    """A subject with a newline fails permanently before connecting; nothing is sent."""
    smtp = channel(smtp_server.port, subject_for=lambda d: "Hi\r\nBcc: eve@example.com")
    result = smtp.send(delivery(), "k")
    assert (PermanentFailure("cannot build the message (ValueError)"), []) == (
        result,
        smtp_server.handler.messages,
    )


#: Slack for a loaded machine: a cut-off send ends well within it, a dripped one
#: (15 s) never does.
DEADLINE_SLACK = 5.0


@pytest.fixture
def dripping_smtp() -> Iterator[Callable[[str], int]]:
    """Start a scripted SMTP server that drips one reply a byte every 0.2 s; returns its port.

    ``"greeting"`` drips the 220 greeting; ``"data"`` answers EHLO, MAIL, RCPT
    and DATA at once, reads the message, then drips the reply to it (a
    multi-line 250, so a reply cut short is never read as an acceptance). A drip
    stops after 15 s, when the client hangs up, or at teardown.
    """
    stop = threading.Event()
    threads: list[threading.Thread] = []
    listeners: list[socket.socket] = []

    def drip(conn: socket.socket, text: bytes) -> None:
        for byte in text:
            if stop.wait(0.2):
                return
            conn.sendall(bytes([byte]))

    def serve(listener: socket.socket, stage: str) -> None:
        conn, _ = listener.accept()
        with conn, contextlib.suppress(OSError):
            reader = conn.makefile("rb")
            if stage == "greeting":
                drip(conn, b"220 " + b"a" * 72 + b"\r\n")
                return
            conn.sendall(b"220 ready\r\n")
            while line := reader.readline():
                verb = line[:4].upper()
                if verb == b"DATA":
                    conn.sendall(b"354 go ahead\r\n")
                    while reader.readline() not in {b".\r\n", b""}:
                        pass
                    # A continuation line, so a reply cut short is never read as a 250.
                    conn.sendall(b"250-")
                    drip(conn, b"a" * 72 + b"\r\n250 ok\r\n")
                    return
                conn.sendall(b"221 bye\r\n" if verb == b"QUIT" else b"250 ok\r\n")

    def start(stage: str) -> int:
        listener = socket.create_server(("127.0.0.1", 0))
        listeners.append(listener)
        thread = threading.Thread(target=serve, args=(listener, stage), daemon=True)
        thread.start()
        threads.append(thread)
        return int(listener.getsockname()[1])

    yield start
    stop.set()
    for listener in listeners:
        listener.close()
    for thread in threads:
        thread.join(5)


def test_a_dripping_greeting_is_cut_off_at_the_channel_timeout(
    dripping_smtp: Callable[[str], int],
) -> None:
    """A server dripping its greeting cannot hold a send past ``timeout``; nothing was sent."""
    smtp = channel(dripping_smtp("greeting"), timeout=0.3)  # a whole send: 3 s
    started = time.monotonic()
    result = smtp.send(delivery(), "k")
    elapsed = time.monotonic() - started
    # Cut mid-greeting, smtplib reads the partial line as a 220 and fails at EHLO.
    assert isinstance(result, TemporaryFailure)
    assert result.message.endswith(": not complete within the channel's timeout of 3 s")
    assert 3.0 <= elapsed < 3.0 + DEADLINE_SLACK


def test_a_dripping_answer_to_data_is_cut_off_as_outcome_unknown(
    dripping_smtp: Callable[[str], int],
) -> None:
    """After DATA, a drip cut at ``timeout`` is an unknown outcome: the mail may be queued."""
    smtp = channel(dripping_smtp("data"), timeout=0.3)
    started = time.monotonic()
    with pytest.raises(
        OutcomeUnknownError,
        match=r"SMTP connection lost after DATA: not complete within the channel's timeout of 3 s$",
    ):
        smtp.send(delivery(), "k")
    assert time.monotonic() - started < 3.0 + DEADLINE_SLACK


@pytest.mark.parametrize(("recipient", "problem"), REFUSED_RECIPIENTS.items())
def test_notify_refuses_a_recipient_no_server_could_take(
    recipient: str, problem: str, tmp_path: Path
) -> None:
    """The same recipients are refused by notify(), before anything is written."""
    engine = _engine(tmp_path)
    with pytest.raises(InvalidDeliveryError) as refused:
        engine.notify("email", recipient)
    assert f"invalid delivery: recipient: {problem.removeprefix('recipient ')}" == str(
        refused.value
    )
    assert recipient not in str(refused.value)
    assert ([], []) == (engine.store.find(), engine.backend.pending())  # type: ignore[attr-defined]


@pytest.mark.parametrize("key", ["a\r\nBcc: eve@example.com", "clé", "a\x01", " padded"])
def test_notify_refuses_a_key_that_cannot_be_a_header(key: str, tmp_path: Path) -> None:
    """The key goes into X-Idempotency-Key: one that cannot be a header value is refused."""
    engine = _engine(tmp_path)
    with pytest.raises(InvalidDeliveryError, match="idempotency_key: cannot be sent as a header"):
        engine.notify("email", "alice@example.com", idempotency_key=key)
    assert [] == engine.store.find()
    result = channel(free_port()).send(delivery("alice@example.com"), key)
    assert PermanentFailure(f"idempotency key {header_key_problem(key)}") == result


def _engine(tmp_path: Path) -> Chimeway:
    store = SQLStore(f"sqlite:///{tmp_path / 'ledger.db'}")
    store.create_all()
    return Chimeway(store, MemoryBackend(), {"email": channel(free_port())})
