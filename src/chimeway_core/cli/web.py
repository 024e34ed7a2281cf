"""``chimeway web``: the operators' web console, served alone.

The console is the optional extra ``web`` (package ``chimeway_web``), imported
only when the command runs: without the extra the command says which
``pip install`` adds it. It listens on 127.0.0.1 by default; any other
address needs a token (``--token`` or ``$CHIMEWAY_WEB_TOKEN``). With
``--app`` it acts through the application's engine (resend and rescue need
its channels and queue); without, it reads the ledger at ``--db`` and can
cancel and reveal, while resend and rescue say they need ``--app``.
"""

from __future__ import annotations

import argparse
import os
import threading
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Final
from uuid import UUID

from chimeway_core.cli.config import (
    ENV_DATABASE_URL,
    ENV_NAMESPACE,
    add_namespace,
    database_url,
    from_env,
    namespace,
    open_store,
    shown,
)
from chimeway_core.cli.errors import CliError, ExitCode
from chimeway_core.cli.output import echo
from chimeway_core.cli.parser import Subparsers, command
from chimeway_core.cli.signals import serve_until, stop_on_signals
from chimeway_core.engine import Chimeway
from chimeway_core.engine.upkeep import RescueReport
from chimeway_core.errors import BackendUnavailableError, ChimewayError
from chimeway_core.records import Resent

__all__ = ["ENV_WEB_TOKEN", "NeedsAppError", "register"]

#: The token when ``--token`` is not given.
ENV_WEB_TOKEN: Final = "CHIMEWAY_WEB_TOKEN"  # noqa: S105 -- a variable's name
_INSTALL: Final = 'the console needs the web extra: pip install "chimeway[web]"'


def register(subparsers: Subparsers) -> None:
    """Add ``chimeway web``."""
    web = command(subparsers, "web", run_web, "Serve the operators' web console.")
    web.description = (
        "The web console over the ledger: the overview, the deliveries with filters, each "
        "delivery's history, the channels' health, and cancel, resend, reveal and rescue "
        "behind a confirmation. Listens on 127.0.0.1 unless --host says otherwise; another "
        "address needs a token, and then the console is opened once at /?token=TOKEN, which "
        'sets a cookie. Needs the web extra (pip install "chimeway[web]").\n\n'
        "exit status: 0 stopped by SIGINT or SIGTERM, 2 bad options, a non-loopback host "
        "without a token or the extra missing, 3 database unreachable."
    )
    web.add_argument("--db", metavar="URL", help=f"database URL (default: ${ENV_DATABASE_URL})")
    add_namespace(web)
    web.add_argument(
        "--app",
        metavar="MODULE:ATTRIBUTE",
        help="the application's engine (like myapp.notify:engine), needed to resend and "
        f"rescue; --db is exported to it as ${ENV_DATABASE_URL}",
    )
    web.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)"
    )
    web.add_argument(
        "--port", type=int, default=8025, help="port to listen on (default: 8025; 0: a free one)"
    )
    web.add_argument("--read-only", action="store_true", help="show no actions; refuse every POST")
    web.add_argument(
        "--token",
        metavar="TOKEN",
        help=f"the token a browser must present once (default: ${ENV_WEB_TOKEN}); required "
        "for a host other than loopback",
    )


class _NoQueue:
    """The queue of a console with no application: every hand-over says ``--app`` is needed."""

    def enqueue(self, delivery_id: UUID, *, at: datetime | None = None) -> None:
        """Refuse: without the application there is no queue to hand jobs to."""
        del delivery_id, at
        raise BackendUnavailableError("none", "the application's queue", "run with --app")

    def enqueue_many(self, delivery_ids: Sequence[UUID]) -> None:
        """Refuse, as :meth:`enqueue`."""
        del delivery_ids
        raise BackendUnavailableError("none", "the application's queue", "run with --app")


class NeedsAppError(ChimewayError):
    """What the console was asked needs the application's engine (``--app``)."""

    def __init__(self, action: str) -> None:
        self.action = action
        super().__init__(
            f"{action} needs the application's channels and queue: "
            "run chimeway web --app MODULE:ATTRIBUTE"
        )


class _LedgerOnly(Chimeway):
    """The engine of a console with no application: it reads, cancels and reveals only."""

    def resend(self, delivery_id: UUID, **_options: Any) -> Resent:
        """Refuse: the copy's channel and policies are the application's."""
        del delivery_id
        raise NeedsAppError("resend")

    def rescue(self, now: datetime | None = None, **_options: Any) -> RescueReport:
        """Refuse: the rescuer queues jobs, and the queue is the application's."""
        del now
        raise NeedsAppError("rescue")


def _engine(args: argparse.Namespace) -> Chimeway:
    if args.app is None:
        store = open_store(from_env(args.db, ENV_DATABASE_URL), namespace=namespace(args))
        return _LedgerOnly(store, _NoQueue(), {})
    from chimeway_core.cli.workers import _engine as app_engine  # noqa: PLC0415

    if args.db is not None:
        database_url(args.db)  # fail on a malformed URL before importing anything
        os.environ[ENV_DATABASE_URL] = args.db
    if args.namespace is not None:
        os.environ[ENV_NAMESPACE] = namespace(args) or ""
    return app_engine(args.app, args.db)


def run_web(args: argparse.Namespace) -> int:
    """Serve the console until SIGINT or SIGTERM."""
    try:
        from chimeway_web import Console  # noqa: PLC0415 -- the extra, only when asked for
        from chimeway_web.standalone import check_bind, serve, token_gate  # noqa: PLC0415
    except ImportError as error:
        raise CliError(f"{_INSTALL} ({error})") from None
    token = from_env(args.token, ENV_WEB_TOKEN)
    refused = check_bind(args.host, token)
    if refused is not None:
        raise CliError(f"--host: {refused} (see 'chimeway web --help')", ExitCode.USAGE)
    if not 0 <= args.port <= 65535:
        raise CliError(f"--port must be from 0 to 65535, got {args.port}")
    engine = _engine(args)
    console = Console(engine, read_only=args.read_only, actor=lambda _request: "chimeway web")
    app: Any = console.wsgi if token is None else token_gate(console.wsgi, token)
    where = f"[{args.host}]" if ":" in args.host else args.host
    try:
        server = serve(app, args.host, args.port)
    except OSError as error:
        raise CliError(f"cannot listen on {where}:{args.port}: {error.strerror or error}") from None
    port = server.server_address[1]
    stop = threading.Event()
    with stop_on_signals(stop):
        opened = " (open it once with ?token=...)" if token is not None else ""
        echo(
            f"chimeway web: serving http://{where}:{port}/ for "
            f"{shown(engine.store.engine.url)}{opened}; Ctrl-C or SIGTERM stops"
        )
        try:
            serve_until(server, stop, name="chimeway-web")
        finally:
            engine.store.engine.dispose()
    echo("chimeway web: stopped")
    return ExitCode.OK
