"""The served exporter against clients that hold connections: drips and floods."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

from chimeway_core.cli.metrics import HEAD_TIMEOUT, MAX_CONNECTIONS
from tests.cli.conftest import sqlite_ledger
from tests.cli.test_metrics import _request, _serve, _sigterm

#: Slack for a loaded machine on top of the head's deadline.
SLACK = 10.0


def _address(endpoint: str) -> tuple[str, int]:
    parts = urllib.parse.urlsplit(endpoint)
    assert parts.hostname is not None
    assert parts.port is not None
    return parts.hostname, parts.port


@contextlib.contextmanager
def _served(tmp_path: Path, stderr: list[str]) -> Iterator[str]:
    """Serve a fresh ledger; yields the endpoint; ``stderr`` gets the server's lines at the end."""
    _, url = sqlite_ledger(tmp_path / "ledger.sqlite3")
    process, endpoint = _serve(tmp_path, "127.0.0.1:0", url)
    try:
        yield endpoint
    finally:
        stderr.extend(_sigterm(process)[1].splitlines())


def _closed_within(sock: socket.socket, seconds: float) -> bool:
    """Whether the server closes ``sock`` within ``seconds`` (reading whatever it sends)."""
    sock.settimeout(seconds)
    try:
        while sock.recv(1024):
            pass
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True
    return True


def test_a_dripped_request_head_is_cut_at_its_deadline(tmp_path: Path) -> None:
    """A client sending its headers a byte at a time is cut off; a scrape meanwhile succeeds."""
    with _served(tmp_path, []) as endpoint:
        stop = threading.Event()
        drip = socket.create_connection(_address(endpoint))

        def send_slowly() -> None:
            with contextlib.suppress(OSError):
                drip.sendall(b"GET /metrics HTTP/1.1\r\nX-Drip: ")
                while not stop.wait(0.5):  # inside any per-read timeout
                    drip.sendall(b"a")

        sender = threading.Thread(target=send_slowly, daemon=True)
        sender.start()
        try:
            started = time.monotonic()
            assert 200 == _request("GET", endpoint)[0]
            assert _closed_within(drip, HEAD_TIMEOUT + SLACK)
            assert time.monotonic() - started >= HEAD_TIMEOUT - 1
        finally:
            stop.set()
            drip.close()
            sender.join(5)


def test_connections_past_the_cap_are_closed_on_arrival(tmp_path: Path) -> None:
    """With every slot held by a silent client, a new connection is closed at once."""
    stderr: list[str] = []
    with _served(tmp_path, stderr) as endpoint:
        silent = [socket.create_connection(_address(endpoint)) for _ in range(MAX_CONNECTIONS)]
        try:
            time.sleep(0.5)  # let the server take every one
            extra = socket.create_connection(_address(endpoint))
            with extra:
                assert _closed_within(extra, SLACK)
            # The silent ones run out of time for their heads; the slots come back.
            assert all(_closed_within(s, HEAD_TIMEOUT + SLACK) for s in silent)
            assert 200 == _request("GET", endpoint)[0]
        finally:
            for sock in silent:
                sock.close()
    warning = (
        f"chimeway metrics: {MAX_CONNECTIONS} connections are open; closing new ones until one ends"
    )
    assert [warning] == stderr
