"""``.prompt`` files (Dotprompt) as Agent manifests: YAML front matter, then a Handlebars template.

Pure: text in, an :class:`~.models.Agent` (or the problems, each naming its key) out. The mapping:

* ``model: openai/gpt-4o`` or ``anthropic/claude-...``: the provider and model (``openai`` covers any
  OpenAI-compatible server: give ``lattice.baseUrl``). Other providers (``googleai/``, ``vertexai/``) are refused.
* ``config``: ``temperature``, ``maxOutputTokens`` (the model's ``maxTokens``); ``topP``, ``topK``,
  ``stopSequences`` and anything else go to the model's ``params`` (the API request).
* ``input.schema`` and ``output.schema``: Picoschema (``name: string, description``, ``tags?(array): string``,
  ``kind(enum): [a, b]``, ``addr(object): {...}``, ``"*": type``) or JSON Schema; ``output.format: json`` makes the
  output schema the agent's structured output.
* ``tools``: ``SERVER`` (every tool of a ToolServer), ``SERVER/tool`` (only those named, for each server),
  ``module:function`` (a Python function tool), ``lattice/submit|await|invoke`` (delegation), or a mapping
  (an Agent's tool entry as is).
* Extension keys ``lattice.*`` (Dotprompt's namespaced fields) set the rest of the Agent: ``lattice.baseUrl``,
  ``lattice.apiKeyEnv``, ``lattice.maxTurns``, ``lattice.budget``, ``lattice.price``, ``lattice.labels``, ...
* The body: ``{{role "system"}}`` sections become the system prompt, the rest (``{{role "user"}}`` or no role)
  the prompt template. Both are rendered with the work's input (a JSON object's fields, and ``input``) when a run
  starts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from .models import Agent

#: Front-matter keys that map to the Agent (Dotprompt's own; ``lattice.*`` extension keys are handled apart).
KNOWN = ("name", "variant", "version", "description", "model", "config", "input", "output", "tools", "metadata")
#: ``lattice.*`` keys that are the model's (the rest are the Agent spec's).
MODEL_KEYS = {"baseUrl", "apiKeyEnv", "apiKeyFile", "apiKeySecretRef", "timeoutSeconds", "maxRetries", "stream",
              "price", "params"}
#: Agent keys ``lattice.*`` may not set: they come from the file's own keys.
FROM_FILE = {"model", "tools", "systemPrompt", "promptTemplate", "inputSchema", "outputSchema", "description"}
PROVIDERS = {"openai": "openai", "anthropic": "anthropic"}
#: Dotprompt config keys that are ModelSpec fields; the rest go to ``params``.
CONFIG_FIELDS = {"temperature": "temperature", "maxOutputTokens": "maxTokens"}
CONFIG_PARAMS = {"topP": "top_p", "topK": "top_k", "stopSequences": "stop"}
LATTICE_TOOLS = ("submit", "await", "invoke")
SCALARS = {"string", "number", "integer", "boolean", "null", "any"}
_FRONT = re.compile(r"\A---[ \t]*\r?\n(.*?)^---[ \t]*\r?\n?", re.S | re.M)
_ROLE = re.compile(r"\{\{\s*role\s+[\"'](system|user|model)[\"']\s*\}\}")
_UNSUPPORTED = re.compile(r"\{\{\s*(media|history|section)\b")
_PICO_KEY = re.compile(r"^(?P<name>[^?(]+)(?P<optional>\?)?(?:\((?P<kind>array|object|enum)(?:,\s*(?P<desc>.*))?\))?$")


@dataclass(frozen=True)
class PromptProblem:
    key: str  # the front-matter key (dotted), "body", or "" for the whole file
    message: str


class PromptError(ValueError):
    def __init__(self, problems: list[PromptProblem]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{p.key}: {p.message}" if p.key else p.message for p in problems))


def parse_prompt(text: str, name: str) -> Agent:
    """The Agent a ``.prompt`` file describes (``name``: the file's stem, unless its ``name`` key says); raises
    :class:`PromptError` naming each key that cannot be mapped and why."""
    problems: list[PromptProblem] = []
    match = _FRONT.match(text)
    if match is None:
        raise PromptError([PromptProblem("", "a .prompt file starts with YAML front matter between '---' lines")])
    try:
        front = yaml.safe_load(match.group(1)) or {}
    except yaml.YAMLError as exc:
        raise PromptError([PromptProblem("", f"the front matter is not YAML: {exc}")]) from None
    if not isinstance(front, dict):
        raise PromptError([PromptProblem("", "the front matter must be a mapping of keys")])
    body = text[match.end():]
    spec: dict[str, Any] = {}
    model: dict[str, Any] = {}
    labels: dict[str, str] = {}
    for key, value in front.items():
        key = str(key)
        if key.startswith("lattice."):
            field = key.removeprefix("lattice.")
            if field in FROM_FILE:
                problems.append(PromptProblem(key, f"set {field} with the file's own keys, not lattice.{field}"))
            elif field == "labels":
                labels = value if isinstance(value, dict) else {}
                if not isinstance(value, dict):
                    problems.append(PromptProblem(key, "must be a mapping of label names to values"))
            elif field in MODEL_KEYS:
                model[field] = value
            else:
                spec[field] = value
        elif key not in KNOWN:
            problems.append(PromptProblem(key, f"unknown key (Dotprompt keys: {', '.join(KNOWN)}; lattice settings "
                                               "as lattice.KEY)"))
    problems += _model(front.get("model"), model)
    problems += _config(front.get("config"), model, spec)
    problems += _schemas(front, spec)
    problems += _tools(front.get("tools"), spec)
    if "description" in front:
        spec["description"] = str(front["description"])
    problems += _body(body, spec)
    name = str(front.get("name") or name)
    if problems:
        raise PromptError(problems)
    try:
        return Agent.model_validate({"metadata": {"name": name, "labels": labels},
                                     "spec": {**spec, "model": model}})
    except ValidationError as exc:
        found: dict[str, str] = {}  # the first message per key: a union type fails once per member
        for err in exc.errors(include_url=False):
            found.setdefault(_front_key(err["loc"]), err["msg"])
        raise PromptError([PromptProblem(k, m) for k, m in found.items()]) from None


def load_prompt(path: Path) -> Agent:
    return parse_prompt(path.read_text(encoding="utf-8"), path.stem)


def _front_key(loc: tuple[int | str, ...]) -> str:
    """Where a validation error of the built Agent came from, as a front-matter key."""
    parts = [str(p) for p in loc]
    if parts[:1] == ["metadata"]:
        return "name" if parts[1:2] == ["name"] else "lattice.labels"
    parts = parts[1:] if parts[:1] == ["spec"] else parts
    if parts[:1] == ["model"]:
        field = parts[1] if len(parts) > 1 else ""
        if field in ("name", "provider"):
            return "model"
        if field in ("temperature", "maxTokens", "max_tokens", "params"):
            return "config"
        return f"lattice.{field}" if field else "model"
    if parts[:1] in (["inputSchema"], ["input_schema"]):
        return "input.schema"
    if parts[:1] in (["outputSchema"], ["output_schema"]):
        return "output.schema"
    if parts[:1] == ["tools"]:
        return "tools"
    return "lattice." + ".".join(parts) if parts else ""


def _model(value: Any, model: dict[str, Any]) -> list[PromptProblem]:
    if not isinstance(value, str) or "/" not in value:
        return [PromptProblem("model", "give the model as PROVIDER/NAME: openai/gpt-4o, anthropic/claude-sonnet-4-5 "
                                       "(any OpenAI-compatible server: openai/NAME with lattice.baseUrl)")]
    provider, _, name = value.partition("/")
    if provider not in PROVIDERS:
        return [PromptProblem("model", f"provider {provider!r} is not supported: use openai/ (also for any "
                                       "OpenAI-compatible server, with lattice.baseUrl) or anthropic/")]
    model["provider"], model["name"] = PROVIDERS[provider], name
    return []


def _config(value: Any, model: dict[str, Any], spec: dict[str, Any]) -> list[PromptProblem]:
    if value is None:
        return []
    if not isinstance(value, dict):
        return [PromptProblem("config", "must be a mapping (temperature, maxOutputTokens, topP, ...)")]
    params = dict(model.get("params") or {})
    for key, v in value.items():
        if key in CONFIG_FIELDS:
            model[CONFIG_FIELDS[key]] = v
        elif key in CONFIG_PARAMS:
            param = CONFIG_PARAMS[key]
            if key == "stopSequences" and model.get("provider") == "anthropic":
                param = "stop_sequences"
            params[param] = v
        else:
            params[str(key)] = v
    if params:
        model["params"] = params
    return []


def _schemas(front: dict[str, Any], spec: dict[str, Any]) -> list[PromptProblem]:
    problems: list[PromptProblem] = []
    inp, out = front.get("input"), front.get("output")
    if inp is not None:
        if not isinstance(inp, dict):
            problems.append(PromptProblem("input", "must be a mapping with schema (and default)"))
        elif "schema" in inp:
            try:
                spec["inputSchema"] = picoschema(inp["schema"])
            except ValueError as exc:
                problems.append(PromptProblem("input.schema", str(exc)))
    if out is not None:
        if not isinstance(out, dict):
            problems.append(PromptProblem("output", "must be a mapping with format and schema"))
            return problems
        fmt = out.get("format", "json" if "schema" in out else "text")
        if fmt not in ("json", "text"):
            problems.append(PromptProblem("output.format", f"must be json or text, not {fmt!r}"))
        elif fmt == "json":
            if "schema" not in out:
                problems.append(PromptProblem("output.schema", "output.format json needs output.schema"))
            else:
                try:
                    spec["outputSchema"] = picoschema(out["schema"])
                except ValueError as exc:
                    problems.append(PromptProblem("output.schema", str(exc)))
    return problems


def _tools(value: Any, spec: dict[str, Any]) -> list[PromptProblem]:
    if value is None:
        return []
    if not isinstance(value, list):
        return [PromptProblem("tools", "must be a list of tool names")]
    refs: list[dict[str, Any]] = []
    servers: dict[str, list[str]] = {}
    delegation: list[str] = []
    problems = []
    for i, entry in enumerate(value):
        if isinstance(entry, dict):
            refs.append(entry)
        elif not isinstance(entry, str) or not entry:
            problems.append(PromptProblem(f"tools[{i}]", "must be a tool name or a tool entry mapping"))
        elif entry.startswith("lattice/"):
            which = entry.removeprefix("lattice/")
            if which not in LATTICE_TOOLS:
                problems.append(PromptProblem(f"tools[{i}]", f"{entry!r}: lattice tools are "
                                                             f"{', '.join('lattice/' + t for t in LATTICE_TOOLS)}"))
            else:
                delegation.append(which)
        elif ":" in entry:
            refs.append({"function": entry})
        else:
            server, _, tool = entry.partition("/")
            allow = servers.setdefault(server, [])
            if tool and tool != "*":
                allow.append(tool)
    refs += [{"server": s, "allow": a} if a else {"server": s} for s, a in servers.items()]
    if delegation:
        refs.append({"lattice": delegation})
    spec["tools"] = refs
    return problems


def _body(body: str, spec: dict[str, Any]) -> list[PromptProblem]:
    if (bad := _UNSUPPORTED.search(body)) is not None:
        return [PromptProblem("body", f"the {bad.group(1)!r} helper is not supported: agents get text input")]
    system: list[str] = []
    user: list[str] = []
    role = "user"
    pos = 0
    for m in _ROLE.finditer(body):
        (system if role == "system" else user).append(body[pos:m.start()])
        role, pos = m.group(1), m.end()
        if role == "model":
            return [PromptProblem("body", "{{role \"model\"}} sections (few-shot answers) are not supported")]
    (system if role == "system" else user).append(body[pos:])
    system_text, user_text = "".join(system).strip(), "".join(user).strip()
    if system_text:
        spec["systemPrompt"] = system_text
    if user_text:
        spec["promptTemplate"] = user_text
    return []


def picoschema(schema: Any) -> dict[str, Any]:
    """JSON Schema from Picoschema (or JSON Schema, returned as is); raises ValueError saying what is wrong."""
    if isinstance(schema, dict) and ("type" in schema or "properties" in schema or "$schema" in schema):
        return schema
    return _pico(schema, "schema")


def _pico(value: Any, where: str, description: str | None = None) -> dict[str, Any]:
    if isinstance(value, str):
        kind, _, desc = (part.strip() for part in value.partition(","))
        if kind not in SCALARS:
            raise ValueError(f"{where}: {kind!r} is not a type ({', '.join(sorted(SCALARS))})")
        out: dict[str, Any] = {} if kind == "any" else {"type": kind}
        if desc or description:
            out["description"] = desc or description
        return out
    if not isinstance(value, dict):
        raise ValueError(f"{where}: expected a type name or a mapping of fields, got {type(value).__name__}")
    props: dict[str, Any] = {}
    required: list[str] = []
    out = {"type": "object", "properties": props, "additionalProperties": False}
    if description:
        out["description"] = description
    for raw, sub in value.items():
        key = str(raw)
        if key == "*":
            out["additionalProperties"] = _pico(sub, f"{where}.*")
            continue
        m = _PICO_KEY.match(key)
        if m is None:
            raise ValueError(f"{where}: cannot read field {key!r}")
        name, kind, desc = m.group("name").strip(), m.group("kind"), m.group("desc")
        at = f"{where}.{name}"
        if kind == "array":
            props[name] = {"type": "array", "items": _pico(sub, f"{at}[]")} | ({"description": desc} if desc else {})
        elif kind == "object":
            props[name] = _pico(sub, at, desc)
        elif kind == "enum":
            if not isinstance(sub, list) or not sub:
                raise ValueError(f"{at}: an enum needs a list of values")
            props[name] = {"enum": sub} | ({"description": desc} if desc else {})
        else:
            props[name] = _pico(sub, at)
        if not m.group("optional"):
            required.append(name)
    if required:
        out["required"] = required
    return out
