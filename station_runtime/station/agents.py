"""The agents a station hosts: those of its org whose selectors match, loaded from the ``agents`` bucket and
followed live (a changed agent is rebuilt, a deleted or no longer matching one is dropped, no restart).

Loading may take I/O (an agent's MCP servers are started or reached and their tools listed), so each load runs in
its own task, bounded by its servers' timeouts: a slow tool server delays only its agent, never the watch. A load
that failed for a reason that may pass (a tool server down) is tried again with backoff, so the agent comes up
when its server does. The watch (a subscription to the bucket's republished changes after an exact listing) is
rebuilt after every NATS reconnect, which re-delivers every current value; the reconcile below handles that
idempotently.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from ..backoff import compute_backoff
from ..contract import subjects
from ..contract.codec import decode
from ..contract.errors import DecodeError
from ..contract.messages import AgentDefinition
from ..contract.selectors import LabelSelector, selector_matches
from ..executors import AgentFailure, Executor, load_executor
from ..natsio.listing import KvItem
from ..natsio.state import OrgState
from ..tasks import stop_task

log = logging.getLogger(__name__)


@dataclass
class HostedAgent:
    definition: AgentDefinition
    executor: Executor
    revision: int
    inflight: int = 0
    retired: bool = False

    @property
    def name(self) -> str:
        return self.definition.name

    def acquire(self) -> None:
        self.inflight += 1

    def release(self) -> None:
        self.inflight -= 1
        if self.retired and self.inflight == 0:
            _spawn(self.executor.aclose())

    def retire(self) -> None:
        """Replaced or dropped: runs in flight keep the old executor, which is closed when the last ends."""
        self.retired = True
        if self.inflight == 0:
            _spawn(self.executor.aclose())


_background: set[asyncio.Task[None]] = set()


def _spawn(coro: Coroutine[Any, Any, None]) -> None:
    task = asyncio.create_task(coro)
    _background.add(task)
    task.add_done_callback(_background.discard)


def agent_selected(definition: AgentDefinition, org: str, station_labels: dict[str, str],
                   agent_selector: LabelSelector | None) -> bool:
    """Pure: does a station with these labels and selector host this agent?"""
    return (
        definition.org == org
        and selector_matches(agent_selector, definition.labels)
        and selector_matches(definition.spec.station_selector, station_labels)
    )


class AgentHost:
    def __init__(self, state: OrgState, org: str, labels: dict[str, str], selector: LabelSelector | None,
                 on_change: Callable[[], Awaitable[None]]) -> None:
        self._state = state
        self._org = org
        self._labels = labels
        self._selector = selector
        self._on_change = on_change
        self.agents: dict[str, HostedAgent] = {}
        self.load_errors: dict[str, str] = {}
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._changed_initially = False
        #: Loads under way (or waiting to be tried again), by agent name, with the revision they load.
        self._loads: dict[str, tuple[int, asyncio.Task[None]]] = {}
        self._failures: dict[str, int] = {}

    def get(self, name: str) -> HostedAgent | None:
        return self.agents.get(name)

    def capabilities(self) -> set[str]:
        return {c for a in self.agents.values() for c in a.definition.spec.capabilities}

    def tools(self) -> dict[str, list[str]]:
        """The tools of each hosted agent that has any (``source:name``)."""
        out = {}
        for name, agent in self.agents.items():
            listing = getattr(agent.executor, "tool_names", None)
            if listing is not None and (names := listing()):
                out[name] = names
        return out

    def hosted(self) -> list[tuple[str, list[str], int]]:
        """(name, capabilities, runs in flight) of every hosted agent, for :func:`.admission.pick_agent`."""
        return [(a.name, a.definition.spec.capabilities, a.inflight) for a in self.agents.values()]

    async def start(self, timeout_s: float = 10.0) -> None:
        """Follow the agents; return once the current ones are loaded (or failed), each load bounded by its own
        tool servers' timeouts."""
        self._task = asyncio.create_task(self._run(), name="agent-watch")
        async with asyncio.timeout(timeout_s):
            await self._ready.wait()
        pending = [task for _, task in self._loads.values()]
        if pending:
            await asyncio.wait(pending)

    def rewatch(self) -> None:
        """Restart the watch (after a reconnect)."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
            self._task = asyncio.create_task(self._run(), name="agent-watch")

    async def stop(self) -> None:
        await stop_task(self._task)
        for _, task in list(self._loads.values()):
            task.cancel()
        for agent in list(self.agents.values()):
            agent.retire()
        self.agents.clear()

    async def _run(self) -> None:
        self._changed_initially = False
        # Through the bucket's republished copies: a station creates no JetStream consumer (subjects.agent_republish).
        await self._state.follow_published("agents", subjects.agent_updates_all(self._state.org), self._on_entry,
                                           what="agent watch", on_snapshot=self._on_snapshot)

    async def _on_snapshot(self, seen: set[str]) -> None:
        changed, self._changed_initially = self._changed_initially, False
        for name in [n for n in {**self.agents, **self._loads} if n not in seen]:
            changed |= await self._remove(name, "gone while disconnected")
        self._ready.set()
        if changed:
            await self._on_change()

    async def _on_entry(self, entry: KvItem, initial: bool) -> None:
        deleted = entry.operation in ("DEL", "PURGE") or not entry.value
        changed = (await self._remove(entry.key, "deleted") if deleted
                   else await self._apply(entry.key, entry.value, entry.revision or 0))
        if not changed:
            return
        if initial:
            self._changed_initially = True  # announced once, after the whole snapshot
        else:
            await self._on_change()

    async def _apply(self, key: str, value: bytes, revision: int) -> bool:
        current = self.agents.get(key)
        if current is not None and current.revision == revision:
            return False
        if (loading := self._loads.get(key)) is not None:
            if loading[0] == revision:
                return False
            loading[1].cancel()  # superseded by a newer definition
            self._loads.pop(key, None)
        try:
            definition = decode(value, AgentDefinition)
        except DecodeError as exc:
            log.warning("ignoring agent %r: %s", key, exc)
            return await self._failed(key, f"invalid definition: {exc}")
        if not agent_selected(definition, self._org, self._labels, self._selector):
            return await self._remove(key, "not selected")
        task = asyncio.create_task(self._load(key, definition, revision), name=f"agent-load-{key}")
        self._loads[key] = (revision, task)
        return False  # the load announces its own change when it is done

    async def _load(self, key: str, definition: AgentDefinition, revision: int) -> None:
        try:
            executor = await load_executor(definition)
        except asyncio.CancelledError:
            raise
        except AgentFailure as exc:
            log.error("cannot load agent %r: %s", key, exc)
            self._loads.pop(key, None)
            changed = await self._failed(key, str(exc))
            if exc.code.retryable:  # e.g. a tool server down: try again, it may come up
                self._retry_later(key, definition, revision)
            if changed:
                await self._on_change()
            return
        except Exception as exc:  # a bug in an executor's start must cost that agent only: logged whole
            log.exception("cannot load agent %r", key)
            self._loads.pop(key, None)
            if await self._failed(key, f"{type(exc).__name__}: {exc}"):
                await self._on_change()
            return
        if self._loads.get(key, (None,))[0] != revision:  # superseded meanwhile
            _spawn(executor.aclose())
            return
        self._loads.pop(key, None)
        self._failures.pop(key, None)
        self.load_errors.pop(key, None)
        current = self.agents.get(key)
        self.agents[key] = HostedAgent(definition, executor, revision)
        if current is not None:
            current.retire()
        log.info("%s agent %s (revision %d)", "reloaded" if current else "loaded", key, revision)
        await self._on_change()

    def _retry_later(self, key: str, definition: AgentDefinition, revision: int) -> None:
        failures = self._failures[key] = self._failures.get(key, 0) + 1
        delay = compute_backoff(failures, base_s=2.0, max_s=60.0)

        async def retry() -> None:
            await asyncio.sleep(delay)
            if self._loads.get(key, (None,))[0] == revision and key in self.load_errors:
                await self._load(key, definition, revision)

        self._loads[key] = (revision, asyncio.create_task(retry(), name=f"agent-retry-{key}"))

    async def _failed(self, key: str, why: str) -> bool:
        """The agent cannot be hosted: drop it and remember why (the registry record says it, so that users and
        auctions learn it); changed if it was hosted or the reason is new."""
        new = self.load_errors.get(key) != why
        self.load_errors[key] = why
        return await self._remove(key, "failed to load", keep_error=True) or new

    async def _remove(self, key: str, why: str, *, keep_error: bool = False) -> bool:
        if not keep_error and (loading := self._loads.pop(key, None)) is not None:
            loading[1].cancel()
            self._failures.pop(key, None)
        error = None if keep_error else self.load_errors.pop(key, None)
        current = self.agents.pop(key, None)
        if current is None:
            return error is not None
        log.info("dropped agent %s: %s", key, why)
        current.retire()
        return True
