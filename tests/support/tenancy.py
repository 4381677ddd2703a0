"""Assertions shared by the tests that run stations with per-org NATS accounts (JWT mode)."""

from __future__ import annotations

import nats
import pytest
from nats.js import JetStreamContext

from station_runtime.contract import subjects


async def sees_only_its_own_work(js: JetStreamContext, org: str, other_org: str) -> None:
    """Its own org's work bucket opens; the other org's does not exist in this account at all."""
    await js.key_value(subjects.bucket(org, "work"))
    with pytest.raises(Exception) as refused:
        await js.key_value(subjects.bucket(other_org, "work"))
    assert "not found" in str(refused.value).lower() or isinstance(refused.value, nats.errors.Error)
