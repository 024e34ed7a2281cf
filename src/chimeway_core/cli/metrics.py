"""``chimeway metrics``: the ledger's gauges for Prometheus, printed once or served over HTTP.

What is measured and how it is written is :mod:`chimeway_core.prometheus`;
this module reads the ledger (:meth:`~chimeway_core.store.SQLStore.gauges`)
and hands the text over. Served, every scrape reads the ledger afresh, and a
ledger that does not answer is ``chimeway_up 0`` (a line on stderr says why)
rather than a failed scrape, as Prometheus' own exporters do.
"""

from __future__ import annotations

import argparse
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Final

from sqlalchemy.exc import SQLAlchemyError

from chimeway_core.cli.config import ENV_DATABASE_URL, from_env, open_store, shown
from chimeway_core.cli.errors import CliError, ExitCode
from chimeway_core.cli.output import echo, warn
from chimeway_core.cli.parser import Subparsers, command, listen_address
from chimeway_core.cli.signals import stop_on_signals
from chimeway_core.clock import SystemClock
from chimeway_core.prometheus import CONTENT_TYPE, render
from chimeway_core.store import SQLStore

__all__ = ["register", "run_metrics", "scrape"]

#: The paths a served exporter answers; anything else is 404.
PATHS: Final = frozenset({"/metrics", "/"})


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
        "scrape the database does not answer says chimeway_up 0.\n\n"
        "exit status: 0 printed or stopped, 2 bad options or an address that cannot be "
        "listened on, 3 database unreachable."
    )
    metrics.add_argument("--db", metavar="URL", help=f"database URL (default: ${ENV_DATABASE_URL})")
    metrics.add_argument(
        "--serve",
        type=listen_address,
        metavar="[HOST:]PORT",
        help="serve GET /metrics here (HOST defaults to 127.0.0.1; port 0 picks a free one)",
    )


def scrape(store: SQLStore) -> str:
    """The exposition text of ``store``'s gauges now; ``chimeway_up 0`` if it fails to answer."""
    started = time.perf_counter()
    try:
        gauges = store.gauges(now=SystemClock().now())
    except SQLAlchemyError as error:
        first = next(iter(str(error).splitlines()), type(error).__qualname__)
        warn(f"chimeway metrics: the ledger did not answer: {first}")
        gauges = None
    return render(gauges, scrape_seconds=time.perf_counter() - started)


class _Exporter(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], store: SQLStore) -> None:
        self.store = store
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    server: _Exporter

    def do_GET(self) -> None:
        if self.path.partition("?")[0] not in PATHS:
            self.send_error(HTTPStatus.NOT_FOUND, "chimeway serves /metrics")
            return
        body = scrape(self.server.store).encode()
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", CONTENT_TYPE)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """Nothing: one access line per scrape would bury the lines that matter."""


def run_metrics(args: argparse.Namespace) -> int:
    """Print the gauges once, or serve them until SIGINT or SIGTERM."""
    store = open_store(from_env(args.db, ENV_DATABASE_URL))
    if args.serve is None:
        # Printed once, a database failing midway is exit 3, as in every command.
        started = time.perf_counter()
        gauges = store.gauges(now=SystemClock().now())
        echo(render(gauges, scrape_seconds=time.perf_counter() - started).rstrip("\n"))
        store.engine.dispose()
        return ExitCode.OK
    try:
        server = _Exporter(args.serve, store)
    except OSError as error:
        host, port = args.serve
        raise CliError(
            f"--serve: cannot listen on {host}:{port}: {error.strerror or error}"
        ) from None
    bound_host, port = server.server_address[:2]
    host = bound_host.decode() if isinstance(bound_host, bytes) else bound_host
    where = f"[{host}]" if ":" in host else host
    stop = threading.Event()
    thread = threading.Thread(target=server.serve_forever, name="chimeway-metrics", daemon=True)
    with stop_on_signals(stop):
        thread.start()
        echo(
            f"chimeway metrics: serving http://{where}:{port}/metrics for "
            f"{shown(store.engine.url)}; Ctrl-C or SIGTERM stops"
        )
        try:
            while not stop.wait(0.2):
                pass
        finally:
            server.shutdown()
            server.server_close()
            store.engine.dispose()
    echo("chimeway metrics: stopped")
    return ExitCode.OK
