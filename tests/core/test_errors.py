"""The exceptions chimeway raises: what they carry survives a pickle, what they are stays."""

from __future__ import annotations

import pickle
import uuid

import pytest

from chimeway_core.errors import (
    ChimewayError,
    DeliveriesVanishedError,
    IdempotencyKeyConflictError,
    LockReusedError,
    NoDatabaseConfiguredError,
)

_ID = uuid.UUID("0b0e7a3c-1f5e-4c36-9d4e-2f1e0e9f1d11")


@pytest.mark.parametrize(
    ("error", "attributes"),
    [
        (LockReusedError(_ID, "defer"), {"delivery_id": _ID, "operation": "defer"}),
        (
            DeliveriesVanishedError([("email", "k1"), ("sms", "k2")], 3),
            {"keys": (("email", "k1"), ("sms", "k2")), "tries": 3},
        ),
        (NoDatabaseConfiguredError("alembic.ini"), {"config_file": "alembic.ini"}),
        (NoDatabaseConfiguredError(None), {"config_file": None}),
    ],
)
def test_a_runtime_error_with_a_class_of_its_own_keeps_its_data_through_pickle(
    error: ChimewayError, attributes: dict[str, object]
) -> None:
    """Each is a ChimewayError and still the RuntimeError it was; pickle keeps message and data."""
    assert isinstance(error, ChimewayError)
    assert isinstance(error, RuntimeError)
    copy = pickle.loads(pickle.dumps(error))
    assert (type(error), str(error)) == (type(copy), str(copy))
    assert attributes == {name: getattr(copy, name) for name in attributes}


def test_an_idempotency_conflict_names_its_keys_on_one_line_and_survives_pickle() -> None:
    """Every key is kept; the message shows five, escaped, so a key cannot forge a log line."""
    keys = [("email", "k\r\nforged: line")] + [("sms", f"k{i}") for i in range(6)]
    error = IdempotencyKeyConflictError(keys)
    assert tuple(keys) == error.keys
    message = str(error)
    assert not any(char in message for char in "\r\n")
    assert message.startswith(
        "idempotency key reused for a different request: 'k\\r\\nforged: line' on channel 'email', "
    )
    assert "'k3' on channel 'sms' and 2 more (" in message
    copy = pickle.loads(pickle.dumps(error))
    assert (type(error), message, error.keys) == (type(copy), str(copy), copy.keys)
