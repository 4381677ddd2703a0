"""Agent functions for the ``python`` provider used by the examples."""

from __future__ import annotations

from collections import Counter
from typing import Any


def word_count(text: Any) -> dict[str, Any]:
    """Count words: a deterministic stand-in for an agent that returns structured output."""
    words = str(text).lower().split()
    top = Counter(words).most_common(3)
    return {"words": len(words), "top": [w for w, _ in top]}


def count_words(text: str) -> dict[str, int]:
    """Count the words of a text, and its distinct words (a Python function tool)."""
    words = text.lower().split()
    return {"words": len(words), "distinct": len(set(words))}
