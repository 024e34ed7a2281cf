"""``chimeway metrics``: the ledger's gauges printed once, and served to a scraper over HTTP."""

from __future__ import annotations

import argparse
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from chimeway_core.cli.config import open_store
from chimeway_core.cli.metrics import TIMEOUT_HEADER, scrape
from chimeway_core.cli.parser import listen_address
from chimeway_core.store import SQLStore
from tests.cli.conftest import Invoke, add_deliveries, sqlite_ledger, start


def test_printed_once_for_a_textfile_collector(tmp_path: Path, invoke: Invoke) -> None:
    """Without --serve the gauges are printed once, exit 0."""
    store, url = sqlite_ledger(tmp_path / "ledger.sqlite3")
    add_deliveries(store, 3)
    result = invoke("metrics", "--db", url)
    assert 0 == result.code, result.stderr
    lines = result.stdout.splitlines()
    assert "chimeway_up 1" in lines
    assert 'chimeway_deliveries{status="ready",reason=""} 3' in lines
    assert 'chimeway_live_deliveries{channel="log",status="ready"} 3' in lines
    assert "chimeway_due_deliveries 3" in lines
    assert "chimeway_outbox_rows 3" in lines
    store.engine.dispose()


@pytest.mark.extras
def test_an_unreachable_database_is_exit_3_when_printing(invoke: Invoke) -> None:
    """Printed once, a database that does not answer is the usual exit 3, in one line."""
    result = invoke("metrics", "--db", "postgresql://chimeway@127.0.0.1:1/nothing")
    assert (3, 1) == (result.code, len(result.stderr_lines)), result.stderr
    assert result.stderr.startswith("chimeway: error: cannot reach the database postgresql")


def _serve(tmp_path: Path, address: str, url: str) -> tuple[subprocess.Popen[str], str]:
    """Start ``chimeway metrics --serve address``; the process and its /metrics URL."""
    process = start("metrics", "--serve", address, "--db", url, cwd=tmp_path)
    assert process.stdout is not None
    first = process.stdout.readline()
    assert first.startswith("chimeway metrics: serving http://"), first + process.stderr.read()
    return process, first.split()[3]


