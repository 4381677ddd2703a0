"""Label selectors: kubectl syntax in, Kubernetes matching semantics out."""

from __future__ import annotations

import pytest

from station_runtime.contract.selectors import (
    LabelSelector,
    SelectorRequirement,
    parse_labels,
    parse_selector,
    selector_matches,
)


def test_unset_selector_selects_everything() -> None:
    assert selector_matches(None, {})
    assert selector_matches(LabelSelector(), {"a": "b"})


@pytest.mark.parametrize(("text", "labels", "expected"), [
    ("team=docs", {"team": "docs"}, True),
    ("team==docs", {"team": "docs"}, True),
    ("team=docs", {"team": "ops"}, False),
    ("team!=docs", {"team": "ops"}, True),
    ("team!=docs", {}, True),
    ("team", {"team": "x"}, True),
    ("!team", {"team": "x"}, False),
    ("!team", {}, True),
    ("tier in (a, b)", {"tier": "b"}, True),
    ("tier in (a,b)", {"tier": "c"}, False),
    ("tier notin (a,b)", {"tier": "c"}, True),
    ("tier notin (a,b)", {}, True),
    ("team=docs,tier in (a,b),!legacy", {"team": "docs", "tier": "a"}, True),
    ("team=docs,tier in (a,b),!legacy", {"team": "docs", "tier": "a", "legacy": "1"}, False),
])
def test_parse_and_match(text: str, labels: dict[str, str], expected: bool) -> None:
    assert selector_matches(parse_selector(text), labels) is expected


@pytest.mark.parametrize(("text", "fragment"), [
    ("tier in a,b", "parentheses"),
    ("a=b,,c=d", "empty term"),
    ("tier in (a", "unbalanced"),
    ("=x", "no key"),
])
def test_bad_selectors_say_why(text: str, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        parse_selector(text)


def test_requirement_operators_validate_values() -> None:
    with pytest.raises(ValueError, match="needs at least one value"):
        SelectorRequirement(key="a", operator="In")
    with pytest.raises(ValueError, match="takes no values"):
        SelectorRequirement(key="a", operator="Exists", values=["x"])


def test_parse_labels() -> None:
    assert parse_labels(["a=1", "b=2,c=3"]) == {"a": "1", "b": "2", "c": "3"}
    with pytest.raises(ValueError, match="key=value"):
        parse_labels(["novalue"])
