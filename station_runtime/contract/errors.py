"""Errors of the wire contract (part of :mod:`station_runtime.errors`' tree).

    ContractError
    ├── InvalidIdError      an id that would become a subject token is malformed
    └── DecodeError         bytes from the wire are not a valid message (keeps the raw bytes)
        └── PayloadTooLargeError
"""

from __future__ import annotations

from ..errors import LatticeError


class ContractError(LatticeError):
    """Base of every error raised by the wire contract."""


class InvalidIdError(ContractError, ValueError):
    """An id that becomes a subject token or bucket name is malformed."""

    def __init__(self, kind: str, value: object, reason: str) -> None:
        self.kind = kind
        self.value = value
        self.reason = reason
        super().__init__(f"invalid {kind} {value!r}: {reason}")


class DecodeError(ContractError):
    """A message from the wire could not be decoded into its model."""

    def __init__(self, message: str, data: bytes) -> None:
        self.data = data
        super().__init__(message)


class PayloadTooLargeError(DecodeError):
    """A message is larger than the contract allows for its kind."""

    def __init__(self, size: int, limit: int, data: bytes) -> None:
        self.size = size
        self.limit = limit
        super().__init__(f"payload of {size} bytes exceeds the limit of {limit} bytes", data[:256])
