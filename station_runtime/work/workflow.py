"""Workflows: ordered steps, each an ordinary piece of work (auctioned), whose input can template the outputs of
earlier steps. All state is in the records (the parent's ``step_index`` and ``step_outputs``, one child record
per step with a derived id), so any witness can drive any workflow and a crash resumes from the last finished
step: the next driver finds the step's child and goes on from there."""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from ..contract.messages import ErrorCode, Payload, WorkError, WorkPhase, WorkRecord, utcnow
from ..contract.specs import WorkflowStep, WorkItemSpec
from . import phases

P = WorkPhase
_TEMPLATE = re.compile(r"\{\{\s*(input|steps\.([A-Za-z0-9_-]+)\.output)\s*\}\}")


def child_id(parent_id: str, index: int) -> str:
    """Deterministic (so creating a step twice is a no-op) and at most 64 characters."""
    digest = hashlib.blake2b(parent_id.encode(), digest_size=4).hexdigest()
    return f"{parent_id[:44]}-{digest}-s{index}"


def _text(value: Payload) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def render(template: str, workflow_input: Any, outputs: dict[str, Payload]) -> str:
    """Pure: fill ``{{input}}`` and ``{{steps.NAME.output}}``; an unknown step is an error."""

    def fill(match: re.Match[str]) -> str:
        if match.group(1) == "input":
            return _text(workflow_input)
        name = match.group(2)
        if name not in outputs:
            raise KeyError(f"template refers to step {name!r}, which has not produced an output")
        return _text(outputs[name])

    return _TEMPLATE.sub(fill, template)


class DeadlinePassed(ValueError):
    """The workflow's scheduleToClose passed before its next step could start."""


def referenced_steps(template: str) -> set[str]:
    """Pure: the steps whose outputs ``template`` uses."""
    return {m.group(2) for m in _TEMPLATE.finditer(template) if m.group(2)}


def step_spec(parent: WorkRecord, step: WorkflowStep, loaded: dict[str, Payload] | None = None) -> WorkItemSpec:
    """The spec of ``step``'s work; ``loaded``: the outputs kept by reference that its input uses, read from the
    results store by the caller."""
    spec = parent.spec
    outputs = {**parent.step_outputs, **(loaded or {})}
    timeouts = spec.timeouts
    if timeouts.schedule_to_close_seconds is not None:
        # The workflow's deadline is one deadline: a step gets what is left of it, not a fresh one of its own.
        left = timeouts.schedule_to_close_seconds - (utcnow() - parent.created_at).total_seconds()
        if left <= 0:
            raise DeadlinePassed(f"not finished within scheduleToClose {timeouts.schedule_to_close_seconds:g}s "
                             f"(before step {step.name!r})")
        timeouts = timeouts.model_copy(update={"schedule_to_close_seconds": left})
    return WorkItemSpec(org=spec.org, agent=step.agent, required_capabilities=step.required_capabilities,
                        input=render(step.input, spec.input, outputs), constraints=spec.constraints,
                        timeouts=timeouts, max_retries=spec.max_retries, priority=spec.priority)


def advance(parent: WorkRecord, child: WorkRecord | None) -> WorkRecord | None:
    """Pure: the parent after looking at its current step's child; None if nothing changes."""
    if parent.phase.terminal:
        return None
    if parent.cancel_requested:
        return phases.transition(parent, P.CANCELLED, reason="cancelled")
    if parent.phase == P.PENDING:
        return phases.transition(parent, P.RUNNING, reason=f"step 1/{len(parent.spec.steps)}")
    if child is None or not child.phase.terminal:
        return None
    step = parent.spec.steps[parent.step_index]
    if child.phase != P.SUCCEEDED:
        error = child.error or WorkError(code=ErrorCode.AGENT_ERROR, message=child.reason or child.phase.value)
        return phases.transition(parent, P.FAILED, reason=f"step {step.name!r} {child.phase.value.lower()}",
                                 error=error)
    # A large output stays where its step put it: the parent keeps the reference, not the bytes.
    if child.result_ref is not None:
        outputs, refs = parent.step_outputs, {**parent.step_output_refs, step.name: child.result_ref}
    else:
        outputs, refs = {**parent.step_outputs, step.name: child.result}, parent.step_output_refs
    nxt = parent.step_index + 1
    if nxt == len(parent.spec.steps):
        return phases.transition(parent, P.SUCCEEDED, step_outputs=outputs, step_output_refs=refs, step_index=nxt,
                                 result=child.result, result_ref=child.result_ref, reason="")
    return phases.transition(parent, P.RUNNING, step_outputs=outputs, step_output_refs=refs, step_index=nxt,
                             progress_percent=100.0 * nxt / len(parent.spec.steps),
                             progress_message=f"step {nxt + 1}/{len(parent.spec.steps)}",
                             reason=f"step {nxt + 1}/{len(parent.spec.steps)}", last_progress_at=parent.updated_at)