def _request(method: str, url: str) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def _sigterm(process: subprocess.Popen[str]) -> tuple[str, str]:
    process.send_signal(signal.SIGTERM)
    try:
        return process.communicate(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


def test_served_on_ipv6_with_head_and_no_other_method(tmp_path: Path) -> None:
    """[::1]:0 listens on IPv6; HEAD answers like GET without a body; POST is 405."""
    if not socket.has_ipv6:
        pytest.skip("this Python has no IPv6")
    _, url = sqlite_ledger(tmp_path / "ledger.sqlite3")
    process, endpoint = _serve(tmp_path, "[::1]:0", url)
    try:
        assert endpoint.startswith("http://[::1]:")
        got, head, post = (_request(method, endpoint) for method in ("GET", "HEAD", "POST"))
    finally:
        _, err = _sigterm(process)
    assert (200, 200, b"") == (got[0], head[0], head[2])
    assert got[1]["Content-Length"] == str(len(got[2]))
    # HEAD reads the ledger too: the same headers, the scrape's own length.
    assert (got[1]["Content-Type"], True) == (head[1]["Content-Type"], "Content-Length" in head[1])
    assert (405, "GET, HEAD", b"405 chimeway serves GET /metrics\n") == (
        post[0],
        post[1]["Allow"],
        post[2],
    )
    assert (0, "") == (process.returncode, err)


def test_a_served_sqlite_ledger_deleted_is_down_and_one_put_back_is_read(tmp_path: Path) -> None:
    """The pool holds the file open: the exporter looks the path up before each scrape."""
    path = tmp_path / "ledger.sqlite3"
    store, url = sqlite_ledger(path)
    add_deliveries(store, 3)
    store.engine.dispose()
    process, endpoint = _serve(tmp_path, "127.0.0.1:0", url)
    try:
        before = _request("GET", endpoint)[2].decode().splitlines()
        for leftover in tmp_path.glob("ledger.sqlite3*"):
            leftover.unlink()
        deleted = _request("GET", endpoint)[2].decode().splitlines()
        restored, _ = sqlite_ledger(path)
        add_deliveries(restored, 2)
        restored.engine.dispose()
        after = _request("GET", endpoint)[2].decode().splitlines()
    finally:
        _, err = _sigterm(process)
    assert {"chimeway_up 1", "chimeway_due_deliveries 3"} <= set(before)
    assert "chimeway_up 0" in deleted
    assert {"chimeway_up 1", "chimeway_due_deliveries 2"} <= set(after)
    assert f"the ledger did not answer: the ledger file {path} is gone" in err


@pytest.mark.postgres
def test_a_ledger_that_hangs_is_up_zero_within_the_timeout(fresh_postgres: str) -> None:
    """A table locked by another session cancels the scrape's queries at the timeout."""
    store = SQLStore(fresh_postgres)
    store.create_all()
    with store.engine.connect() as locker:
        locker.exec_driver_sql("LOCK TABLE chimeway_deliveries IN ACCESS EXCLUSIVE MODE")
        started = time.monotonic()
        text = scrape(store, timeout=0.5)
        took = time.monotonic() - started
        locker.rollback()
    assert "chimeway_up 0" in text.splitlines()
    assert took < 5
    assert "chimeway_up 1" in scrape(store, timeout=0.5).splitlines()
    store.engine.dispose()


@pytest.mark.postgres
def test_a_served_scrape_keeps_within_prometheus_timeout(
    fresh_postgres: str, tmp_path: Path
) -> None:
    """With the deliveries locked, a scrape that says it waits 1 s gets chimeway_up 0 in time."""
    store = SQLStore(fresh_postgres)
    store.create_all()
    process, endpoint = _serve(tmp_path, "127.0.0.1:0", fresh_postgres)
    try:
        with store.engine.connect() as locker:
            locker.exec_driver_sql("LOCK TABLE chimeway_deliveries IN ACCESS EXCLUSIVE MODE")
            request = urllib.request.Request(endpoint, headers={TIMEOUT_HEADER: "1"})
            started = time.monotonic()
            with urllib.request.urlopen(request, timeout=10) as response:
                body = response.read().decode()
            took = time.monotonic() - started
            locker.rollback()
    finally:
        _, err = _sigterm(process)
    assert "chimeway_up 0" in body.splitlines()
    assert took < 5  # --timeout is 10 s: the header's 1 s decided
    assert "canceling statement due to statement timeout" in err
    store.engine.dispose()


@pytest.mark.postgres
@pytest.mark.parametrize("pre_ping", [True, False], ids=["pre-ping", "no pre-ping"])
def test_a_connection_the_server_dropped_is_replaced_before_a_scrape(
    fresh_postgres: str, pre_ping: bool
) -> None:
    """The exporter's engine pre-pings: a PostgreSQL restart costs it no false chimeway_up 0."""
    maker = SQLStore(fresh_postgres)
    maker.create_all()
    maker.engine.dispose()
    store = open_store(fresh_postgres, pool_pre_ping=pre_ping)
    assert "chimeway_up 1" in scrape(store).splitlines()
    with store.engine.connect() as conn:  # the pooled connection the next scrape gets
        pid = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
    killer = SQLStore(fresh_postgres)
    with killer.engine.connect() as conn:
        assert conn.exec_driver_sql(f"SELECT pg_terminate_backend({int(pid)})").scalar_one()
    killer.engine.dispose()
    expected = "chimeway_up 1" if pre_ping else "chimeway_up 0"
    assert expected in scrape(store).splitlines()
    store.engine.dispose()


def test_served_every_scrape_reads_the_ledger_afresh(tmp_path: Path) -> None:
    """--serve answers GET /metrics in the format's content type, 404 elsewhere; SIGTERM stops."""
    store, url = sqlite_ledger(tmp_path / "ledger.sqlite3")
    add_deliveries(store, 2)
    process, endpoint = _serve(tmp_path, "127.0.0.1:0", url)
    try:
        assert endpoint.startswith("http://127.0.0.1:")
        status, headers, body = _request("GET", endpoint)
        add_deliveries(store, 3)
        again = _request("GET", endpoint)[2]
        elsewhere = _request("GET", endpoint.replace("/metrics", "/other"))
    finally:
        out, err = _sigterm(process)
    assert (200, "text/plain; version=0.0.4; charset=utf-8") == (status, headers["Content-Type"])
    assert "chimeway_due_deliveries 2" in body.decode().splitlines()
    assert "chimeway_due_deliveries 5" in again.decode().splitlines()
    assert (404, b"404 chimeway serves /metrics\n") == (elsewhere[0], elsewhere[2])
    assert (0, "chimeway metrics: stopped", "") == (process.returncode, out.strip(), err)
    store.engine.dispose()


@pytest.mark.extras
def test_a_scrape_the_database_does_not_answer_is_up_zero(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A served scrape is never an HTTP error: chimeway_up 0, and a line on stderr says why."""
    store = SQLStore("postgresql+psycopg://chimeway@127.0.0.1:1/nothing")
    text = scrape(store)
    assert "chimeway_up 0" in text.splitlines()
    assert "chimeway_deliveries" not in text
    err = capsys.readouterr().err
    assert err.startswith("chimeway metrics: the ledger did not answer: "), err
    store.engine.dispose()


def test_an_address_in_use_is_exit_2(tmp_path: Path, invoke: Invoke) -> None:
    """A port another process holds is a configuration error, named, exit 2."""
    _, url = sqlite_ledger(tmp_path / "ledger.sqlite3")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = invoke("metrics", "--serve", f"127.0.0.1:{port}", "--db", url)
    assert 2 == result.code
    assert result.stderr_lines == [
        f"chimeway: error: --serve: cannot listen on 127.0.0.1:{port}: Address already in use"
    ]


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("9108", ("127.0.0.1", 9108)),
        ("0.0.0.0:9108", ("0.0.0.0", 9108)),
        ("[::1]:0", ("::1", 0)),
        ("metrics.internal:80", ("metrics.internal", 80)),
    ],
)
def test_listen_addresses(text: str, address: tuple[str, int]) -> None:
    """A bare port listens on 127.0.0.1 only; a host is taken as given."""
    assert address == listen_address(text)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (":9108", "names no host: write 0.0.0.0:9108"),
        ("[]:9108", "names no host"),
        ("::1", "an IPv6 host goes in brackets"),
        ("::1:9108", r"like \[::1\]:9108"),
        ("70000", "is not an address to listen on"),
        ("host:", "is not an address to listen on"),
        ("\u0661\u0662", "is not an address to listen on"),
        ("", "is not an address to listen on"),
    ],
)
def test_bad_listen_addresses_are_refused(text: str, message: str) -> None:
    """What is no port, or names no host, is refused before anything listens."""
    with pytest.raises(argparse.ArgumentTypeError, match=message):
        listen_address(text)
