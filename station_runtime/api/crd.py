"""CustomResourceDefinitions generated from the pydantic models, so the API server validates exactly what
``lattice up`` validates. ``python -m station_runtime.api.crd crds/`` writes them; a test fails when the committed
YAML differs from what this module generates.

The pydantic JSON schema is turned into a Kubernetes *structural* schema: references inlined, ``Optional[X]``
becomes ``X`` with ``nullable``, ``Literal`` becomes ``enum``, a union of different types (a WorkItem's input may
be text or an object) becomes ``x-kubernetes-preserve-unknown-fields``, and cross-field rules that pydantic checks
in validators are repeated as CEL ``x-kubernetes-validations`` so the API server refuses the same manifests.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from .models import GROUP, NAME_PATTERN, VERSION, Agent, Station, ToolServer, WorkItem
from .status import AgentStatus, StationStatus, ToolServerStatus, WorkItemStatus

_DROP = {"title", "$defs"}


def _structural(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, list):
        return [_structural(n, defs) for n in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = defs[node["$ref"].rsplit("/", 1)[1]]
        merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        return _structural(merged, defs)
    if "anyOf" in node:
        options = [o for o in node["anyOf"] if o.get("type") != "null"]
        nullable = len(options) < len(node["anyOf"])
        rest = {k: v for k, v in node.items() if k != "anyOf"}
        if len(options) == 1:
            single: dict[str, Any] = _structural({**options[0], **rest}, defs)
            if nullable:
                single["nullable"] = True
                if single.get("default", 0) is None:
                    del single["default"]
            return single
        # Several types (e.g. text or object): let the API server keep whatever it is; the operator validates.
        mixed = {k: _structural(v, defs) for k, v in rest.items() if k not in _DROP and k != "default"}
        mixed["x-kubernetes-preserve-unknown-fields"] = True
        return mixed
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROP:
            continue
        if key == "const":
            out["enum"] = [value]
            out.setdefault("type", "string")
        elif key == "properties":
            out[key] = {name: _structural(prop, defs) for name, prop in value.items()}
        elif key == "additionalProperties":
            if value is False:
                continue  # structural schemas reject unknown fields by pruning; kubectl --validate=strict warns
            out[key] = {"x-kubernetes-preserve-unknown-fields": True} if value is True else _structural(value, defs)
        elif key == "default" and value is None:
            continue
        elif key in ("exclusiveMinimum", "exclusiveMaximum") and not isinstance(value, bool):
            # JSON Schema 2020 puts the bound here; OpenAPI 3.0 (Kubernetes) wants minimum + a boolean flag.
            out["minimum" if key == "exclusiveMinimum" else "maximum"] = value
            out[key] = True
        else:
            out[key] = _structural(value, defs)
    if "enum" in out and out.get("type") == "string":
        # Bounded strings keep the API server's CEL cost estimate of the rules below in budget.
        out.setdefault("maxLength", max(len(str(v)) for v in out["enum"]))
    if out.get("type") == "object" and "properties" not in out and "additionalProperties" not in out:
        out["x-kubernetes-preserve-unknown-fields"] = True
    return out


def schema_of(model: type[BaseModel]) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    result: dict[str, Any] = _structural(raw, raw.get("$defs", {}))
    return result


# Rules pydantic checks in model validators, repeated for the API server.
_RULES: dict[str, list[dict[str, str]]] = {
    "Agent": [
        {"rule": "self.model.provider != 'python' || has(self.model.function)",
         "message": "provider 'python' needs function: 'module:function'"},
        {"rule": "!(self.model.provider in ['openai', 'anthropic']) || has(self.model.name)",
         "message": "providers 'openai' and 'anthropic' need name: the model to call"},
        {"rule": "!has(self.tools) || size(self.tools) == 0 || self.model.provider in ['openai', 'anthropic']",
         "message": "tools need a model that calls them (provider openai or anthropic)"},
        {"rule": "!has(self.tools) || self.tools.all(t, (has(t.server) ? 1 : 0) + (has(t.mcp) ? 1 : 0)"
                 " + (has(t.function) ? 1 : 0) + (has(t.lattice) ? 1 : 0) + (has(t.askUser) ? 1 : 0) == 1)",
         "message": "a tool entry sets exactly one of server, mcp, function, lattice, askUser"},
    ],
    "ToolServer": [
        {"rule": "has(self.command) || has(self.url)",
         "message": "an MCP server needs command (stdio) or url (http)"},
    ],
    "WorkItem": [
        {"rule": "self == oldSelf", "message": "a WorkItem's spec is immutable: create a new WorkItem"},
        {"rule": "has(self.agent) || (has(self.requiredCapabilities) && size(self.requiredCapabilities) > 0)"
                 " || (has(self.steps) && size(self.steps) > 0)",
         "message": "set agent, requiredCapabilities or steps: work must say what may run it"},
    ],
}

_COLUMNS: dict[str, list[dict[str, Any]]] = {
    "Station": [
        {"name": "Org", "type": "string", "jsonPath": ".status.org"},
        {"name": "Ready", "type": "string", "jsonPath": ".status.conditions[?(@.type==\"Ready\")].status"},
        {"name": "Replicas", "type": "string", "jsonPath": ".status.readyReplicas",
         "description": "Stations live in the lattice"},
        {"name": "Load", "type": "string", "jsonPath": ".status.loadSummary"},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ],
    "Agent": [
        {"name": "Model", "type": "string", "jsonPath": ".status.model"},
        {"name": "Stations", "type": "integer", "jsonPath": ".status.stations"},
        {"name": "Ready", "type": "boolean", "jsonPath": ".status.ready"},
        {"name": "Tools", "type": "string", "jsonPath": ".status.toolsSummary"},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ],
    "ToolServer": [
        {"name": "Org", "type": "string", "jsonPath": ".status.org"},
        {"name": "Transport", "type": "string", "jsonPath": ".status.transport"},
        {"name": "Ready", "type": "string", "jsonPath": ".status.conditions[?(@.type==\"Ready\")].status"},
        {"name": "Agents", "type": "string", "jsonPath": ".status.agents"},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        {"name": "Tools", "type": "string", "jsonPath": ".status.tools", "priority": 1},
    ],
    "WorkItem": [
        {"name": "Agent", "type": "string", "jsonPath": ".spec.agent"},
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
        {"name": "Station", "type": "string", "jsonPath": ".status.station"},
        {"name": "Attempts", "type": "integer", "jsonPath": ".status.attempts"},
        {"name": "Waiting", "type": "string", "jsonPath": ".status.waitingFor"},
        {"name": "Cost", "type": "number", "jsonPath": ".status.costUsd", "priority": 1},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        {"name": "Reason", "type": "string", "jsonPath": ".status.reason", "priority": 1},
    ],
}

_KINDS: list[tuple[type[BaseModel], type[BaseModel], str, list[str]]] = [
    (Station, StationStatus, "stations", ["stn"]),
    (Agent, AgentStatus, "agents", ["agt"]),
    (ToolServer, ToolServerStatus, "toolservers", ["ts"]),
    (WorkItem, WorkItemStatus, "workitems", ["wi"]),
]


def crd_for(model: type[BaseModel], status: type[BaseModel], plural: str, short_names: list[str]) -> dict[str, Any]:
    kind = model.__name__
    spec_field = model.model_fields["spec"]
    spec_model = spec_field.annotation
    assert isinstance(spec_model, type) and issubclass(spec_model, BaseModel)
    spec_schema = schema_of(spec_model)
    if kind in _RULES:
        spec_schema["x-kubernetes-validations"] = _RULES[kind]
    status_schema = schema_of(status)
    status_schema["properties"]["kopf"] = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
    root: dict[str, Any] = {
        "type": "object",
        "required": ["spec"] if spec_field.is_required() else [],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            # Names become NATS subject tokens: no dots (Kubernetes would allow them in custom resources).
            "metadata": {"type": "object", "properties": {"name": {
                "type": "string", "maxLength": 63, "pattern": NAME_PATTERN}}},
            "spec": spec_schema,
            "status": status_schema,
        },
    }
    if not root["required"]:
        del root["required"]
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{GROUP}", "labels": {"app.kubernetes.io/part-of": "station-lattice"}},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {"kind": kind, "listKind": f"{kind}List", "plural": plural, "singular": kind.lower(),
                      "shortNames": short_names, "categories": ["lattice"]},
            "versions": [{
                "name": VERSION, "served": True, "storage": True,
                "subresources": {"status": {}},
                "additionalPrinterColumns": _COLUMNS[kind],
                "schema": {"openAPIV3Schema": root},
            }],
        },
    }


def all_crds() -> dict[str, dict[str, Any]]:
    """File name -> CRD, for every kind."""
    return {f"{GROUP}_{plural}.yaml": crd_for(model, status, plural, short)
            for model, status, plural, short in _KINDS}


def render(crd: dict[str, Any]) -> str:
    header = "# Generated by `python -m station_runtime.api.crd crds/` from station_runtime/api; do not edit.\n"
    return header + yaml.safe_dump(crd, sort_keys=False, width=120)


def write(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, crd in all_crds().items():
        path = directory / name
        path.write_text(render(crd))
        written.append(path)
    return written


if __name__ == "__main__":
    for path in write(Path(sys.argv[1] if len(sys.argv) > 1 else "crds")):
        print(path)
