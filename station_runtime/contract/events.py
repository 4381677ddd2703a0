"""CloudEvents 1.0 (structured JSON mode) for every state change, persisted in the org's events stream."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field

from .messages import utcnow

EVENT_TYPE_PREFIX: Final = "dev.lattice"
Category = Literal["station", "agent", "work", "security"]

#: Every event type, by category. The subject is ``lattice.v1.{org}.events.{category}.{type}``.
EVENT_TYPES: Final[dict[Category, tuple[str, ...]]] = {
    "station": ("joined", "left", "lost"),
    "agent": ("registered", "updated", "removed"),
    "work": (
        "submitted", "scheduled", "unschedulable", "assigned", "started", "progress", "succeeded",
        "failed", "requeued", "escalated", "cancel_requested", "cancelled", "rejected",
        # A run waiting for a person: a call to approve, a question to answer; what was decided, or the deadline.
        "approval_requested", "input_requested", "approval_decided", "input_received", "wait_timed_out",
    ),
    # What the control plane refused because it was not what its sender may say: written by the control plane
    # only (a station may not publish in this category).
    "security": ("forged_bid",),
}


class CloudEvent(BaseModel):
    model_config = ConfigDict(frozen=True, extra="allow")

    specversion: Literal["1.0"] = "1.0"
    id: str = Field(default_factory=lambda: uuid.uuid4().hex)
    source: str
    type: str
    subject: str | None = None
    time: datetime = Field(default_factory=utcnow)
    datacontenttype: str = "application/json"
    data: dict[str, Any] = Field(default_factory=dict)
    traceparent: str | None = None

    @property
    def category(self) -> str:
        return self.type.removeprefix(f"{EVENT_TYPE_PREFIX}.").split(".", 1)[0]

    @property
    def short_type(self) -> str:
        return self.type.removeprefix(f"{EVENT_TYPE_PREFIX}.")


def make_event(
    category: Category, type_: str, *, org: str, source: str, subject: str | None = None,
    data: dict[str, Any] | None = None, traceparent: str | None = None,
) -> CloudEvent:
    if type_ not in EVENT_TYPES[category]:
        raise ValueError(f"unknown {category} event type {type_!r}; known: {', '.join(EVENT_TYPES[category])}")
    return CloudEvent(
        source=f"/lattice/{org}/{source}", type=f"{EVENT_TYPE_PREFIX}.{category}.{type_}", subject=subject,
        data=data or {}, traceparent=traceparent,
    )
