"""The org state bounds of tests: small, since every test has an org of its own on the session's nats-server and
each org reserves its bounds there; stations beat every 0.5 s, so the registry forgets them after 1.5 s."""

from __future__ import annotations

from station_runtime.natsio.state import StateLimits

MIB = 1024 * 1024
TEST_LIMITS = StateLimits(presence_ttl_s=1.5, work_max_bytes=64 * MIB, agents_max_bytes=4 * MIB,
                          stations_max_bytes=4 * MIB, results_max_bytes=64 * MIB, events_max_bytes=16 * MIB,
                          journal_max_bytes=16 * MIB)
