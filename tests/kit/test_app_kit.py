"""Testing an application's own engine: fakes by name, recorded calls, assert_notified."""

from __future__ import annotations

import re
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from chimeway_backends.memory import MemoryBackend
from chimeway_core import (
    Chimeway,
    DeliveryGuarantee,
    DeliveryStatus,
    PreferencePolicy,
    RetryPolicy,
    SMTPChannel,
    SQLStore,
    VirtualClock,
)
from chimeway_core.channels import LogChannel
from chimeway_core.testing import (
    FakeChannel,
    assert_notified,
    engine_with_fakes,
    fakes_of,
    refute_notified,
)

pytest_plugins = ["pytester"]

TESTING_PAGE = Path(__file__).resolve().parents[2] / "docs" / "testing.md"


def _store(path: Path) -> SQLStore:
    store = SQLStore(f"sqlite:///{path}")
    store.create_all()
    return store


def _app(path: Path) -> Chimeway:
    """An application's engine: real channels, a route, a policy, its own retry."""
    email = SMTPChannel(
        "smtp.invalid",
        sender="app@example.test",
        subject_for=lambda d: "Hello",
        body_for=lambda d: "Hi",
        timeout=12.0,
    )
    return Chimeway(
        _store(path),
        MemoryBackend(),
        {"email": email, "log": LogChannel()},
        routes={"email": "mail"},
        policies=[PreferencePolicy(lambda d: d.recipient != "opted-out@example.test")],
        retry=RetryPolicy(max_attempts=7, initial_delay=2.0, jitter=0.0),
        relay_grace=3.0,
    )


def test_the_engine_with_fakes_keeps_the_apps_configuration(tmp_path: Path) -> None:
    """Channel names, guarantee and timeout, routes, policies, retry: the app's; channels fake."""
    app = _app(tmp_path / "app.db")
    engine = engine_with_fakes(app, store=_store(tmp_path / "test.db"), backend=MemoryBackend())
    fakes = fakes_of(engine)
    assert ["email", "log"] == sorted(fakes)
    assert all(isinstance(fake, FakeChannel) for fake in fakes.values())
    for name, fake in fakes.items():
        assert (app.channels[name].guarantee, app.channels[name].timeout) == (
            fake.guarantee,
            fake.timeout,
        )
    assert (app.routes, app.policies[1:], app.retry) == (
        engine.routes,
        engine.policies[1:],
        engine.retry,
    )
    assert (app.relay_grace, app.lease_margin) == (engine.relay_grace, engine.lease_margin)
    assert len(app.policies) == len(engine.policies)  # one ExpiryPolicy each, not two
    with pytest.raises(TypeError, match="'email' is a SMTPChannel, not a FakeChannel"):
        fakes_of(app)


def test_the_apps_policies_run_and_nothing_reaches_the_apps_ledger(tmp_path: Path) -> None:
    """Sent through fakes on the test's ledger and queue; the app's own stay empty."""
    app = _app(tmp_path / "app.db")
    backend = MemoryBackend(VirtualClock())
    engine = engine_with_fakes(app, store=_store(tmp_path / "test.db"), backend=backend)
    sent = engine.notify("email", "ada@example.test", {"order": 7, "total": 12})
    engine.notify("email", "opted-out@example.test", {"order": 8})
    assert [sent.id] == [job.delivery_id for job in backend.pending()]
    assert "mail" == backend.pending()[0].queue
    backend.run_until_idle(engine, fail_fast=True)
    [call] = fakes_of(engine)["email"].calls
    assert ("email", "ada@example.test", {"order": 7, "total": 12}) == (
        call.channel,
        call.recipient,
        call.payload,
    )
    assert {} == app.store.counts()


def test_assert_notified_matches_a_payload_subset(tmp_path: Path) -> None:
    """Channel and recipient exactly, the payload as a subset; the newest match returned."""
    clock = VirtualClock()
    engine = engine_with_fakes(
        _app(tmp_path / "app.db"),
        store=_store(tmp_path / "t.db"),
        backend=MemoryBackend(clock),
        clock=clock,
    )
    engine.notify("email", "ada@example.test", {"order": {"id": 7, "lines": [1, 2]}, "total": 12})
    clock.advance(1)
    newest = engine.notify("email", "ada@example.test", {"order": {"id": 7, "lines": [3]}})
    suppressed = engine.notify("email", "opted-out@example.test", {"order": {"id": 9}})
    assert newest.id == assert_notified(engine, channel="email", payload={"order": {"id": 7}}).id
    assert_notified(engine, recipient="ada@example.test", count=2)
    assert_notified(engine, payload={"order": {"lines": [1, 2]}}, count=1)
    assert suppressed.id == assert_notified(engine, status=DeliveryStatus.SUPPRESSED).id
    refute_notified(engine, channel="log")
    refute_notified(engine, payload={"order": {"lines": [1]}})  # lists compare whole
    refute_notified(engine, payload={"order": {"id": 7, "gift": True}})


