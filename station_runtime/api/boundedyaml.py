"""YAML with bounds: safe types only, and limits on nesting, aliases and size, so that no document (a typo, a
hostile one) can crash or exhaust the process that reads it.

Without them, YAML nested 5,000 deep raised ``RecursionError``, and a 700-byte "billion laughs" document (aliases
of aliases) came back as a tiny tree that any walk over it (validation, printing) expands to billions of items.
PyYAML shares an aliased node instead of copying it, so the cost is not in loading but in what comes after: the
limit is on how many aliases a document may use.
"""

from __future__ import annotations

from typing import Any, Final

import yaml
from yaml.composer import Composer
from yaml.events import AliasEvent
from yaml.nodes import Node

#: Deepest nesting of mappings and sequences (a manifest needs fewer than ten).
MAX_DEPTH: Final = 64
#: Aliases a document may use (manifests rarely use any; a laughs bomb needs dozens).
MAX_ALIASES: Final = 32
#: Nodes in a document (a long manifest has hundreds).
MAX_NODES: Final = 100_000


class YamlLimitError(yaml.YAMLError):
    """A document is beyond one of the bounds."""


class BoundedLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that counts depth, aliases and nodes as it composes each document."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._aliases = 0
        self._nodes = 0

    def compose_document(self) -> Node | None:
        self._depth = self._aliases = self._nodes = 0
        node: Node | None = Composer.compose_document(self)
        return node

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        if self.check_event(AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                raise YamlLimitError(f"the document uses more than {MAX_ALIASES} aliases (*name): refused, as a "
                                     "document that expands without bound would be")
        self._nodes += 1
        if self._nodes > MAX_NODES:
            raise YamlLimitError(f"the document has more than {MAX_NODES} nodes")
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise YamlLimitError(f"the document is nested deeper than {MAX_DEPTH} levels")
            node: Node | None = Composer.compose_node(self, parent, index)
            return node
        finally:
            self._depth -= 1


def load_all(text: str) -> list[Any]:
    """Every document of ``text`` (empty ones as None); raises ``yaml.YAMLError`` (or :class:`YamlLimitError`)."""
    return list(yaml.load_all(text, Loader=BoundedLoader))  # a SafeLoader with bounds: no arbitrary objects
