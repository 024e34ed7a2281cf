"""Tests of the Celery backend, against real Redis and RabbitMQ brokers."""

import pytest

# The conformance cases live outside a test_ module: rewrite their asserts too.
pytest.register_assert_rewrite("tests.backends.celery.conformance")
