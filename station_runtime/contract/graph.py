"""Pure: a workflow's steps as a graph: each step's dependencies, the checks a workflow must pass before it is
accepted (known steps, no cycle, templates that use only outputs the step is sure to have), and which steps
may start once some have finished."""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from typing import Protocol


class WorkflowStep(Protocol):
    """What the graph needs of a step (:class:`.specs.WorkflowStep`)."""

    @property
    def name(self) -> str: ...

    @property
    def depends_on(self) -> list[str] | None: ...

    @property
    def input(self) -> str: ...

_STEP_REF = re.compile(r"\{\{\s*steps\.([A-Za-z0-9_-]+)\.output\s*\}\}")


class GraphError(ValueError):
    """The steps do not make a workflow that can run: says which step and why."""


def dependencies(steps: Sequence[WorkflowStep]) -> list[list[str]]:
    """Each step's dependencies by name: its ``dependsOn``, or (unset) the step listed before it."""
    return [list(s.depends_on) if s.depends_on is not None else ([steps[i - 1].name] if i else [])
            for i, s in enumerate(steps)]


def referenced(template: str) -> set[str]:
    """The steps whose outputs a step's input template uses."""
    return set(_STEP_REF.findall(template))


def check_graph(steps: Sequence[WorkflowStep]) -> None:
    """Raise :class:`GraphError` unless every dependency names a step, there is no cycle, and every step's
    template uses only outputs of steps it (transitively) depends on."""
    names = [s.name for s in steps]
    deps = dependencies(steps)
    known = set(names)
    for step, needs in zip(steps, deps, strict=True):
        if unknown := [d for d in needs if d not in known]:
            raise GraphError(f"step {step.name!r} depends on {', '.join(map(repr, unknown))}, which is not a step")
        if step.name in needs:
            raise GraphError(f"step {step.name!r} depends on itself")
    # Kahn's algorithm: what never becomes ready is on a cycle.
    by_name = dict(zip(names, deps, strict=True))
    done: set[str] = set()
    while len(done) < len(names):
        ready = [n for n in names if n not in done and set(by_name[n]) <= done]
        if not ready:
            cycle = sorted(set(names) - done)
            raise GraphError(f"steps {', '.join(map(repr, cycle))} depend on each other in a cycle: none can start")
        done.update(ready)
    for step in steps:
        before = ancestors(step.name, by_name)
        if stray := sorted(referenced(step.input) - before):
            raise GraphError(f"step {step.name!r} uses the output of {', '.join(map(repr, stray))} in its input "
                             "but does not depend on it: add it to dependsOn")


def ancestors(name: str, by_name: dict[str, list[str]]) -> set[str]:
    seen: set[str] = set()
    todo = list(by_name.get(name, []))
    while todo:
        n = todo.pop()
        if n not in seen:
            seen.add(n)
            todo.extend(by_name.get(n, []))
    return seen


def ready(steps: Sequence[WorkflowStep], finished: Collection[str]) -> list[int]:
    """Indexes of the steps that may start: not finished, every dependency finished (in listed order)."""
    done = set(finished)
    return [i for i, (step, needs) in enumerate(zip(steps, dependencies(steps), strict=True))
            if step.name not in done and set(needs) <= done]
