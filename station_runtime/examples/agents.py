"""Agent functions for the ``python`` provider used by the examples."""

from __future__ import annotations

from collections import Counter
from typing import Any


def word_count(text: Any) -> dict[str, Any]:
    """Count words: a deterministic stand-in for an agent that returns structured output."""
    words = str(text).lower().split()
    top = Counter(words).most_common(3)
    return {"words": len(words), "top": [w for w, _ in top]}
