"""Errors of :mod:`station_runtime.natsauth` (part of :mod:`station_runtime.errors`' tree), by what the caller
does next::

    NatsAuthError
     ├── InvalidKeyError        a seed or public key is malformed or of the wrong role: fix the data (permanent)
     ├── JwtError               a token cannot be decoded, or its signature does not verify (permanent)
     │    └── UntrustedIssuerError   well formed, but not signed by the operator we serve (permanent)
     └── ProvisioningError      pushing or confirming an account JWT failed
          ├── PushRejectedError      the resolver answered with an error: its description is kept (permanent)
          └── ResolverUnavailableError no resolver answered in time, or the connection failed (retry later)

No message ever contains a seed or a token: only public keys, claim names and the server's own description.
"""

from __future__ import annotations

from ..errors import LatticeError


class NatsAuthError(LatticeError):
    """Root of every error raised by this package."""


class InvalidKeyError(NatsAuthError, ValueError):
    """A seed or public key is malformed, fails its checksum, or belongs to another role."""


class JwtError(NatsAuthError, ValueError):
    """A JWT is malformed (not three base64url parts of JSON) or its signature does not verify."""


class UntrustedIssuerError(JwtError):
    """The JWT verifies, but its issuer is not one of the keys we trust (for example a foreign operator)."""


class ProvisioningError(NatsAuthError):
    """Pushing an account JWT to the resolver, or confirming it, failed."""


class PushRejectedError(ProvisioningError):
    """The account resolver refused the push; ``description`` is the server's reason."""

    def __init__(self, account: str, code: int, description: str) -> None:
        self.account = account
        self.code = code
        self.description = description
        super().__init__(f"account {account}: resolver refused the JWT ({code}): {description}")


class ResolverUnavailableError(ProvisioningError):
    """No account resolver answered: the server is not in operator mode with a full resolver, or unreachable."""
