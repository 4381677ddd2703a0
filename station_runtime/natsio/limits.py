"""What a NATS account limit looks like when it is hit, and what to do about it.

The server enforces an org's account limits (connections, subscriptions, payload, JetStream storage, streams,
consumers: ``natsauth.claims.AccountLimits``, set per org from the lattice-org chart's ``natsLimits``). Its own
words for each ("maximum consumers limit reached") do not say which setting it is; :func:`explain_limit` turns
them into one that does. Pure.
"""

from __future__ import annotations

from typing import Final

#: Where an org's limits are set, for the advice.
SETTING: Final = ("natsLimits.{key} in the org's lattice-org chart values (the namespace annotation "
                  "lattice.station.dev/nats-limits)")

#: (what the server says, lowercased; the chart key; what it limits)
_LIMITS: Final = (
    ("maximum account active connections exceeded", "connections", "connections at once"),
    ("maximum subscriptions exceeded", "subscriptions", "subscriptions across its connections"),
    ("maximum payload exceeded", "payloadBytes", "message size"),
    ("maximum payload violation", "payloadBytes", "message size"),
    ("insufficient storage resources", "jetstreamDiskBytes", "JetStream storage"),
    ("maximum number of streams reached", "streams", "JetStream streams"),
    ("maximum consumers limit reached", "consumers", "JetStream consumers"),
)


def _hit(text: str) -> tuple[str, str] | None:
    """(chart key, what it limits) of the account limit the server error ``text`` reports, or None."""
    lowered = text.lower()
    return next(((key, what) for said, key, what in _LIMITS if said in lowered), None)


def limit_key(text: str) -> str | None:
    """The chart key of the account limit that ``text`` (a server error) says was hit, or None."""
    hit = _hit(text)
    return hit[0] if hit else None


def explain_limit(text: str) -> str | None:
    """A sentence naming the org's account limit that the server error ``text`` reports and where to raise it;
    None when ``text`` is not about an account limit."""
    if (hit := _hit(text)) is None:
        return None
    key, what = hit
    server = " or the server's own bound (jetstream max_file_store)" if key == "jetstreamDiskBytes" else ""
    return (f"the org's NATS account is at its limit of {what} (the server said: {text.strip()}); raise "
            f"{SETTING.format(key=key)}{server}, or free some")
