"""``chimeway metrics``: the ledger's gauges for Prometheus, printed once or served over HTTP.

What is measured and how it is written is :mod:`chimeway_core.prometheus`;
this module reads the ledger (:meth:`~chimeway_core.store.SQLStore.gauges`)
and hands the text over. Served, every scrape reads the ledger afresh, and a
ledger that does not answer is ``chimeway_up 0`` (a line on stderr says why)
rather than a failed scrape, as Prometheus' own exporters do; a database
that does not answer within the scrape's timeout counts as not answering.
A SQLite ledger is a file the pool holds open: served, the file is looked up
before every scrape, so a deleted file is ``chimeway_up 0`` rather than the
last figures of an unlinked file, and a file put in its place (a restored
copy) is read instead of the one it replaced.

The listener faces whatever can reach it: a client has
:data:`HEAD_TIMEOUT` seconds in all to send its request's line and headers
(a total, so dripping them a byte at a time does not help), and at most
:data:`MAX_CONNECTIONS` connections are served at once, newer ones closed on
arrival; half-sent requests can hold neither threads nor, for longer than
that, a scrape's turn.
"""

from __future__ import annotations

import argparse
import math
import socket
import sys
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Final

from sqlalchemy.exc import SQLAlchemyError

from chimeway_core._deadline import Deadline
from chimeway_core.cli.config import (
    ENV_DATABASE_URL,
    add_namespace,
    from_env,
    namespace,
    open_store,
    shown,
    sqlite_path,
)
from chimeway_core.cli.errors import CliError, ExitCode
from chimeway_core.cli.output import echo, warn
from chimeway_core.cli.parser import Subparsers, command, listen_address
from chimeway_core.cli.signals import serve_until, stop_on_signals
from chimeway_core.clock import SystemClock
from chimeway_core.prometheus import CONTENT_TYPE, render
from chimeway_core.store import SQLStore

__all__ = ["LedgerFile", "register", "run_metrics", "scrape"]

#: The paths a served exporter answers; anything else is 404.
PATHS: Final = frozenset({"/metrics", "/"})
#: Prometheus says how long it waits for a scrape in this request header.
TIMEOUT_HEADER: Final = "X-Prometheus-Scrape-Timeout-Seconds"
#: How long a client may take to send a request's line and headers (and each
#: read or write may block): a scrape sends them at once.
HEAD_TIMEOUT: Final = 5.0
#: Connections served at once; more are closed on arrival.
MAX_CONNECTIONS: Final = 32
#: At most one line on stderr this often about connections closed on arrival.
_WARN_EVERY: Final = 60.0

#: The share of Prometheus' timeout the ledger may take, leaving the rest for the reply.
_TIMEOUT_SHARE: Final = 0.9


def register(subparsers: Subparsers) -> None:
    """Add ``chimeway metrics``."""
    metrics = command(
        subparsers, "metrics", run_metrics, "Print or serve the ledger's gauges for Prometheus."
    )
    metrics.description = (
        "The ledger's gauges in Prometheus' text format: deliveries by status and reason, "
        "live deliveries by channel, the due backlog and how long its oldest has waited, "
        "stuck attempts and the outbox. Printed once (for node_exporter's textfile "
        "collector), or with --serve answered on GET /metrics until SIGINT or SIGTERM; a "
        "scrape the database does not answer within its timeout says chimeway_up 0.\n\n"
        "exit status: 0 printed or stopped, 2 bad options or an address that cannot be "
        "listened on, 3 database unreachable."
    )
    metrics.add_argument("--db", metavar="URL", help=f"database URL (default: ${ENV_DATABASE_URL})")
    add_namespace(metrics)
    metrics.add_argument(
        "--serve",
        type=listen_address,
        metavar="[HOST:]PORT",
        help="serve GET /metrics here: PORT (on 127.0.0.1), HOST:PORT or [IPv6]:PORT; "
        "port 0 picks a free one",
    )
    metrics.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="how long the ledger may take to answer (PostgreSQL; default: 10, or less "
        f"when a scrape's {TIMEOUT_HEADER} says so)",
    )


def scrape(store: SQLStore, *, timeout: float | None = None, file: LedgerFile | None = None) -> str:
    """The exposition text of ``store``'s gauges now; ``chimeway_up 0`` if it fails to answer.

    ``timeout`` (seconds) bounds how long the ledger may take (PostgreSQL).
    ``file``, a SQLite ledger's, is checked first: gone, the ledger does not answer.
    """
    started = time.perf_counter()
    gauges = None
    problem = None if file is None else file.gone()
    if problem is None:
        try:
            gauges = store.gauges(now=SystemClock().now(), timeout=timeout)
        except SQLAlchemyError as error:
            problem = next(iter(str(error).splitlines()), type(error).__qualname__)
    if problem is not None:
        warn(f"chimeway metrics: the ledger did not answer: {problem}")
    return render(gauges, scrape_seconds=time.perf_counter() - started)


class LedgerFile:
    """The file of a served SQLite ledger, looked up before each scrape.

    The pool's connections keep the file they opened, even deleted or
    replaced; the exporter must read the file the path names now.
    """

    def __init__(self, store: SQLStore, path: Path) -> None:
        self.store = store
        self.path = path
        self._lock = threading.Lock()
        self._identity = self._stat()

    def _stat(self) -> tuple[int, int] | OSError:
        try:
            found = self.path.stat()
        except OSError as error:
            return error
        return found.st_dev, found.st_ino

    def gone(self) -> str | None:
        """Why the file cannot be read now, or ``None``; a new file at the path drops the pool."""
        now = self._stat()
        if isinstance(now, OSError):
            return f"the ledger file {self.path} is gone: {now.strerror or now}"
        with self._lock:
            if now != self._identity:
                # Another file under the same name: connections to the old one must go.
                self.store.engine.dispose()
                self._identity = now
        return None


