"""Dramatiq's encoder must be JSON: with pickle, no backend is built and no worker boots.

A Dramatiq worker decodes each message with the process-wide encoder
(``dramatiq.set_encoder``) before any actor sees it, so the actor's own
refusal of foreign arguments comes too late for a pickle payload: chimeway
refuses the encoder itself, when the backend is built and when a worker of
its broker boots. No service is needed: Dramatiq's StubBroker carries the
messages.
"""

from __future__ import annotations

import os
import pickle
import re
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import dramatiq
import pytest
from dramatiq.brokers.stub import StubBroker
from dramatiq.encoder import JSONEncoder, PickleEncoder

from chimeway_backends.dramatiq import (
    ACTOR_NAME,
    DramatiqBackend,
    UnsafeEncoderError,
    run_worker,
)
from chimeway_core.engine import Chimeway
from chimeway_core.errors import ChimewayError
from chimeway_core.store import SQLStore
from chimeway_core.testing import FakeChannel
from tests.backends._workers import SRC
from tests.faults.deployments import PickleCanary

#: The fix every refusal names.
FIX = r"dramatiq\.set_encoder\(dramatiq\.JSONEncoder\(\)\)"

#: An application that sets the pickle encoder after it built chimeway's backend.
PICKLED_APP = """
import dramatiq
from dramatiq.brokers.stub import StubBroker
from dramatiq.encoder import PickleEncoder

from chimeway_backends.dramatiq import DramatiqBackend

broker = StubBroker()
backend = DramatiqBackend(broker, engine="pickled_app:engine", rescue_interval=None)
dramatiq.set_encoder(PickleEncoder())
"""


class DatesAsText(JSONEncoder):
    """A JSON encoder of more types, as applications write them."""


@pytest.fixture
def set_encoder() -> Iterator[Callable[[dramatiq.Encoder], None]]:
    """``dramatiq.set_encoder`` for this test: the encoder before it is restored after."""
    before = dramatiq.get_encoder()
    yield dramatiq.set_encoder
    dramatiq.set_encoder(before)


def _engine(broker: dramatiq.Broker) -> Chimeway:
    backend = DramatiqBackend(broker, rescue_interval=None)
    engine = Chimeway(SQLStore("sqlite://"), backend, {"sms": FakeChannel()})
    backend.bind(engine)
    return engine


def test_the_backend_is_not_built_on_a_pickle_encoder(
    set_encoder: Callable[[dramatiq.Encoder], None],
) -> None:
    """DramatiqBackend() raises UnsafeEncoderError naming the fix; no actor is declared."""
    set_encoder(PickleEncoder())
    broker = StubBroker()
    with pytest.raises(UnsafeEncoderError, match=rf"PickleEncoder.*{FIX}") as raised:
        DramatiqBackend(broker)
    copy = pickle.loads(pickle.dumps(raised.value))
    assert (True, "PickleEncoder", str(raised.value), False) == (
        isinstance(raised.value, ChimewayError),
        raised.value.encoder,
        str(copy),
        ACTOR_NAME in broker.actors,
    )


def test_json_encoders_and_their_subclasses_are_taken(
    set_encoder: Callable[[dramatiq.Encoder], None],
) -> None:
    """The default JSONEncoder and a subclass of it build the backend."""
    built = []
    for encoder in (JSONEncoder(), DatesAsText()):
        set_encoder(encoder)
        built.append(DramatiqBackend(StubBroker()).actor.actor_name)
    assert [ACTOR_NAME, ACTOR_NAME] == built


def test_a_worker_does_not_boot_once_the_encoder_is_pickle(
    set_encoder: Callable[[dramatiq.Encoder], None], tmp_path: Path
) -> None:
    """An encoder set to pickle after the backend was built: the worker reads no message.

    The pickle message whose argument would create a file stays in the queue
    unread, and the engine is never even resolved (the check comes first).
    """
    broker = StubBroker()
    DramatiqBackend(broker, queue="chimeway", engine="nowhere:engine", rescue_interval=None)
    set_encoder(PickleEncoder())
    canary = tmp_path / "canary"
    broker.enqueue(dramatiq.Message("chimeway", ACTOR_NAME, (PickleCanary(canary),), {}, {}))
    worker = dramatiq.Worker(broker, queues={"chimeway"}, worker_threads=1)
    with pytest.raises(UnsafeEncoderError, match=FIX):
        worker.start()
    assert (False, 1) == (canary.exists(), broker.queues["chimeway"].qsize())


def test_run_worker_refuses_a_pickle_encoder(
    set_encoder: Callable[[dramatiq.Encoder], None],
) -> None:
    """``run_worker`` (``chimeway worker --backend dramatiq``) raises before it consumes."""
    engine = _engine(StubBroker())
    set_encoder(PickleEncoder())
    stop = threading.Event()
    timer = threading.Timer(30, stop.set)  # a worker that did boot returns after 30 s
    timer.start()
    try:
        with pytest.raises(UnsafeEncoderError, match=FIX):
            run_worker(engine, threads=1, rescue_interval=None, stop=stop)
    finally:
        timer.cancel()


@pytest.mark.slow
def test_a_dramatiq_command_of_a_pickle_app_exits_naming_the_fix(tmp_path: Path) -> None:
    """``dramatiq pickled_app:broker`` on an app that sets pickle exits non-zero with the fix."""
    (tmp_path / "pickled_app.py").write_text(PICKLED_APP)
    command = [sys.executable, "-m", "dramatiq", "pickled_app:broker", "--processes", "1"]
    done = subprocess.run(
        [*command, "--threads", "1"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(SRC)])},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode != 0, output
    assert re.search(rf"UnsafeEncoderError: .*PickleEncoder.*{FIX}", output), output
