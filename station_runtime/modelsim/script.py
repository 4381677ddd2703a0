"""Scripts: what a stand-in model says, turn by turn, kept free of any wire format.

A script is played statelessly: the step for a request is the number of assistant messages already in it, so a
client that resends the conversation (as every chat client does) walks through the script without the server
remembering anything. The one exception is a scripted error's ``times`` (fail the first N attempts, then answer),
which needs a small bounded count of attempts per conversation position (:class:`Attempts`).

The wire modules turn a request into a :class:`Prompt` and a :class:`Reply` into the provider's JSON or events;
everything here is pure and provider-neutral so both providers play the same script the same way.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

FINISHES = ("stop", "length", "tool_calls")

# Provider-neutral error kinds; each wire module maps them to its own error type names.
ERROR_KINDS = ("bad_request", "auth", "permission", "not_found", "request_too_large", "rate_limit", "server",
               "overloaded")


def default_kind(status: int) -> str:
    """The error kind a real API would report for ``status`` (503 and 529 both mean "overloaded" there)."""
    known = {400: "bad_request", 401: "auth", 403: "permission", 404: "not_found", 413: "request_too_large",
             429: "rate_limit", 503: "overloaded", 529: "overloaded"}
    if status in known:
        return known[status]
    return "server" if status >= 500 else "bad_request"


@dataclass(frozen=True)
class ToolCallStep:
    """One tool call the model makes. A ``str`` ``arguments`` is sent verbatim, so tests can send invalid JSON."""

    name: str
    arguments: dict[str, Any] | str = field(default_factory=dict)
    #: The call's id as the model sends it (default: a fresh random one, as real models do); fixed, a test knows
    #: what the loop derives from it (a delegated child's work id).
    id: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError("a tool call needs a non-empty name")
        if self.id is not None and not (isinstance(self.id, str) and 0 < len(self.id) <= 64):
            raise ValueError("a tool call's id must be a string of 1-64 characters")
        if not isinstance(self.arguments, dict | str):
            raise ValueError("tool call arguments must be a mapping or a string of raw JSON")

    @property
    def arguments_json(self) -> str:
        if isinstance(self.arguments, str):
            return self.arguments
        return json.dumps(self.arguments, ensure_ascii=False, separators=(",", ":"))


@dataclass(frozen=True)
class ErrorStep:
    """A scripted failure: the first ``times`` attempts at this step fail, later ones play the step normally.

    ``mid_stream`` fails a streamed request inside its stream (after some output) instead of with an HTTP status;
    a non-streamed request gets the HTTP status either way.
    """

    status: int
    kind: str = ""
    message: str = "scripted error"
    retry_after_s: float | None = None
    times: int = 1
    mid_stream: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.status, int) or isinstance(self.status, bool) or not 400 <= self.status <= 599:
            raise ValueError(f"error status must be an integer from 400 to 599, got {self.status!r}")
        if not self.kind:
            object.__setattr__(self, "kind", default_kind(self.status))
        if self.kind not in ERROR_KINDS:
            raise ValueError(f"error kind must be one of {', '.join(ERROR_KINDS)}, got {self.kind!r}")
        if self.retry_after_s is not None and not self.retry_after_s >= 0:
            raise ValueError(f"retry_after_s must be >= 0, got {self.retry_after_s!r}")
        if not isinstance(self.times, int) or self.times < 0:
            raise ValueError(f"times must be an integer >= 0, got {self.times!r}")


@dataclass(frozen=True)
class Step:
    """One assistant turn. ``text`` may use ``{input}`` and ``{tool_results}``; usage fields override estimates.

    ``input_tokens`` and ``cached_input_tokens`` are reported as given by both providers (OpenAI counts cached
    tokens inside ``prompt_tokens``, Anthropic beside ``input_tokens``: pick numbers for the provider under test).
    """

    text: str = ""
    tool_calls: tuple[ToolCallStep, ...] = ()
    error: ErrorStep | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    cached_input_tokens: int = 0
    cache_write_tokens: int = 0
    finish: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "tool_calls", tuple(self.tool_calls))
        if not isinstance(self.text, str):
            raise ValueError("step text must be a string")
        if self.finish is not None and self.finish not in FINISHES:
            raise ValueError(f"finish must be one of {', '.join(FINISHES)}, got {self.finish!r}")
        for name in ("input_tokens", "output_tokens", "cached_input_tokens", "cache_write_tokens"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")


@dataclass(frozen=True)
class Script:
    """A stand-in model: requests naming ``name`` as their model play ``steps``; the last step repeats for ever.

    ``tokens_per_s`` overrides the server's pacing for this model (``float("inf")``: as fast as possible).
    """

    name: str
    steps: tuple[Step, ...]
    tokens_per_s: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "steps", tuple(self.steps))
        if not isinstance(self.name, str) or not self.name:
            raise ValueError("a script needs a non-empty name")
        if not self.steps:
            raise ValueError(f"script {self.name!r} has no steps")
        if self.tokens_per_s is not None and not self.tokens_per_s > 0:
            raise ValueError(f"tokens_per_s must be > 0, got {self.tokens_per_s!r}")

    def step(self, index: int) -> Step:
        return self.steps[min(index, len(self.steps) - 1)]


DEFAULT_SCRIPTS: tuple[Script, ...] = (
    Script("echo", (Step(text="{input}"),)),
    Script("stand-in", (Step(text="This is modelsim, a local stand-in for a model server, not a real LLM. "
                                  "You said: {input}"),)),
)
"""Always available unless replaced: ``echo`` answers with the first user message, ``stand-in`` says what it is."""


# ---------------------------------------------------------------------------------------------------------------
# Playing a script


@dataclass(frozen=True, slots=True)
class Prompt:
    """What a script needs from a request, extracted by the provider's wire module."""

    model: str
    first_user_text: str
    tool_results: tuple[str, ...]
    assistant_turns: int
    max_tokens: int | None
    stream: bool
    input_estimate: int


