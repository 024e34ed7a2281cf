"""The demo's pieces in-process: the mix, the simulated provider, the report, the progress bar."""

from __future__ import annotations

import io
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest

from chimeway_core import Bounced, PermanentFailure, Sent, TemporaryFailure
from chimeway_core.cli.progress import ProgressBar
from chimeway_core.clock import VirtualClock
from chimeway_core.demo import DEFAULT_MIX, Mix, Profile, SimulatedProvider, run_demo
from chimeway_core.errors import OutcomeUnknownError
from chimeway_core.records import Delivery
from chimeway_core.states import DeliveryStatus
from chimeway_core.testing import make_delivery
from tests.cli.conftest import sqlite_ledger

START = datetime(2030, 1, 1, tzinfo=UTC)


def _delivery(key: str, attempt: int) -> Delivery:
    return make_delivery(
        id=uuid.uuid4(),
        channel="sim",
        recipient="someone@demo.invalid",
        idempotency_key=key,
        attempt_count=attempt,
        scheduled_at=START,
        created_at=START,
        updated_at=START,
    )


def test_mix_parses_relative_weights() -> None:
    """Named profiles get their weights, the others 0, and the text round-trips normalized."""
    mix = Mix.parse(" success=3, bounce=1 ")
    assert {Profile.SUCCESS: 3.0, Profile.BOUNCE: 1.0} == {
        p: w for p, w in mix.weights.items() if w
    }
    assert "success=0.75 temporary=0.00 permanent=0.00 bounce=0.25 slow=0.00 opted_out=0.00" == str(
        mix
    )
    assert (Profile.SUCCESS, Profile.BOUNCE) == (mix.pick(0.74), mix.pick(0.76))


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "the mix is empty"),
        ("success=1,success=2", "given twice"),
        ("success=0", "at least one positive weight"),
        ("success=nan", "finite number"),
        ("success=abc", "is not a number"),
        ("fast=1", "unknown profile 'fast'"),
    ],
)
def test_mix_refuses_bad_text(text: str, problem: str) -> None:
    """Every malformed mix raises ValueError with a one-line reason."""
    with pytest.raises(ValueError, match=problem):
        Mix.parse(text)


def test_provider_answers_depend_only_on_seed_key_and_attempt() -> None:
    """Two providers with one seed answer alike; the clock moves only in virtual time."""
    answers = []
    for _ in range(2):
        clock = VirtualClock(START)
        provider = SimulatedProvider(seed=11, mix=DEFAULT_MIX, clock=clock)
        run: list[object] = []
        for index in range(60):
            key = f"k-{index}"
            for attempt in (1, 2):
                try:
                    run.append(provider.send(_delivery(key, attempt), key))
                except OutcomeUnknownError as error:
                    run.append(str(error))
        answers.append((run, clock.now()))
    assert answers[0] == answers[1]
    assert answers[0][1] > START


@pytest.mark.parametrize(
    ("profile", "expected"),
    [
        (Profile.SUCCESS, Sent),
        (Profile.PERMANENT, PermanentFailure),
        (Profile.BOUNCE, Bounced),
        (Profile.TEMPORARY, TemporaryFailure),
    ],
)
def test_provider_answers_the_first_attempt_as_the_profile_says(
    profile: Profile, expected: type
) -> None:
    """A mix of one profile makes every first answer of that kind."""
    provider = SimulatedProvider(seed=0, mix=Mix.parse(f"{profile}=1"), clock=VirtualClock(START))
    assert isinstance(provider.send(_delivery("key", 1), "key"), expected)


def test_slow_answers_past_the_timeout_are_unknown() -> None:
    """A slow profile raises OutcomeUnknownError after exactly the timeout when it answers late."""
    clock = VirtualClock(START)
    provider = SimulatedProvider(seed=0, mix=Mix.parse("slow=1"), clock=clock, timeout=5.0)
    with pytest.raises(OutcomeUnknownError, match="no answer within 5 s"):
        provider.send(_delivery("key", 1), "key")
    assert (1, 1, 5.0) == (
        provider.slow_answers,
        provider.timeouts,
        (clock.now() - START).total_seconds(),
    )


def test_opted_out_recipients_are_not_allowed() -> None:
    """The preference question is answered from the same profile."""
    provider = SimulatedProvider(seed=0, mix=Mix.parse("opted_out=1"), clock=VirtualClock(START))
    assert not provider.allows(_delivery("key", 0))


def test_report_is_consistent(tmp_path: Path) -> None:
    """Statuses and the attempt histogram each count every delivery; rows match the outcomes."""
    store, _ = sqlite_ledger(tmp_path / "demo.sqlite3")
    progress: list[int] = []
    report = run_demo(store, deliveries=80, seed=4, batch_size=30, on_terminal=progress.append)
    assert report.all_terminal
    assert 80 == sum(s.count for s in report.statuses) == sum(n for _, n in report.attempts)
    assert list(range(1, 81)) == progress
    rows = {r.row: r.count for r in report.rows}
    succeeded = sum(s.count for s in report.statuses if s.status is DeliveryStatus.SUCCEEDED)
    assert succeeded == rows["succeeded"]
    attempts = sum(n * count for n, count in report.attempts)
    recorded = sum(r.count for r in report.rows if r.action not in {"suppress", "defer"})
    assert attempts == report.provider_calls == recorded
    store.engine.dispose()


def test_progress_bar_draws_only_when_enabled() -> None:
    """The bar redraws in place on a terminal, and writes nothing otherwise."""
    ticks = iter([0.0, 0.05, 0.2])
    stream = io.StringIO()
    bar = ProgressBar(stream, 10, width=10, clock=lambda: next(ticks))
    bar.update(1)
    bar.update(2)  # within 0.1 s of the last draw: skipped
    bar.update(5)
    bar.close()
    assert (
        "\r[#.........]  1/10 deliveries done"
        "\r[#####.....]  5/10 deliveries done"
        "\r[#####.....]  5/10 deliveries done\n" == stream.getvalue()
    )
    quiet = io.StringIO()
    off = ProgressBar(quiet, 10, enabled=False)
    off.update(3)
    off.close()
    assert "" == quiet.getvalue()
