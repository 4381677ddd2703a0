"""Where a resource's org comes from.

The org decides which NATS account (and so which tenant's data) a resource touches, so it must come from
something a tenant cannot forge: the namespace. The namespace label ``lattice.station.dev/org`` names the org
(set by whoever creates namespaces: the Helm per-org release, an admin); without it the namespace name is the org.
``spec.org`` in a manifest may repeat the org but never choose it: a mismatch is refused with a condition.
"""

from __future__ import annotations

from collections.abc import Mapping

from station_runtime.contract.errors import InvalidIdError
from station_runtime.contract.ids import validate_id

ORG_LABEL = "lattice.station.dev/org"


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
