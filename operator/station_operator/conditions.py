"""Pure helpers for status conditions (metav1.Condition semantics: lastTransitionTime moves only on change)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, Literal

Status = Literal["True", "False", "Unknown"]


def condition(type_: str, status: bool | Status, reason: str, message: str = "",
              generation: int | None = None) -> dict[str, Any]:
    value: Status = ("True" if status else "False") if isinstance(status, bool) else status
    return {"type": type_, "status": value, "reason": reason, "message": message[:1024],
            "observedGeneration": generation}


def merge(previous: Iterable[dict[str, Any]] | None, updates: Iterable[dict[str, Any]],
          now: datetime | None = None) -> list[dict[str, Any]]:
    """The conditions after applying ``updates``: a condition keeps its lastTransitionTime unless its status
    changed; conditions not updated are kept as they were."""
    now_s = (now or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")
    by_type = {c["type"]: dict(c) for c in previous or []}
    for update in updates:
        old = by_type.get(update["type"])
        new = dict(update)
        new["lastTransitionTime"] = old.get("lastTransitionTime") if old and old.get("status") == new["status"] \
            else now_s
        by_type[update["type"]] = new
    return sorted(by_type.values(), key=lambda c: c["type"])
