"""Kubernetes-style label selectors and their (pure) matching."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel


class SelectorRequirement(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")

    key: str
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    values: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _values(self) -> SelectorRequirement:
        if self.operator in ("In", "NotIn") and not self.values:
            raise ValueError(f"operator {self.operator} needs at least one value")
        if self.operator in ("Exists", "DoesNotExist") and self.values:
            raise ValueError(f"operator {self.operator} takes no values")
        return self

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        match self.operator:
            case "In":
                return present and labels[self.key] in self.values
            case "NotIn":
                return not present or labels[self.key] not in self.values
            case "Exists":
                return present
            case "DoesNotExist":
                return not present


class LabelSelector(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")

    match_labels: dict[str, str] = Field(default_factory=dict)
    match_expressions: list[SelectorRequirement] = Field(default_factory=list)

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(labels.get(k) == v for k, v in self.match_labels.items()) and all(
            r.matches(labels) for r in self.match_expressions
        )


def selector_matches(selector: LabelSelector | None, labels: Mapping[str, str]) -> bool:
    """An unset selector selects everything, as in Kubernetes."""
    return selector is None or selector.matches(labels)


def parse_selector(text: str) -> LabelSelector | None:
    """Parse kubectl's selector syntax: ``k=v``, ``k==v``, ``k!=v``, ``k``, ``!k``, ``k in (a,b)``,
    ``k notin (a,b)``, comma-separated. Empty text selects everything (None)."""
    text = text.strip()
    if not text:
        return None
    match_labels: dict[str, str] = {}
    exprs: list[SelectorRequirement] = []
    for term in _split_terms(text):
        lowered = term.replace("\t", " ")
        if " notin " in lowered or " in " in lowered:
            op = "NotIn" if " notin " in lowered else "In"
            key, _, rest = lowered.partition(" notin " if op == "NotIn" else " in ")
            rest = rest.strip()
            if not (rest.startswith("(") and rest.endswith(")")):
                raise ValueError(f"selector term {term!r}: values must be in parentheses, e.g. 'k in (a,b)'")
            values = [v.strip() for v in rest[1:-1].split(",") if v.strip()]
            exprs.append(SelectorRequirement(key=key.strip(), operator=op, values=values))
        elif "!=" in term:
            key, _, value = term.partition("!=")
            exprs.append(SelectorRequirement(key=key.strip(), operator="NotIn", values=[value.strip()]))
        elif "=" in term:
            key, _, value = term.replace("==", "=").partition("=")
            if not key.strip():
                raise ValueError(f"selector term {term!r} has no key")
            match_labels[key.strip()] = value.strip()
        elif term.startswith("!"):
            exprs.append(SelectorRequirement(key=term[1:].strip(), operator="DoesNotExist"))
        else:
            exprs.append(SelectorRequirement(key=term.strip(), operator="Exists"))
    return LabelSelector(match_labels=match_labels, match_expressions=exprs)


def _split_terms(text: str) -> list[str]:
    """Split on commas that are not inside parentheses."""
    terms, depth, current = [], 0, ""
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            terms.append(current.strip())
            current = ""
        else:
            current += ch
    if depth != 0:
        raise ValueError(f"selector {text!r} has unbalanced parentheses")
    terms.append(current.strip())
    if any(not t for t in terms):
        raise ValueError(f"selector {text!r} has an empty term")
    return terms


def parse_labels(items: list[str]) -> dict[str, str]:
    """``["k=v", "a=b,c=d"]`` -> ``{"k": "v", "a": "b", "c": "d"}``."""
    out: dict[str, str] = {}
    for item in items:
        for pair in filter(None, (p.strip() for p in item.split(","))):
            key, sep, value = pair.partition("=")
            if not sep or not key:
                raise ValueError(f"label {pair!r} must look like key=value")
            out[key.strip()] = value.strip()
    return out
