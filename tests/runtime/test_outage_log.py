"""A connection's outage is logged as it changes state, not once per reconnect attempt (a minute's outage was
130 lines from one process)."""

from __future__ import annotations

import logging

import pytest

from station_runtime.natsio.connect import OutageLog


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_an_outage_is_lost_then_reminded_at_growing_intervals_then_back(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    clock = Clock()
    outage = OutageLog("station-x", logging.getLogger("test.outage"), clock)
    outage.error(OSError("while connected"))  # not in an outage: said as it comes
    outage.lost()
    for _ in range(2 * 60 * 2):  # two minutes of attempts every 0.5 s
        clock.now += 0.5
        outage.error(ConnectionRefusedError("refused"))
        outage.lost()  # nats-py may report the disconnect again: the same outage
    outage.back()
    outage.back()
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        "NATS error (station-x): while connected",
        "NATS connection lost (station-x); reconnecting",
        "NATS still down (station-x) after 10s: refused",
        "NATS still down (station-x) after 60s: refused",
        "NATS back (station-x) after 120.0s",
    ]
    assert outage.lines == 5
