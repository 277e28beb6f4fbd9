"""Idempotency keys (Idempotency-Key header, `idempotency_key` in gRPC requests): what a key
may be, and the fingerprint of the request it was first used with.

The scheduler keeps each key with its tenant and the id it created
(services/scheduler/idempotency.py); the gateway checks the header with the same rule, so a
bad key is a 400 naming the header before any call is made.
"""

from __future__ import annotations

import hashlib
import re

from google.protobuf.message import Message

from corral.errors import InvalidArgument

MAX_KEY_LENGTH = 255
# UUIDs, ULIDs, base64 and their like; nothing a log line or a header could be confused by.
_KEY = re.compile(r"[A-Za-z0-9\-_.:~+/=]+")
KEY_RULE = f"1-{MAX_KEY_LENGTH} characters from A-Z a-z 0-9 - _ . : ~ + / ="


def check_key(key: str, name: str = "idempotency_key") -> str:
    """The key, or InvalidArgument naming `name` and the rule it breaks."""
    if not key:
        raise InvalidArgument(f"{name} is empty (it must be {KEY_RULE})")
    if len(key) > MAX_KEY_LENGTH:
        raise InvalidArgument(f"{name} is {len(key)} characters long (the most allowed is {MAX_KEY_LENGTH})")
    if not _KEY.fullmatch(key):
        raise InvalidArgument(f"{name} has a character outside the allowed set (it must be {KEY_RULE})")
    return key


def request_fingerprint(operation: str, request: Message) -> str:
    """SHA-256 of the operation and the request's deterministic serialization: the same
    request, however its JSON was spelled (key order, spacing, defaults left out), has the
    same fingerprint."""
    digest = hashlib.sha256(operation.encode() + b"\0")
    digest.update(request.SerializeToString(deterministic=True))
    return digest.hexdigest()
