"""Workflows: steps, each an ordinary piece of work (auctioned), run in order or as a graph (``dependsOn``:
steps whose dependencies have succeeded run in parallel, a step with several waits for all), whose input can
template the outputs of the steps it depends on. All state is in the records (the parent's ``step_outputs`` and
``step_output_refs`` by step name, one child record per step with a derived id), so any witness can drive any
workflow and a crash resumes where it stopped: the next driver finds the steps' children and goes on."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any

from ..contract import graph
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
    if step.timeouts is not None:
        # The step's own timeouts, within what is left of the workflow's deadline.
        close = timeouts.schedule_to_close_seconds
        own = step.timeouts.schedule_to_close_seconds
        timeouts = step.timeouts.model_copy(update={"schedule_to_close_seconds": min(
            (t for t in (close, own) if t is not None), default=None)})
    return WorkItemSpec(org=spec.org, agent=step.agent, required_capabilities=step.required_capabilities,
                        input=render(step.input, spec.input, outputs),
                        constraints=step.constraints or spec.constraints, timeouts=timeouts,
                        max_retries=spec.max_retries if step.max_retries is None else step.max_retries,
                        priority=spec.priority)


def finished(parent: WorkRecord) -> set[str]:
    """Pure: the steps that have succeeded (their outputs are kept, inline or by reference)."""
    return set(parent.step_outputs) | set(parent.step_output_refs)


def ready(parent: WorkRecord) -> list[int]:
    """Pure: the steps that may run now (every dependency succeeded, not succeeded themselves): each is started
    once (its child's id is derived from its index), so a ready step with a child is running or done."""
    return graph.ready(parent.spec.steps, finished(parent))


def advance(parent: WorkRecord, children: Mapping[int, WorkRecord | None]) -> WorkRecord | None:
    """Pure: the parent after looking at the children of its running steps (by step index); None if nothing
    changes. A step that did not succeed fails the workflow; when every step has succeeded, the workflow's result
    is the last listed step's output. ``step_index`` counts the steps that have succeeded."""
    if parent.phase.terminal:
        return None
    if parent.cancel_requested:
        return phases.transition(parent, P.CANCELLED, reason="cancelled")
    steps = parent.spec.steps
    if parent.phase == P.PENDING:
        return phases.transition(parent, P.RUNNING, reason=f"0/{len(steps)} steps done")
    outputs, refs = dict(parent.step_outputs), dict(parent.step_output_refs)
    changed = False
    for index, child in sorted(children.items()):
        step = steps[index]
        if child is None or not child.phase.terminal or step.name in outputs or step.name in refs:
            continue
        if child.phase != P.SUCCEEDED:
            error = child.error or WorkError(code=ErrorCode.AGENT_ERROR, message=child.reason or child.phase.value)
            return phases.transition(parent, P.FAILED, reason=f"step {step.name!r} {child.phase.value.lower()}",
                                     error=error, step_outputs=outputs, step_output_refs=refs)
        # A large output stays where its step put it: the parent keeps the reference, not the bytes.
        if child.result_ref is not None:
            refs[step.name] = child.result_ref
        else:
            outputs[step.name] = child.result
        changed = True
    if not changed:
        return None
    done = len(set(outputs) | set(refs))
    if done == len(steps):
        last = steps[-1].name
        return phases.transition(parent, P.SUCCEEDED, step_outputs=outputs, step_output_refs=refs, step_index=done,
                                 result=outputs.get(last), result_ref=refs.get(last), reason="")
    return phases.transition(parent, P.RUNNING, step_outputs=outputs, step_output_refs=refs, step_index=done,
                             progress_percent=100.0 * done / len(steps),
                             progress_message=f"{done}/{len(steps)} steps done",
                             reason=f"{done}/{len(steps)} steps done", last_progress_at=parent.updated_at)
