"""Adapters that run chimeway deliveries on a job queue, one package per queue.

``chimeway_backends.rq`` and ``chimeway_backends.celery`` need their extras
and import them lazily; each registers in the ``chimeway.backends``
entry-point group, where ``chimeway worker --backend`` finds it. The embedded
default queue is the core's own, :mod:`chimeway_core.memory`;
``chimeway_backends.memory`` still imports it, for code written before.
"""
