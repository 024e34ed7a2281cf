"""Fixtures for the channel tests: deliveries, and real servers on 127.0.0.1.

Every server here listens on loopback only and is closed at teardown, so the
suite (which turns warnings into errors) leaks no socket or thread.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import attrs
import pytest
from aiosmtpd.controller import Controller

from chimeway_core.records import Delivery
from chimeway_core.testing import make_delivery as kit_delivery

CANARY = "canary-5ecr3t-0f-the-payl0ad"

#: Every TCP port: the test servers listen on ports the default policy (80, 443) refuses.
ANY_PORT = range(1, 65536)


def make_delivery(
    *, payload: Any = None, recipient: str = "someone@example.com", channel: str = "test"
) -> Delivery:
    """A ready delivery with the given payload and recipient."""
    return kit_delivery(
        id=uuid.uuid4(),
        channel=channel,
        recipient=recipient,
        payload={"hello": "world"} if payload is None else payload,
        notification_key="welcome",
        idempotency_key="idem-key-1",
    )


def free_port() -> int:
    """A loopback port that nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@attrs.define
class Reply:
    """What the test HTTP server does with one path."""

    status: int = 200
    headers: dict[str, str] = attrs.field(factory=dict)
    action: str = "respond"  # "respond", "hang" (never answer) or "close" (drop, no answer)
    # "drip": the answer's head one byte every 0.2 s, for 15 s at the most (a slow-drip attack)


@attrs.define
class Received:
    """One request the test HTTP server read."""

    path: str
    headers: dict[str, str]
    body: bytes


@attrs.define
class HTTPTestServer:
    """A real HTTP server on 127.0.0.1 answering per path as scripted."""

    server: ThreadingHTTPServer
    replies: dict[str, Reply]
    received: list[Received]
    release: threading.Event
    connections: list[object]

    @property
    def port(self) -> int:
        """The port it listens on."""
        return int(self.server.server_address[1])

    def url(self, path: str = "/hook") -> str:
        """An http URL of this server, by IP."""
        return f"http://127.0.0.1:{self.port}{path}"


@pytest.fixture
def http_server() -> Iterator[HTTPTestServer]:
    """A scripted HTTP server on loopback; set ``replies[path]`` before sending."""
    replies: dict[str, Reply] = {}
    received: list[Received] = []
    connections: list[object] = []
    release = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        def setup(self) -> None:
            connections.append(self.client_address)
            super().setup()

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length)
            received.append(Received(self.path, dict(self.headers.items()), body))
            reply = replies.get(self.path, Reply())
            if reply.action == "hang":
                release.wait(10)
                self.close_connection = True
                return
            if reply.action == "close":
                self.close_connection = True
                return
            if reply.action == "drip":
                self.close_connection = True
                for byte in b"HTTP/1.1 200 OK\r\nX-Drip: " + b"a" * 73:
                    if release.wait(0.2):
                        return
                    try:
                        self.wfile.write(bytes([byte]))
                        self.wfile.flush()
                    except OSError:
                        return
                return
            self.send_response(reply.status)
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield HTTPTestServer(server, replies, received, release, connections)
    finally:
        release.set()
        server.shutdown()
        server.server_close()
        thread.join(5)


@attrs.define
class SMTPHandler:
    """An aiosmtpd handler replying with scripted codes per recipient."""

    rcpt_replies: dict[str, str] = attrs.field(factory=dict)
    data_reply: str = "250 2.0.0 Ok: queued as ABC123"
    data_action: str = "respond"  # "respond", "sleep" (past the client timeout), "close"
    messages: list[bytes] = attrs.field(factory=list)

    async def handle_RCPT(  # noqa: N802 - aiosmtpd calls hooks by this name
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: Any
    ) -> str:
        """Refuse the recipients scripted in ``rcpt_replies``, accept others."""
        if address in self.rcpt_replies:
            return self.rcpt_replies[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(  # noqa: N802 - aiosmtpd calls hooks by this name
        self, server: Any, session: Any, envelope: Any
    ) -> str:
        """Store the message, then answer, stall or drop as scripted."""
        self.messages.append(envelope.original_content or envelope.content)
        if self.data_action == "sleep":
            await asyncio.sleep(1.0)
        if self.data_action == "close":
            server.transport.close()
        return self.data_reply


@attrs.define
class SMTPTestServer:
    """A real aiosmtpd server on 127.0.0.1."""

    handler: SMTPHandler
    port: int


@pytest.fixture
def smtp_server() -> Iterator[SMTPTestServer]:
    """An SMTP server on loopback whose replies the test scripts through ``handler``."""
    handler = SMTPHandler()
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield SMTPTestServer(handler, port)
    finally:
        controller.stop()
