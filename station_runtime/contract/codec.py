"""Bytes <-> models at the edge. Decoding checks size first, then validates; failures raise DecodeError."""

from __future__ import annotations

import logging
from typing import Final, TypeVar

from pydantic import BaseModel, TypeAdapter, ValidationError

from ..telemetry import metrics
from .errors import DecodeError, PayloadTooLargeError
from .messages import InvokeError, InvokeResult

#: Default ceiling for a control message; work inputs and results have their own limits.
MAX_MESSAGE_BYTES: Final = 1024 * 1024

M = TypeVar("M", bound=BaseModel)


def encode(message: BaseModel) -> bytes:
    return message.model_dump_json(by_alias=True, exclude_none=True).encode()


def _summary(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False)[:5]:
        loc = ".".join(str(p) for p in err["loc"]) or "<message>"
        parts.append(f"{loc}: {err['msg']}")
    more = f" (+{exc.error_count() - 5} more)" if exc.error_count() > 5 else ""
    return "; ".join(parts) + more


def decode(data: bytes, model: type[M], *, max_bytes: int = MAX_MESSAGE_BYTES) -> M:
    """Decode ``data`` as ``model``; raise :class:`DecodeError` naming what is wrong."""
    if len(data) > max_bytes:
        raise PayloadTooLargeError(len(data), max_bytes, data)
    try:
        return model.model_validate_json(data)
    except ValidationError as exc:
        raise DecodeError(f"invalid {model.__name__}: {_summary(exc)}", data[:1024]) from exc


def decode_or_log(data: bytes, model: type[M], *, what: str, logger: logging.Logger) -> M | None:
    """For subscription callbacks: the message, or None after a warning that says what was wrong. A malformed
    message from the network must cost a log line, never the subscriber."""
    try:
        return decode(data, model)
    except DecodeError as exc:
        logger.warning("ignoring malformed %s: %s", what, exc)
        metrics.MESSAGES_DROPPED.add(1, {"reason": "malformed", "kind": what})
        return None


_INVOKE_REPLY: Final = TypeAdapter(InvokeResult | InvokeError)


def decode_invoke_reply(data: bytes) -> InvokeResult | InvokeError:
    if len(data) > MAX_MESSAGE_BYTES * 8:
        raise PayloadTooLargeError(len(data), MAX_MESSAGE_BYTES * 8, data)
    try:
        return _INVOKE_REPLY.validate_json(data)
    except ValidationError as exc:
        raise DecodeError(f"invalid invoke reply: {_summary(exc)}", data[:1024]) from exc
