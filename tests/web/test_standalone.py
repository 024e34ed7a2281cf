"""``chimeway web``: loopback unless a token is given, the token's cookie flow, a served ledger."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from chimeway_core.cli import main
from tests.cli.conftest import APP_MODULE, add_deliveries, app_dir, sqlite_ledger, start

pytestmark = pytest.mark.extras

__all__ = ["app_dir"]  # the --app modules' fixture, shared with tests/cli

TOKEN = "t0ken-for-tests"
#: How long a started server may take to say where it listens (a busy machine).
STARTUP = 60.0


@pytest.fixture
def ledger(tmp_path: Path) -> tuple[str, list[str]]:
    """A SQLite ledger with three live deliveries; its URL and their ids."""
    store, url = sqlite_ledger(tmp_path / "ledger.db")
    ids = add_deliveries(store, 3)
    store.engine.dispose()
    return url, ids


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.1", "::", "example.com"])
def test_a_non_loopback_host_without_a_token_is_refused(
    ledger: tuple[str, list[str]], host: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Exit 2, one line naming --token, nothing served."""
    code = main(["web", "--db", ledger[0], "--host", host])
    err = capsys.readouterr().err
    assert 2 == code
    assert "--token" in err
    assert 1 == len(err.strip().splitlines())


def test_without_the_extra_it_names_the_install(
    ledger: tuple[str, list[str]],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """jinja2 missing: exit 2 and the pip install line; the core never imported the console."""
    for name in [m for m in sys.modules if m == "chimeway_web" or m.startswith("chimeway_web.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "jinja2", None)
    code = main(["web", "--db", ledger[0]])
    assert 2 == code
    assert 'pip install "chimeway[web]"' in capsys.readouterr().err


def test_the_core_cli_does_not_import_the_console() -> None:
    """Building the parser and running another command leave chimeway_web unimported."""
    probe = (
        "import sys; from chimeway_core.cli import build_parser; build_parser(); "
        "sys.exit(1 if any(m.startswith('chimeway_web') or m == 'jinja2' for m in sys.modules) "
        "else 0)"
    )
    assert 0 == subprocess.run([sys.executable, "-c", probe], check=False).returncode


@contextmanager
def _serving(tmp_path: Path, *args: str, path: tuple[Path, ...] = ()) -> Iterator[str]:
    """``chimeway web --port 0 *args`` running; yields its base URL, checks it stops cleanly."""
    process = start("web", "--port", "0", *args, cwd=tmp_path, path=path)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()  # blocks until the server says where it listens
        found = re.search(r"serving (http://127\.0\.0\.1:\d+)/", line)
        assert found is not None, (line, process.stderr.read() if process.poll() else "")
        yield found.group(1)
    finally:
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=STARTUP)
    assert (0, "") == (process.returncode, err)
    assert "chimeway web: stopped" in out


@pytest.fixture
def served(tmp_path: Path, ledger: tuple[str, list[str]]) -> Iterator[tuple[str, list[str]]]:
    """``chimeway web --token`` on the ledger; yields its base URL and the ids."""
    url, ids = ledger
    with _serving(tmp_path, "--db", url, "--token", TOKEN) as base:
        yield base, ids


def _confirm(client: httpx.Client, path: str) -> httpx.Response:
    token = re.search(r'name="csrf_token" value="([^"]+)"', client.get(path).text)
    assert token is not None
    return client.post(path, data={"csrf_token": token.group(1)})


def test_with_the_app_resend_and_rescue_go_through_its_engine(
    tmp_path: Path, ledger: tuple[str, list[str]], app_dir: Path
) -> None:
    """--app: cancel, then resend makes a copy; rescue reports; no token needed on loopback."""
    url, ids = ledger
    app = f"{APP_MODULE}:memory_engine"
    with (
        _serving(tmp_path, "--db", url, "--app", app, path=(app_dir,)) as base,
        httpx.Client(base_url=base, timeout=STARTUP) as client,
    ):
        assert 303 == _confirm(client, f"/deliveries/{ids[0]}/cancel").status_code
        resent = _confirm(client, f"/deliveries/{ids[0]}/resend")
        assert "Resent as " in client.get(resent.headers["location"]).text
        rescued = _confirm(client, "/rescue")
        assert "Rescue: " in client.get(rescued.headers["location"]).text


def test_without_the_app_resend_and_rescue_say_they_need_it(
    tmp_path: Path, ledger: tuple[str, list[str]]
) -> None:
    """No --app: cancel works; resend and rescue answer with a message, never a 500."""
    url, ids = ledger
    with (
        _serving(tmp_path, "--db", url) as base,
        httpx.Client(base_url=base, timeout=STARTUP) as client,
    ):
        assert 303 == _confirm(client, f"/deliveries/{ids[0]}/cancel").status_code
        resent = _confirm(client, f"/deliveries/{ids[0]}/resend")
        assert "Not done" in client.get(resent.headers["location"]).text
        rescued = _confirm(client, "/rescue")
        assert 303 == rescued.status_code
        assert "--app" in client.get(rescued.headers["location"]).text


def test_the_token_sets_a_cookie_once_and_the_console_serves(
    served: tuple[str, list[str]],
) -> None:
    """No cookie: 401; ?token= once: 303 to the page without it, cookie HttpOnly Strict."""
    base, ids = served
    deadline = time.monotonic() + STARTUP
    with httpx.Client(base_url=base, timeout=STARTUP) as client:
        while True:
            try:
                first = client.get("/deliveries")
                break
            except httpx.ConnectError:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        assert 401 == first.status_code
        assert 401 == client.get("/deliveries?token=wrong").status_code
        opened = client.get(f"/deliveries?token={TOKEN}&status=ready")
        assert (303, "/deliveries?status=ready") == (
            opened.status_code,
            opened.headers["location"],
        )
        cookie = opened.headers["set-cookie"]
        assert "HttpOnly" in cookie
        assert "SameSite=Strict" in cookie
        page = client.get("/deliveries?status=ready")
        assert 200 == page.status_code
        assert set(ids) == set(re.findall(r'data-delivery-id="([0-9a-f-]+)"', page.text))
        cancel = f"/deliveries/{ids[0]}/cancel"
        token = re.search(r'name="csrf_token" value="([^"]+)"', client.get(cancel).text)
        assert token is not None
        done = client.post(cancel, data={"csrf_token": token.group(1)})
        assert 303 == done.status_code
        detail = client.get(f"/deliveries/{ids[0]}").text
        assert "chimeway web" in detail  # the journal's actor
