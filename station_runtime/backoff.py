"""Pure backoff arithmetic."""

from __future__ import annotations

import random


def compute_backoff(attempt: int, *, base_s: float = 0.25, factor: float = 2.0, max_s: float = 30.0,
                    jitter: bool = True, rng: random.Random | None = None) -> float:
    """Delay before retry number ``attempt`` (0-based): exponential, capped, with full jitter on the upper half
    so that many clients retrying at once spread out."""
    delay = min(base_s * factor ** max(attempt, 0), max_s)
    if jitter:
        delay = delay / 2 + (rng or random).uniform(0, delay / 2)
    return delay
