"""Validation of ids that become NATS subject tokens, KV keys and bucket names.

NATS would route a station id ``a.b`` as two tokens and ``*``/``>`` as wildcards, so an id that slips through
unvalidated lets one tenant's message land on another's subject. Every id is therefore checked where it enters the
system (manifests, CLI arguments, messages) and again where a subject is built.
"""

from __future__ import annotations

import os
import re
from typing import Annotated

from pydantic import AfterValidator, WithJsonSchema

from .errors import InvalidIdError

MAX_ID_LENGTH = 64
# Letters, digits, '-' and '_': safe as a subject token, a KV key and inside a JetStream bucket/stream name.
_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
ID_PATTERN = f"^{_ID_RE.pattern}$"


#: Ids seen valid recently: subject builders check the same org and station ids many times per work item.
_KNOWN_VALID: set[str] = set()
_KNOWN_VALID_MAX = 4096


def validate_id(value: object, kind: str = "id") -> str:
    """Return ``value`` if it is a valid id, else raise :class:`InvalidIdError` saying what is wrong."""
    if type(value) is str and value in _KNOWN_VALID:
        return value
    if not isinstance(value, str):
        raise InvalidIdError(kind, value, f"must be a string, not {type(value).__name__}")
    if not value:
        raise InvalidIdError(kind, value, "must not be empty")
    if len(value) > MAX_ID_LENGTH:
        raise InvalidIdError(kind, value, f"is {len(value)} characters long, the limit is {MAX_ID_LENGTH}")
    if _ID_RE.fullmatch(value):
        if len(_KNOWN_VALID) >= _KNOWN_VALID_MAX:
            _KNOWN_VALID.clear()
        _KNOWN_VALID.add(value)
        return value
    for bad, why in ((".", "it separates subject tokens"), ("*", "it is a NATS wildcard"),
                     (">", "it is a NATS wildcard")):
        if bad in value:
            raise InvalidIdError(kind, value, f"must not contain {bad!r}: {why}")
    if any(ch.isspace() for ch in value):
        raise InvalidIdError(kind, value, "must not contain whitespace")
    raise InvalidIdError(
        kind, value, "must start with a letter or digit and contain only letters, digits, '-' and '_'"
    )


def _checker(kind: str) -> AfterValidator:
    return AfterValidator(lambda v: validate_id(v, kind))


# The schema carries the pattern too (for the CRDs and other JSON-schema readers); validation itself stays in
# validate_id, whose errors say what is wrong instead of "string does not match pattern".
_SCHEMA = WithJsonSchema({"type": "string", "pattern": ID_PATTERN, "maxLength": MAX_ID_LENGTH, "minLength": 1})

OrgId = Annotated[str, _checker("org id"), _SCHEMA]
StationId = Annotated[str, _checker("station id"), _SCHEMA]
AgentName = Annotated[str, _checker("agent name"), _SCHEMA]
WorkId = Annotated[str, _checker("work id"), _SCHEMA]
Capability = Annotated[str, _checker("capability"), _SCHEMA]


def new_attempt_id() -> str:
    """A fresh attempt id: every assignment of a work item gets one, and every station write names it (fencing)."""
    return os.urandom(8).hex()
