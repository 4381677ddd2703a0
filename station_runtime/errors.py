"""The runtime's error tree: catch the layer you can act on.

Every error the runtime raises on purpose derives from :class:`LatticeError`; the tree below says where each is
defined and what a caller does about it. Messages say what is wrong and what to do next, and never carry a
secret (no token, seed, creds or API key).

    LatticeError
     ├── RetryLater                 nothing is wrong with the request; try again after ``retry_after_s``
     │    └── LatticeUnavailable    NATS (or JetStream) cannot be reached right now
     ├── NoLatticeError             no lattice where we looked (no NATS at the URL, no state for the org)
     ├── NotFoundError              no such work item or agent in the org
     ├── NoStationError             no live station can run it (none hosts the agent, or none is up)
     ├── InvokeFailed               (client) a station ran the request and it failed; ``error`` is its answer
     ├── ConflictError              the id exists with another definition (a WorkItem edited under its name)
     ├── StoreFullError             a bounded store of the org is full; the message names it and its limit
     ├── StateLayoutError           the org's stores cannot have the replicas asked for (fewer NATS servers)
     ├── ResultTooLarge             a result is larger than the lattice keeps (also a ValueError)
     ├── AgentFailure               (executors.base) an agent could not produce a result; ``code`` says
     │                              whether another attempt may help
     ├── ManifestError              (api.loader) manifests are invalid; ``problems`` lists each (a ValueError)
     ├── NatsServerError            (natsio.embedded) the embedded nats-server did not start, or died
     ├── IllegalTransition          (work.phases) a phase change the phase machine forbids: a bug
     ├── Superseded                 (station.work) the record belongs to another attempt: stop, write nothing
     ├── ContractError              (contract.errors) the wire contract
     │    ├── InvalidIdError        an id that would become a subject token is malformed (a ValueError)
     │    └── DecodeError           bytes from the wire are not a valid message; keeps the raw bytes
     │         └── PayloadTooLargeError
     └── NatsAuthError              (natsauth.errors) keys, JWTs, account provisioning

This module imports nothing: every layer of the runtime may raise these (``pyproject.toml``'s import-linter
contracts put it below the contract).
"""

from __future__ import annotations


class LatticeError(Exception):
    """Root of every error the runtime raises on purpose."""


class RetryLater(LatticeError):
    """The request is fine but cannot be served now (busy, contention, NATS away): try again after
    ``retry_after_s`` seconds (None: the caller picks its own backoff)."""

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        self.retry_after_s = retry_after_s
        super().__init__(message)


class LatticeUnavailable(RetryLater):
    """NATS or JetStream cannot be reached right now."""


class NoLatticeError(LatticeError):
    """No lattice where we looked: nothing listens at the NATS URL, or the org has no state there."""


class NotFoundError(LatticeError):
    """No such work item or agent in the org."""


class NoStationError(LatticeError):
    """No live station can run the request."""


class ConflictError(LatticeError):
    """The id exists already with a different definition."""


class StoreFullError(LatticeError):
    """A bounded store of the org (a KV bucket, the events stream, the results store) refused a write because it
    is full."""


class AccountLimitError(LatticeError):
    """The org's NATS account is at one of its limits (connections, storage, streams, consumers, ...): the
    message names the setting to raise."""


class StateLayoutError(LatticeError):
    """The org's stores cannot be kept on as many servers as the lattice is set to (``LATTICE_STATE_REPLICAS``):
    the NATS servers have fewer JetStream members, or refused to change an existing store's replicas."""


class ResultTooLarge(LatticeError, ValueError):
    """A result is larger than the lattice keeps."""