class _Exporter(ThreadingHTTPServer):
    """A thread a connection, at most :data:`MAX_CONNECTIONS` at once."""

    daemon_threads = True
    # socketserver's default backlog of 5 makes a burst of connections wait
    # out SYN retries (a second and more) before the cap can even see them.
    request_queue_size = 4 * MAX_CONNECTIONS

    def __init__(self, address: tuple[str, int], store: SQLStore, timeout: float) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.store = store
        self.scrape_timeout = timeout
        path = sqlite_path(store.engine.url)
        self.file = None if path is None else LedgerFile(store, path)
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self._warned_at = -math.inf
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        """Serve the connection in a thread of its own, or close it when every slot is taken."""
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)
            if time.monotonic() - self._warned_at >= _WARN_EVERY:
                self._warned_at = time.monotonic()
                warn(
                    f"chimeway metrics: {MAX_CONNECTIONS} connections are open; "
                    "closing new ones until one ends"
                )
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        """Serve one connection, then free its slot."""
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, _request: object, client_address: object) -> None:
        """One line, not socketserver's traceback, for a request that failed."""
        warn(f"chimeway metrics: a request from {client_address} failed: {_last_error()}")


def _last_error() -> str:
    error = sys.exc_info()[1]
    return f"{type(error).__qualname__}: {error}" if error is not None else "unknown error"


class _Handler(BaseHTTPRequestHandler):
    server: _Exporter
    server_version = "chimeway-metrics"
    sys_version = ""
    error_content_type = "text/plain; charset=utf-8"
    error_message_format = "%(code)d %(message)s\n"
    #: Each read and write (socketserver sets it on the connection).
    timeout = HEAD_TIMEOUT

    def setup(self) -> None:
        """Arm the request head's deadline: a client dripping it cannot hold the thread."""
        super().setup()
        self._head = Deadline(HEAD_TIMEOUT).__enter__()
        self._head.watch(self.connection)

    def parse_request(self) -> bool:
        """Parse the request line and headers, which must be whole within the head's deadline."""
        parsed = super().parse_request()
        expired = self._head.expired
        self._head.__exit__()
        if expired:
            self.close_connection = True
        return parsed and not expired

    def finish(self) -> None:
        """Disarm the deadline (a request that never came), then close."""
        self._head.__exit__()
        super().finish()

    def do_GET(self) -> None:
        self._answer(with_body=True)

    def do_HEAD(self) -> None:
        self._answer(with_body=False)

    def _answer(self, *, with_body: bool) -> None:
        if self.path.partition("?")[0] not in PATHS:
            self.send_error(HTTPStatus.NOT_FOUND, "chimeway serves /metrics")
            return
        body = scrape(self.server.store, timeout=self._timeout(), file=self.server.file).encode()
        try:
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", CONTENT_TYPE)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if with_body:
                self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            # The scraper gave up waiting: nobody is left to answer.
            self.close_connection = True

    def _timeout(self) -> float:
        ours = self.server.scrape_timeout
        try:
            theirs = float(self.headers.get(TIMEOUT_HEADER, "inf")) * _TIMEOUT_SHARE
        except ValueError:
            return ours
        return min(ours, theirs) if math.isfinite(theirs) and theirs > 0 else ours

    def _not_allowed(self) -> None:
        self.send_response(HTTPStatus.METHOD_NOT_ALLOWED)
        self.send_header("Allow", "GET, HEAD")
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        body = b"405 chimeway serves GET /metrics\n"
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    # http.server dispatches a request to the method named do_<METHOD>.
    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _not_allowed  # noqa: N815

    def log_message(self, format: str, *args: object) -> None:
        """Nothing: one access line per scrape would bury the lines that matter."""


def run_metrics(args: argparse.Namespace) -> int:
    """Print the gauges once, or serve them until SIGINT or SIGTERM."""
    if not (math.isfinite(args.timeout) and args.timeout > 0):
        raise CliError(f"--timeout must be a finite number of seconds > 0, got {args.timeout:g}")
    store = open_store(
        from_env(args.db, ENV_DATABASE_URL),
        pool_pre_ping=args.serve is not None,
        namespace=namespace(args),
    )
    if args.serve is None:
        # Printed once, a database failing midway is exit 3, as in every command.
        started = time.perf_counter()
        gauges = store.gauges(now=SystemClock().now(), timeout=args.timeout)
        echo(render(gauges, scrape_seconds=time.perf_counter() - started).splitlines())
        store.engine.dispose()
        return ExitCode.OK
    host, port = args.serve
    where = f"[{host}]" if ":" in host else host
    try:
        server = _Exporter(args.serve, store, args.timeout)
    except OSError as error:
        raise CliError(
            f"--serve: cannot listen on {where}:{port}: {error.strerror or error}"
        ) from None
    port = server.server_address[1]
    stop = threading.Event()
    with stop_on_signals(stop):
        echo(
            f"chimeway metrics: serving http://{where}:{port}/metrics for "
            f"{shown(store.engine.url)}; Ctrl-C or SIGTERM stops"
        )
        try:
            serve_until(server, stop, name="chimeway-metrics")
        finally:
            store.engine.dispose()
    echo("chimeway metrics: stopped")
    return ExitCode.OK