@dataclass(frozen=True, slots=True)
class PlannedCall:
    name: str
    arguments: str
    fragments: tuple[str, ...]
    id: str | None = None


@dataclass(frozen=True, slots=True)
class Reply:
    """A rendered turn: text (and its tokens as streamed), tool calls, finish and usage; ``fail`` cuts a stream."""

    text: str
    tokens: tuple[str, ...]
    tool_calls: tuple[PlannedCall, ...]
    finish: str
    input_tokens: int
    output_tokens: int
    cached_input_tokens: int
    cache_write_tokens: int
    fail: ErrorStep | None = None


_TOKEN = re.compile(r"\S+\s*|\s+")


def split_tokens(text: str) -> list[str]:
    """Words with their trailing whitespace (leading whitespace is a token of its own): they join back to ``text``."""
    return _TOKEN.findall(text)


def split_fragments(text: str, most: int = 4) -> tuple[str, ...]:
    """``text`` cut into at most ``most`` nearly equal pieces, as tool-call arguments are streamed."""
    if len(text) < 2:
        return (text,) if text else ()
    count = min(most, len(text))
    size = -(-len(text) // count)
    return tuple(text[i:i + size] for i in range(0, len(text), size))


def conversation_key(model: str, first_user_text: str) -> bytes:
    """Identifies a conversation across its requests without keeping its (maybe large) text."""
    return hashlib.blake2b(f"{model}\0{first_user_text}".encode(), digest_size=12).digest()


class Attempts:
    """How often each (conversation, step) was attempted, for scripted errors' ``times``; an LRU of bounded size."""

    def __init__(self, max_keys: int = 10_000) -> None:
        self.max_keys = max_keys
        self._counts: OrderedDict[tuple[bytes, int], int] = OrderedDict()

    def hit(self, key: bytes, step: int) -> int:
        """Counts one attempt and returns how many came before it."""
        k = (key, step)
        before = self._counts.pop(k, 0)
        self._counts[k] = before + 1
        if len(self._counts) > self.max_keys:
            self._counts.popitem(last=False)
        return before

    def clear(self) -> None:
        self._counts.clear()


def _render(text: str, prompt: Prompt) -> str:
    if "{" not in text:
        return text
    return text.replace("{input}", prompt.first_user_text).replace("{tool_results}", "\n".join(prompt.tool_results))


def play(script: Script, prompt: Prompt, attempts: Attempts) -> Reply | ErrorStep:
    """The turn ``script`` plays for ``prompt``: an :class:`ErrorStep` to answer with now, or a :class:`Reply`.

    A reply longer than the request's ``max_tokens`` is cut there with finish ``length`` (tool calls dropped), as a
    real model would be, unless the step sets ``finish`` itself.
    """
    step = script.step(prompt.assistant_turns)
    fail: ErrorStep | None = None
    if step.error is not None and step.error.times:
        before = attempts.hit(conversation_key(script.name, prompt.first_user_text), prompt.assistant_turns)
        if before < step.error.times:
            if not (step.error.mid_stream and prompt.stream):
                return step.error
            fail = step.error
    text = _render(step.text, prompt)
    tokens = split_tokens(text)
    calls = tuple(PlannedCall(c.name, a, split_fragments(a), c.id) for c in step.tool_calls
                  for a in (c.arguments_json,))
    finish = step.finish or ("tool_calls" if calls else "stop")
    if step.finish is None and prompt.max_tokens is not None and len(tokens) > prompt.max_tokens:
        tokens = tokens[:max(prompt.max_tokens, 0)]
        text, calls, finish = "".join(tokens), (), "length"
    output = step.output_tokens
    if output is None:
        output = len(tokens) + sum(max(1, len(c.arguments) // 4) for c in calls)
    return Reply(text=text, tokens=tuple(tokens), tool_calls=calls, finish=finish,
                 input_tokens=prompt.input_estimate if step.input_tokens is None else step.input_tokens,
                 output_tokens=output, cached_input_tokens=step.cached_input_tokens,
                 cache_write_tokens=step.cache_write_tokens, fail=fail)


# ---------------------------------------------------------------------------------------------------------------
# Loading scripts from YAML or JSON


class ScriptError(ValueError):
    """A scripts file that cannot be read or does not describe valid scripts; the message names file and place."""


_SCRIPT_KEYS = {"name", "steps", "tokens_per_s"}
_STEP_KEYS = {"text", "tool_calls", "error", "input_tokens", "output_tokens", "cached_input_tokens",
              "cache_write_tokens", "finish"}
_ERROR_KEYS = {"status", "kind", "message", "retry_after_s", "times", "mid_stream"}
_CALL_KEYS = {"name", "arguments", "id"}


def _mapping(value: Any, where: str, keys: set[str]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"{where}: expected a mapping, got {type(value).__name__}")
    unknown = sorted(set(map(str, value)) - keys)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {', '.join(unknown)} (expected some of {', '.join(sorted(keys))})")
    return value


def _list(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise ValueError(f"{where}: expected a list, got {type(value).__name__}")
    return value


def _build(where: str, make: Any, **kwargs: Any) -> Any:
    try:
        return make(**kwargs)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: {e}") from None


def _step(raw: Any, where: str) -> Step:
    if isinstance(raw, str):
        return Step(text=raw)
    fields = dict(_mapping(raw, where, _STEP_KEYS))
    calls = []
    for i, call in enumerate(_list(fields.pop("tool_calls", []), f"{where}.tool_calls")):
        at = f"{where}.tool_calls[{i}]"
        calls.append(_build(at, ToolCallStep, **_mapping(call, at, _CALL_KEYS)))
    error = fields.pop("error", None)
    if error is not None:
        error = _build(f"{where}.error", ErrorStep, **_mapping(error, f"{where}.error", _ERROR_KEYS))
    return _build(where, Step, tool_calls=tuple(calls), error=error, **fields)  # type: ignore[no-any-return]


def parse_scripts(data: Any, source: str = "<scripts>") -> dict[str, Script]:
    """Scripts from already-parsed YAML/JSON: a list of scripts, or a mapping with such a list under ``scripts``."""
    try:
        if isinstance(data, dict) and set(data) == {"scripts"}:
            data = data["scripts"]
        scripts: dict[str, Script] = {}
        for i, raw in enumerate(_list(data, "top level (a list of scripts, or `scripts:` with one)")):
            where = f"scripts[{i}]"
            fields = dict(_mapping(raw, where, _SCRIPT_KEYS))
            if "steps" not in fields:
                raise ValueError(f"{where}: missing `steps`")
            steps = tuple(_step(s, f"{where}.steps[{j}]") for j, s in enumerate(_list(fields.pop("steps"),
                                                                                       f"{where}.steps")))
            script: Script = _build(where, Script, steps=steps, **fields)
            if script.name in scripts:
                raise ValueError(f"{where}: a second script named {script.name!r}")
            scripts[script.name] = script
        return scripts
    except ValueError as e:
        raise ScriptError(f"{source}: {e}") from None


def load_scripts(path: str | Path) -> dict[str, Script]:
    """Scripts from a ``.json`` file or (any other name) a YAML file; :class:`ScriptError` says what is wrong."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ScriptError(f"{p}: cannot read: {e}") from None
    try:
        data = json.loads(text) if p.suffix.lower() == ".json" else yaml.safe_load(text)
    except json.JSONDecodeError as e:
        raise ScriptError(f"{p}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    except yaml.YAMLError as e:
        raise ScriptError(f"{p}: invalid YAML: {e}") from None
    return parse_scripts(data, str(p))
