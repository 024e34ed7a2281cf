"""The application every fault deployment runs, configured by one JSON environment variable.

The test process builds :class:`Settings`, passes them to worker processes
as ``FAULTS_SETTINGS`` (:meth:`Settings.env`), and builds the same engine on
its side with :func:`make_engine`. Two channels play the provider's script
(:mod:`tests.faults.provider`): ``provider`` (at-least-once) and
``provider-amo`` (at-most-once).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Final
from uuid import UUID

import attrs
from sqlalchemy import make_url

from chimeway_core.channels.base import DeliveryGuarantee
from chimeway_core.clock import Clock
from chimeway_core.jobs import Backend
from chimeway_core.retry import RetryPolicy
from chimeway_core.store import SQLStore
from tests.faults.provider import (
    FaultEngine,
    Hooks,
    ProcessHooks,
    ProviderChannel,
    RecordFault,
    RunFiles,
)

#: The variable worker processes read their settings from.
SETTINGS_VARIABLE: Final = "FAULTS_SETTINGS"
#: Three attempts, 0.2 s apart, no jitter.
RETRY: Final = RetryPolicy(max_attempts=3, initial_delay=0.2, backoff_factor=1.0, jitter=0.0)
CHANNELS: Final = ("provider", "provider-amo")


def _strings(values: Iterable[str]) -> tuple[str, ...]:
    return tuple(values)


@attrs.frozen(kw_only=True)
class Settings:
    """Everything a fault deployment's processes share.

    Times are seconds. The lease is ``timeout + lease_margin``; ``overrun``
    must exceed it for an ``overrun`` step to outlive its lease.
    """

    directory: str
    db_url: str
    admin_db_url: str
    queue: str = ""
    redis_url: str = ""
    broker_url: str = ""
    transport_options: Mapping[str, Any] = attrs.field(factory=dict)
    timeout: float = 1.0
    lease_margin: float = 1.0
    slow: float = 0.5
    overrun: float = 3.5
    requeue_after: float = 1.0
    relay_grace: float = 1.0
    job_timeout: int = 2
    rescue_interval: float = 0.5
    error_retry_delay: float = 1.0
    sabotage: tuple[str, ...] = attrs.field(default=(), converter=_strings)

    @property
    def files(self) -> RunFiles:
        """The run's shared files."""
        return RunFiles(Path(self.directory))

    def env(self) -> dict[str, str]:
        """The environment variable a worker process reads these settings from."""
        return {SETTINGS_VARIABLE: json.dumps(attrs.asdict(self))}

    @classmethod
    def from_env(cls) -> Settings:
        """The settings the test process passed."""
        return cls(**json.loads(os.environ[SETTINGS_VARIABLE]))

    def evolve(self, **changes: Any) -> Settings:
        """A copy with ``changes``."""
        return attrs.evolve(self, **changes)


def urgent_queue(queue: str) -> str:
    """The second queue a Celery or Dramatiq worker consumes: only redeliveries go there."""
    return f"{queue}-urgent"


def psycopg_url(url: str) -> str:
    """A SQLAlchemy PostgreSQL URL as a plain libpq URL (for ``psycopg.connect``)."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def make_engine(
    settings: Settings, backend: Backend, hooks: Hooks, *, clock: Clock | None = None
) -> FaultEngine:
    """The engine of one process of the deployment."""
    files = settings.files
    store = SQLStore(settings.db_url)
    record_fault = RecordFault(store.engine, psycopg_url(settings.admin_db_url), files)
    options: dict[str, Any] = {
        "timeout": settings.timeout,
        "slow": settings.slow,
        "overrun": settings.overrun,
        "record_fault": record_fault,
    }
    channel = ProviderChannel(files, hooks, **options)
    at_most_once = ProviderChannel(
        files, hooks, guarantee=DeliveryGuarantee.AT_MOST_ONCE, **options
    )
    return FaultEngine(
        store,
        backend,
        {"provider": channel, "provider-amo": at_most_once},
        files=files,
        fault_channels=(channel, at_most_once),
        retry=RETRY,
        clock=clock,
        lease_margin=settings.lease_margin,
        requeue_after=settings.requeue_after,
        relay_grace=settings.relay_grace,
    )


def worker_backend_options(settings: Settings, module: str) -> dict[str, Any]:
    """The backend options of a worker application ``module`` (Celery's, Dramatiq's)."""
    return {
        "queue": settings.queue,
        "engine": f"{module}:engine",
        "rescue_interval": settings.rescue_interval,
        "error_retry_delay": settings.error_retry_delay,
    }


def worker_engine(
    settings: Settings, backend: Backend, push_duplicate: Callable[[UUID], None]
) -> FaultEngine:
    """The engine of a worker process: real kills and sleeps, ``push_duplicate`` for redelivery."""
    hooks = ProcessHooks(push_duplicate, settings.files)
    made = make_engine(settings, backend, hooks)
    hooks.engine = made
    return made
