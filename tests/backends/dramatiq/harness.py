"""The Dramatiq harness of the conformance suite and the stateful machine on the tests' brokers.

The harness itself is shipped (:mod:`chimeway_backends.dramatiq.harness`);
this opens one on a fresh broker of a test's own: a real
:class:`dramatiq.Worker` in threads of the test process, performing with
the very engine the harness built.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from chimeway_backends.dramatiq import DramatiqBackend
from chimeway_backends.dramatiq.harness import DramatiqHarness, worker_for
from chimeway_core.store import SQLStore
from chimeway_core.testing.conformance import EngineFactory, conformance_engine
from tests.backends.dramatiq.conftest import Broker

__all__ = ["DramatiqHarness", "dramatiq_harness"]


@contextmanager
def dramatiq_harness(
    broker: Broker,
    store: SQLStore,
    *,
    engine_factory: EngineFactory = conformance_engine,
    error_retry_delay: float = 10.0,
) -> Iterator[DramatiqHarness]:
    """An engine on a DramatiqBackend over ``broker``, its worker running meanwhile.

    The backend never rescues on its own (the test does); a job whose
    ``perform()`` raised runs again after ``error_retry_delay`` seconds.
    """
    made = broker.make()
    backend = DramatiqBackend(
        made, queue=broker.queue, rescue_interval=None, error_retry_delay=error_retry_delay
    )
    engine = engine_factory(store, backend)
    backend.bind(engine)
    try:
        with worker_for(backend):
            yield DramatiqHarness(engine)
    finally:
        made.close()
