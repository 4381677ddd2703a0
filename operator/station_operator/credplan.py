"""Which station creds to keep, issue and revoke (pure).

A Station's creds Secret holds one ``{station id}.creds`` per replica. Creds end (their user JWT has an expiry)
and are issued again when a third of their lifetime is left; the pod sees the Secret's new file and the station
reconnects with it before the old one ends (``station_runtime.station.creds``). Creds of station ids the Station no
longer has (it was scaled down) are dropped and their users revoked in the account JWT, so that the server refuses
them at once. A renewed user is not revoked: its pod may still be connected with it until it has moved.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from station_runtime.natsauth import user_public_key
from station_runtime.station.creds import expires_at


@dataclass(frozen=True)
class CredsPlan:
    #: Creds kept as they are: ``{station id}.creds`` -> text.
    keep: dict[str, str]
    #: Station ids that get new creds (new replicas, creds close to their end, creds that cannot be read).
    issue: list[str]
    #: User public keys to revoke (the creds of removed replicas).
    revoke: list[str]


def plan_station_creds(existing: Mapping[str, str], station_ids: Sequence[str], *, now: float,
                       lifetime_s: float) -> CredsPlan:
    keep: dict[str, str] = {}
    issue: list[str] = []
    for station_id in station_ids:
        text = existing.get(f"{station_id}.creds")
        end = expires_at(text) if text else None
        # Creds without an end (issued before creds ended) are replaced too: from now on every one ends.
        if text is None or end is None or end - now < lifetime_s / 3:
            issue.append(station_id)
        else:
            keep[f"{station_id}.creds"] = text
    wanted = {f"{s}.creds" for s in station_ids}
    revoke = []
    for key, text in sorted(existing.items()):
        if key not in wanted and key.endswith(".creds"):
            try:
                revoke.append(user_public_key(text))
            except Exception:
                continue
    return CredsPlan(keep, issue, revoke)
