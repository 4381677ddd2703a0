"""A station moves to creds renewed in place (``station.creds``), and says so when its creds near their end."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from station_runtime.natsauth import OperatorKeys, OrgAuthority
from station_runtime.station.creds import CredsFollower, expires_at

pytestmark = pytest.mark.timeout(30)


def _creds(authority: OrgAuthority, expires: int | None) -> str:
    account = authority.org_account("acme")
    return authority.issue_station_creds(account, "s1", expires_at=expires)


async def test_renewed_creds_make_the_station_reconnect_once_and_an_unrenewed_end_is_said(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    authority = OrgAuthority(OperatorKeys.generate("t"))
    path = tmp_path / "s1.creds"
    path.write_text(_creds(authority, 1_000_000))
    reconnects: list[int] = []

    async def reconnect() -> None:
        reconnects.append(1)

    now = [999_990.0]
    follower = CredsFollower(path, reconnect, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="station_runtime.station.creds"):
        assert not await follower.check()  # unchanged, but 10 s from its end: said once
        assert not await follower.check()
    assert [r.getMessage() for r in caplog.records if "were not renewed" in r.getMessage()] != []
    assert len([r for r in caplog.records if "were not renewed" in r.getMessage()]) == 1
    path.write_text("-----BEGIN NATS USER JWT-----\nhalf")  # a writer caught mid-write: not taken
    assert not await follower.check() and reconnects == []
    path.write_text(_creds(authority, 2_000_000))
    assert await follower.check() and reconnects == [1] and follower.renewals == 1
    assert not await follower.check() and reconnects == [1]


def test_the_end_of_creds_is_read_from_their_jwt() -> None:
    authority = OrgAuthority(OperatorKeys.generate("t"))
    assert expires_at(_creds(authority, 1_234_567)) == 1_234_567
    assert expires_at(_creds(authority, None)) is None
    assert expires_at("not creds") is None