def test_a_failed_assert_notified_shows_what_was_sent_instead(tmp_path: Path) -> None:
    """The message names what was expected and lists the near misses, payloads included."""
    engine = engine_with_fakes(
        _app(tmp_path / "app.db"), store=_store(tmp_path / "t.db"), backend=MemoryBackend()
    )
    engine.notify("email", "ada@example.test", {"order": 8})
    with pytest.raises(AssertionError) as failed:
        assert_notified(engine, channel="email", recipient="ada@example.test", payload={"order": 7})
    message = str(failed.value)
    assert "expected a delivery on channel 'email' to 'ada@example.test'" in message
    assert "with a payload containing {'order': 7}; found none" in message
    assert "payload {'order': 8}" in message
    expected = "expected 2 deliveries to 'ada@example.test'; found 1"
    with pytest.raises(AssertionError, match=re.escape(expected)):
        assert_notified(engine, recipient="ada@example.test", count=2)
    with pytest.raises(AssertionError, match=r"expected no delivery on channel 'email'; found \["):
        refute_notified(engine, channel="email")


def test_assert_notified_checks_its_arguments(tmp_path: Path) -> None:
    """A channel the engine lacks, a non-str filter or a bad count is the test's mistake."""
    engine = engine_with_fakes(
        _app(tmp_path / "app.db"), store=_store(tmp_path / "t.db"), backend=MemoryBackend()
    )
    with pytest.raises(ValueError, match="engine has no channel 'sms' \\(it has email, log\\)"):
        refute_notified(engine, channel="sms")
    with pytest.raises(TypeError, match="recipient must be a str, not int"):
        assert_notified(engine, recipient=42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="count"):
        assert_notified(engine, count=0)
    with pytest.raises(TypeError, match="engine must be a Chimeway"):
        engine_with_fakes(object(), store=engine.store, backend=MemoryBackend())  # type: ignore[arg-type]


def test_the_guarantee_of_each_fake_is_the_channels(tmp_path: Path) -> None:
    """An at-most-once channel stays at-most-once under its fake."""
    store = _store(tmp_path / "app.db")
    app = Chimeway(
        store,
        MemoryBackend(),
        {"pager": FakeChannel(guarantee=DeliveryGuarantee.AT_MOST_ONCE, timeout=2.0)},
    )
    engine = engine_with_fakes(app, store=_store(tmp_path / "t.db"), backend=MemoryBackend())
    assert DeliveryGuarantee.AT_MOST_ONCE is fakes_of(engine)["pager"].guarantee
    assert fakes_of(engine)["pager"] is not app.channels["pager"]


def _testing_page_block(first_line: str) -> str:
    """The code block of docs/testing.md whose first line is ``first_line``."""
    for block in re.findall(r"```\w+\n(.*?)```", TESTING_PAGE.read_text("utf-8"), re.S):
        if block.startswith(first_line):
            return str(block)
    raise AssertionError(f"docs/testing.md has no block starting {first_line!r}")


def test_the_documented_app_test_passes(pytester: pytest.Pytester) -> None:
    """docs/testing.md's app test, with its pyproject setting, passes against a real app module.

    ``chimeway_app`` names the app's engine: chimeway_engine is it with fakes
    by name, and the app's own ledger file is never created.
    """
    pytester.makepyprojecttoml(_testing_page_block("# pyproject.toml"))
    pytester.mkpydir("myapp")
    pytester.makepyfile(
        **{
            "myapp/notify": """
from chimeway_backends.memory import MemoryBackend
from chimeway_core import Chimeway, SMTPChannel, SQLStore

engine = Chimeway(
    SQLStore("sqlite:///never-opened.db"),
    MemoryBackend(),
    {"email": SMTPChannel("smtp.invalid", sender="a@example.test",
                          subject_for=lambda d: "s", body_for=lambda d: "b"),
     "sms": SMTPChannel("smtp.invalid", sender="a@example.test",
                        subject_for=lambda d: "s", body_for=lambda d: "b")},
    routes={"email": "mail"},
)
""",
            "myapp/accounts": """
from myapp import notify


def sign_up(address, engine=notify.engine):
    engine.notify("email", address, {"template": "welcome", "locale": "en"})
""",
            "tests/test_signup": _testing_page_block("# tests/test_signup.py"),
        }
    )
    pytester.syspathinsert()
    installed = any(
        entry.value == "chimeway_core.testing.plugin" for entry in entry_points(group="pytest11")
    )
    # Installed, the entry point loads the plugin; from a source tree, name it.
    result = pytester.runpytest(*([] if installed else ["-p", "chimeway_core.testing.plugin"]))
    result.assert_outcomes(passed=1)
    assert not (pytester.path / "never-opened.db").exists()
