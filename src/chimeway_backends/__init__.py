"""Thin adapters that run chimeway deliveries on a job queue.

``chimeway_backends.memory`` is the embedded default. ``chimeway_backends.rq``
and ``chimeway_backends.celery`` need their extras and import them lazily.
"""
