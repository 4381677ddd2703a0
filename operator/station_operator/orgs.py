"""Where a resource's org comes from.

The org decides which NATS account (and so which tenant's data) a resource touches, so it must come from
something a tenant cannot forge: the namespace. The namespace label ``lattice.station.dev/org`` names the org
(set by whoever creates namespaces: the Helm per-org release, an admin); without it the namespace name is the org.
``spec.org`` in a manifest may repeat the org but never choose it: a mismatch is refused with a condition.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from station_runtime.contract.errors import InvalidIdError
from station_runtime.contract.ids import validate_id
from station_runtime.natsauth import AccountLimits
from station_runtime.natsio.state import StateLimits

ORG_LABEL = "lattice.station.dev/org"
#: The org's NATS account limits, on its namespace (the lattice-org chart writes it from ``natsLimits``): a JSON
#: object of the keys below, each -1 (unlimited) or a positive number.
LIMITS_ANNOTATION = "lattice.station.dev/nats-limits"
#: Chart key -> ``AccountLimits`` field.
LIMIT_KEYS = {"connections": "conn", "subscriptions": "subs", "payloadBytes": "payload", "dataBytes": "data",
              "jetstreamMemoryBytes": "mem_storage", "jetstreamDiskBytes": "disk_storage", "streams": "streams",
              "consumers": "consumer"}
#: The largest message the lattice sends (a work record at its bound, with headers): a smaller payload limit
#: would make the server close a connection mid-run.
MIN_PAYLOAD_BYTES = StateLimits().max_value_bytes + 64 * 1024


class OrgError(ValueError):
    """The resource's org cannot be determined or is not allowed."""


def resolve_org(namespace: str, namespace_labels: Mapping[str, str], spec_org: str | None) -> str:
    """Pure: the org of a resource in ``namespace``; raises OrgError saying what to fix."""
    org = namespace_labels.get(ORG_LABEL) or namespace
    try:
        validate_id(org, "org id")
    except InvalidIdError as exc:
        raise OrgError(f"namespace {namespace!r} maps to {exc}; set the namespace label {ORG_LABEL}") from exc
    if spec_org is not None and spec_org != org:
        raise OrgError(f"spec.org is {spec_org!r} but namespace {namespace!r} belongs to org {org!r}; "
                       "remove spec.org or use the namespace of that org")
    return org


def account_limits(namespace: str, annotations: Mapping[str, str]) -> AccountLimits:
    """Pure: the org's account limits from its namespace's annotation (none: unlimited, so that the server's own
    bounds apply); raises OrgError saying what to fix."""
    raw = annotations.get(LIMITS_ANNOTATION)
    if not raw:
        return AccountLimits()
    where = f"namespace {namespace!r} annotation {LIMITS_ANNOTATION}"
    try:
        given = json.loads(raw)
    except ValueError:
        raise OrgError(f"{where} is not JSON: write an object such as {{\"connections\": 100}}") from None
    if not isinstance(given, dict):
        raise OrgError(f"{where} must be a JSON object of limits, got {type(given).__name__}")
    unknown = sorted(set(given) - set(LIMIT_KEYS))
    if unknown:
        raise OrgError(f"{where} names unknown limits {unknown}: use {', '.join(LIMIT_KEYS)}")
    for key, value in given.items():
        if not isinstance(value, int) or isinstance(value, bool):
            raise OrgError(f"{where}: {key} must be a whole number (-1: unlimited), got {value!r}")
    payload = given.get("payloadBytes", -1)
    if payload != -1 and 0 < payload < MIN_PAYLOAD_BYTES:
        raise OrgError(f"{where}: payloadBytes {payload} is below the lattice's largest message "
                       f"({MIN_PAYLOAD_BYTES} bytes: a work record at its bound): use at least that, or -1")
    try:
        return AccountLimits(**{LIMIT_KEYS[key]: value for key, value in given.items()})
    except ValueError as exc:
        raise OrgError(f"{where}: {exc}") from None
