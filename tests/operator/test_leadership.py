"""The leader election's pure decision and its settings' checks (the Lease itself: test_operator_failover)."""

from __future__ import annotations

import pytest
from station_operator.leadership import LeaseSettings, Observed, Verdict, decide


@pytest.mark.parametrize(("observed", "now", "expected"), [
    (None, 0.0, Verdict.ACQUIRE),  # no lease yet
    (Observed("", "7", 15.0, 0.0), 1.0, Verdict.ACQUIRE),  # given up
    (Observed("me", "7", 15.0, 0.0), 100.0, Verdict.RENEW),  # ours, however old
    (Observed("other", "7", 15.0, 0.0), 14.9, Verdict.WAIT),  # another's, renewed within its duration
    (Observed("other", "7", 15.0, 0.0), 15.1, Verdict.ACQUIRE),  # unchanged for longer than its duration
])
def test_a_candidate_takes_a_lease_only_when_nobody_holds_it_or_it_expired(observed: Observed | None, now: float,
                                                                           expected: Verdict) -> None:
    assert decide(observed, "me", now) is expected


def test_the_timings_keep_the_renew_deadline_inside_the_lease() -> None:
    s = LeaseSettings.for_duration("ns", 15.0, identity="me")
    assert (s.lease_duration_s, s.renew_deadline_s, s.renew_s) == (15.0, 10.0, 2.0)
    with pytest.raises(ValueError, match="renew deadline < lease duration"):
        LeaseSettings(namespace="ns", lease_duration_s=5.0, renew_deadline_s=6.0)
