"""The agent loop: system prompt and input → model → tool calls → tool results → model … until a final answer.

Bounded by the run's limits (:mod:`.limits`): ``maxTurns`` model calls, ``maxToolCalls`` tool calls (calls past it
get an error result and the next turn offers no tools, so the model must answer), and the token and cost
budgets, checked before every model call. Tool calls the model makes together run concurrently, each bounded by
the tool box. Every turn and tool call is reported as progress, with the tokens as they stream.

With a journal (async work), every answer of the model and every tool call is appended before the loop acts on
it, and a new attempt of the run starts where the journal ends (:mod:`.journal`): answered turns are not sent to
the model again, answered calls do not run again, and a call that started but never answered runs again (with
the same idempotency key) only if its tool says it may; otherwise the run stops for a person to decide.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import jsonschema

from ..backoff import compute_backoff
from ..contract.messages import (
    MAX_WAITING_ARGUMENTS,
    ErrorCode,
    HumanDecision,
    JournalKind,
    JournalToolCall,
    Payload,
    Usage,
    Waiting,
    utcnow,
)
from ..contract.specs import Price
from ..telemetry import metrics, tracing
from .base import Execution, Outcome, Progress, Suspended
from .conversation import Message, ToolCall, Turn
from .journal import LastTurn, RunState, replay
from .limits import RunLimits, cost_usd, output_cap, over_budget, remaining_budget, tool_calls_allowed
from .providers.base import ModelError, Provider, TurnRequest
from .tools.base import ToolBox, ToolContext, ToolResult, idempotency_key

log = logging.getLogger(__name__)

#: Retries of a turn that failed inside a streamed answer (before the answer starts, the SDK retries itself).
MAX_STREAM_RETRIES = 3


def input_text(value: Payload) -> str:
    return value if isinstance(value, str) else json.dumps(value)


@dataclass
class AgentLoop:
    provider: Provider
    tools: ToolBox
    system: str
    limits: RunLimits
    price: Price | None = None
    model_max_tokens: int | None = None
    model_retries: int = MAX_STREAM_RETRIES
    output_schema: dict[str, Any] | None = None
    #: Who runs (agent, provider, model): the labels of its metrics and the attributes of its spans.
    agent: str = ""
    provider_name: str = ""
    model: str = ""
    #: How long a call may wait for a person (approval, a reply); None: as long as it takes.
    approval_timeout_s: float | None = None

    async def run(self, execution: Execution) -> Outcome:
        first = Message("user", text=input_text(execution.input))
        journal = execution.journal
        # With a journal, what the run reports is what every attempt spent (the journal has each turn's usage):
        # an attempt killed before it recorded anything is counted too, and nothing twice.
        state, first_turn, last = RunState(messages=[first], whole_run=journal is not None), 1, None
        started = time.monotonic()
        deadline = None if execution.deadline_s is None else started + execution.deadline_s
        if journal is not None and journal.entries:
            done = replay(journal.entries, first)
            state = done.state
            await execution.progress(Progress(message=f"resumed after turn {done.turns} from the journal",
                                              turn=done.turns, usage=state.usage))
            if done.answer is not None:  # answered already: only the outcome was not recorded
                return Outcome(output=self._answer(done.answer.text, state), usage=state.usage,
                               children=tuple(state.children), whole_run=state.whole_run)
            first_turn, last = done.turns + 1, done.last
        if last is not None:  # the calls of the last turn did not all answer: finish them first
            remaining = None if deadline is None else deadline - time.monotonic()
            await self._run_tools(last.calls, state, last.entry.turn, execution, remaining, last)
        for turn in range(first_turn, self.limits.max_turns + 1):
            if (stop := over_budget(self.limits, state.usage)) is not None:
                raise state.failure(stop.reason, stop.code)
            offer = state.tool_calls < self.limits.max_tool_calls and len(self.tools) > 0
            await execution.progress(Progress(message=f"turn {turn}", turn=turn, usage=state.usage))
            asked = len(state.messages)
            result, spent = await self._call(state, turn, offer, execution)
            entry = {"turn": turn, "messages": asked, "text": result.text, "finish_reason": result.finish_reason,
                     "usage": spent, "model": result.model,
                     "tool_calls": [JournalToolCall(id=c.id, name=c.name, arguments=c.arguments)
                                    for c in result.tool_calls]}
            state.messages.append(Message("assistant", text=result.text, tool_calls=tuple(result.tool_calls)))
            if not result.tool_calls:
                if journal is not None:
                    await journal.append(JournalKind.TURN, **entry)
                return Outcome(output=self._answer(result.text, state), usage=state.usage,
                               children=tuple(state.children), whole_run=state.whole_run)
            remaining = None if deadline is None else deadline - time.monotonic()
            # The turn's entry goes in with the calls it starts (one append, not one per call).
            await self._run_tools(result.tool_calls, state, turn, execution, remaining, turn_entry=entry)
        raise state.failure(f"no final answer within maxTurns {self.limits.max_turns} "
                            f"({state.tool_calls} tool calls made)", ErrorCode.LIMIT_EXCEEDED)

    async def _call(self, state: RunState, turn: int, offer_tools: bool,
                    execution: Execution) -> tuple[Turn, Usage]:
        request = TurnRequest(system=self.system, messages=tuple(state.messages),
                              tools=self.tools.definitions() if offer_tools else (),
                              max_tokens=output_cap(self.limits, state.usage, self.model_max_tokens),
                              output_schema=self.output_schema)

        async def on_text(text: str) -> None:
            await execution.progress(Progress(tokens=text, turn=turn))

        attempt = 0
        while True:
            try:
                result = await self._turn(request, on_text, turn)
                break
            except ModelError as exc:
                if not exc.retryable:
                    raise state.failure(str(exc), exc.code) from exc
                # Before a response started, the SDK retried already: what reaches us is final.
                if not exc.started or attempt >= self.model_retries:
                    raise state.failure(f"{exc} (turn {turn})", ErrorCode.MODEL_UNAVAILABLE) from exc
                delay = exc.retry_after_s if exc.retry_after_s is not None else compute_backoff(attempt)
                log.info("turn %d failed mid-answer (%s); retrying in %.2fs", turn, exc, delay)
                await execution.progress(Progress(message=f"turn {turn}: model failed mid-answer, retrying",
                                                  turn=turn))
                await asyncio.sleep(delay)
                attempt += 1
        spent = result.usage.model_copy(update={"model_calls": 1, "cost_usd": cost_usd(self.price, result.usage)})
        state.usage += spent
        self._count(spent, result.model)
        return result, spent

    async def _turn(self, request: TurnRequest, on_text: Any, turn: int) -> Turn:
        """One model call, as the GenAI semantic conventions describe it: a ``chat {model}`` client span (the
        provider sends its context to the API as ``traceparent``) and the ``gen_ai.client.*`` metrics."""
        base = {"gen_ai.operation.name": "chat", "gen_ai.provider.name": self.provider_name,
                "gen_ai.request.model": self.model}
        started = time.perf_counter()
        with tracing.span(f"chat {self.model}", kind="client", attributes={
                **base, "gen_ai.system": self.provider_name, "gen_ai.request.max_tokens": request.max_tokens,
                "lattice.agent": self.agent, "lattice.agent.turn": turn}) as span:
            try:
                result = await self.provider.turn(request, on_text)
            except ModelError as exc:
                error = exc.error_type
                metrics.GENAI_DURATION.record(time.perf_counter() - started, {**base, "error.type": error})
                metrics.MODEL_ERRORS.add(1, {"agent": self.agent, "model": self.model, "error.type": error})
                span.set_attribute("error.type", error)
                raise
            metrics.GENAI_DURATION.record(time.perf_counter() - started, base)
            if tracing.enabled():
                span.set_attributes({"gen_ai.response.model": result.model or self.model,
                                     "gen_ai.usage.input_tokens": result.usage.input_tokens,
                                     "gen_ai.usage.output_tokens": result.usage.output_tokens,
                                     "gen_ai.response.finish_reasons": [result.finish_reason]})
        return result

    def _count(self, spent: Usage, response_model: str) -> None:
        labels = {"agent": self.agent, "model": self.model}
        base = {"gen_ai.operation.name": "chat", "gen_ai.provider.name": self.provider_name,
                "gen_ai.request.model": self.model, "gen_ai.response.model": response_model or self.model}
        metrics.GENAI_TOKENS.record(spent.input_tokens, {**base, "gen_ai.token.type": "input"})
        metrics.GENAI_TOKENS.record(spent.output_tokens, {**base, "gen_ai.token.type": "output"})
        for kind, count in (("input", spent.input_tokens), ("output", spent.output_tokens),
                            ("cache_read", spent.cached_input_tokens), ("cache_write", spent.cache_write_tokens)):
            if count:
                metrics.TOKENS_USED.add(count, {**labels, "type": kind})
        if spent.cost_usd:
            metrics.COST.add(spent.cost_usd, labels)

    async def _run_tools(self, calls: list[ToolCall], state: RunState, turn: int, execution: Execution,
                         remaining_s: float | None, last: LastTurn | None = None,
                         turn_entry: dict[str, Any] | None = None) -> None:
        """Run the calls of one answer; ``last``: what the journal says of them (a resumed run);
        ``turn_entry``: the answer's journal entry, appended here with the calls it starts (a new turn)."""
        seen = state.calls_seen
        allowed = tool_calls_allowed(self.limits, state.tool_calls, len(calls))
        journal = execution.journal
        answered = last.results if last is not None else {}
        keys = [idempotency_key(execution.request_id, seen + i) for i in range(1, len(calls) + 1)]
        if last is not None:
            for call, key in zip(calls[:allowed], keys, strict=False):
                if call.id in last.started and call.id not in answered and self.tools.unknown_outcome(
                        call.name) != "retry":
                    raise state.failure(
                        f"tool call {call.name} (idempotency key {key}) started on a station that stopped before "
                        "it answered, and it may have had its effect: check what it did, then submit the work "
                        "again (or declare unknownOutcome: retry on the tool if it honours its idempotency key)",
                        ErrorCode.UNKNOWN_OUTCOME)
        # Before the run counts these calls: a suspended run counts them when it resumes.
        waiting = self._wait_for_people(calls[:allowed], keys, state, execution, answered,
                                        last.started if last is not None else set())
        # Calls that start now, noted in the turn's entry (so that each needs no entry of its own before it
        # starts): all the allowed ones, but those a person rejected (they never run) and none if the run waits.
        starting = set() if waiting is not None else {
            c.id for c, k in zip(calls[:allowed], keys, strict=False)
            if not self._rejected(c, k, execution) and c.id not in answered}
        if journal is not None and turn_entry is not None:
            await journal.append(JournalKind.TURN, **turn_entry, started=sorted(starting))
        if waiting is not None:
            raise Suspended(waiting, usage=state.usage, children=tuple(state.children), whole_run=state.whole_run)
        state.calls_seen += len(calls)
        state.tool_calls += allowed
        state.usage += Usage(tool_calls=allowed)
        ctx_budget = remaining_budget(self.limits, state.usage)

        async def one(call: ToolCall, key: str) -> ToolResult:
            if (known := answered.get(call.id)) is not None:
                return known
            index = int(key.rpartition("/")[2])
            if (decision := self._rejected(call, key, execution)) is not None:
                # Rejected: the call never runs; the model reads why and goes on.
                refused = ToolResult(f"error: {call.name} was not approved ({decision.reason or 'rejected'}"
                                     f"{', by ' + decision.by if decision.by else ''}): do not try it again; "
                                     "answer with what you have or another way", True)
                if journal is not None:
                    await journal.append(JournalKind.RESULT, turn=turn, call_id=call.id, call_index=index,
                                         name=call.name, key=key, text=refused.text, is_error=True)
                return refused
            if journal is not None and call.id not in starting:  # a resumed turn's call: noted on its own
                await journal.append(JournalKind.CALL, turn=turn, call_id=call.id, call_index=index,
                                     name=call.name, arguments=call.arguments, key=key)
            await execution.progress(Progress(message=f"calling {call.name}", turn=turn, tool=call.name))
            started = time.perf_counter()
            # The name as a label only if it is one of the agent's tools: a model can call any name it likes.
            tool = call.name if call.name in self.tools else "unknown"
            with tracing.span(f"execute_tool {tool}", attributes={
                    "gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": call.name,
                    "gen_ai.tool.call.id": call.id, "lattice.agent": self.agent, "lattice.agent.turn": turn}) as span:
                result = await self.tools.run(call, ToolContext(execution, call.id, remaining_s, ctx_budget,
                                                                key))
                if result.is_error:
                    tracing.failed(span, result.text)
                if result.child is not None and tracing.enabled():
                    span.set_attribute("lattice.work.child", result.child)
            metrics.TOOL_DURATION.record(time.perf_counter() - started, {
                "agent": self.agent, "tool": tool, "outcome": "error" if result.is_error else "ok"})
            if journal is not None:
                await journal.append(JournalKind.RESULT, turn=turn, call_id=call.id, call_index=index,
                                     name=call.name, key=key, text=result.text, is_error=result.is_error,
                                     duration_ms=round((time.perf_counter() - started) * 1000, 3),
                                     child=result.child, delegated=result.delegated)
            said = "failed" if result.is_error else "answered"
            await execution.progress(Progress(message=f"{call.name} {said}", turn=turn, tool=call.name))
            return result

        results = list(await asyncio.gather(*(one(c, k) for c, k in zip(calls[:allowed], keys, strict=False))))
        refused = ToolResult(f"error: the tool call limit ({self.limits.max_tool_calls}) is reached: answer with "
                             "what you have", True)
        for call in calls[allowed:]:
            if journal is not None and call.id not in answered:
                await journal.append(JournalKind.RESULT, turn=turn, call_id=call.id, name=call.name,
                                     text=refused.text, is_error=True)
            results.append(refused)
        for call, result in zip(calls, results, strict=True):
            state.heard(call, result)

    def _rejected(self, call: ToolCall, key: str, execution: Execution) -> HumanDecision | None:
        decision = execution.decisions.get(key)
        if decision is not None and not decision.approved and self.tools.needs_approval(call.name):
            return decision
        return None

    def _wait_for_people(self, calls: list[ToolCall], keys: list[str], state: RunState, execution: Execution,
                         answered: dict[str, ToolResult], started: set[str]) -> Waiting | None:
        """What the run must wait for before any of these calls runs, if one needs a person's decision that is
        not yet recorded: the approval of a call, the answer to an ``ask_user`` question. Only async work can
        wait (it has a journal to resume from); a synchronous invoke cannot, and such a call fails instead."""
        for call, key in zip(calls, keys, strict=False):
            if call.id in answered or call.id in started or key in execution.decisions:
                continue
            asking = self.tools.asks_a_person(call.name)
            if not asking and not self.tools.needs_approval(call.name):
                continue
            arguments = call.arguments_json()
            question = ""
            if asking and isinstance(call.arguments, dict):
                question = str(call.arguments.get("question", ""))[:MAX_WAITING_ARGUMENTS]
            now = utcnow()
            waiting = Waiting(kind="input" if asking else "approval", key=key, tool=call.name,
                              arguments=arguments[:MAX_WAITING_ARGUMENTS], question=question, requested_at=now,
                              deadline_at=None if self.approval_timeout_s is None
                              else now + timedelta(seconds=self.approval_timeout_s))
            if execution.journal is None:
                raise state.failure(f"{call.name} needs {waiting.summary()}, and only async work can wait for a "
                                    "person: submit the work (lattice submit) instead of invoking it",
                                    ErrorCode.BAD_REQUEST)
            return waiting
        return None

    def _answer(self, text: str, state: RunState) -> Payload:
        if self.output_schema is None:
            return text
        body = text.strip()
        if body.startswith("```"):  # a fenced block: take what is inside
            body = body.strip("`").partition("\n")[2] if "\n" in body else body.strip("`")
        try:
            value = json.loads(body)
        except ValueError as exc:
            raise state.failure(f"the final answer is not JSON as outputSchema requires: {exc}",
                                ErrorCode.AGENT_ERROR) from exc
        errors = sorted(jsonschema.validators.validator_for(self.output_schema)(self.output_schema).iter_errors(value),
                        key=lambda e: list(e.absolute_path))
        if errors:
            said = "; ".join(f"{'/'.join(map(str, e.absolute_path)) or 'answer'}: {e.message}" for e in errors[:5])
            raise state.failure(f"the final answer does not match outputSchema: {said}", ErrorCode.AGENT_ERROR)
        return value  # type: ignore[no-any-return]
