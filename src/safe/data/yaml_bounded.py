"""YAML read with bounded cost, and values shown in error messages at bounded length.

A few hundred bytes of YAML can define nested aliases (``b: [*a, *a, ...]``, ``c: [*b, *b, ...]``)
whose expansion is exponential: the loaded object shares its parts, but anything that walks it in full
(a ``repr`` in an error message, a JSON dump, a loop over a list) never ends. :func:`load_yaml` refuses
a document with more than :data:`MAX_ALIASES` alias uses, more than :data:`MAX_NODES` values once its
aliases are expanded (an alias counts as the whole value it names, so ten aliases of ten aliases of ...
are judged by what they expand to), or nested deeper than :data:`MAX_DEPTH`; :func:`show` formats a
value for a message in at most a few hundred characters whatever its shape.
"""
from __future__ import annotations

import reprlib
from typing import Any

import yaml

MAX_ALIASES = 100
"""Alias uses (``*name``) accepted in one document; a data spec or config needs a handful at most."""
MAX_DEPTH = 100
"""Deepest nesting of lists and mappings accepted."""
MAX_NODES = 100_000
"""Most values (scalars, lists and mappings, each alias counted as the value it names, expanded) in one
document: a data spec or a config holds a few hundred."""

_repr = reprlib.Repr()
_repr.maxlevel, _repr.maxstring, _repr.maxother, _repr.maxlist, _repr.maxdict = 3, 80, 80, 6, 6


def show(value: Any) -> str:
    """``repr(value)``, cut to a bounded size (nested containers and long strings elided with ``...``)."""
    return _repr.repr(value)


class _BoundedLoader(yaml.SafeLoader):
    def __init__(self, stream) -> None:
        super().__init__(stream)
        self._aliases = 0
        self._depth = 0
        self._sizes: dict[int, int] = {}  # id(node) -> values in it, its aliases expanded

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                raise yaml.YAMLError(f"more than {MAX_ALIASES} alias uses (*name); a data file needs a few at most")
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise yaml.YAMLError(f"nested more than {MAX_DEPTH} levels deep")
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        if id(node) not in self._sizes:  # a new value (an alias returns its target, already counted)
            if isinstance(node, yaml.SequenceNode):
                children = node.value
            elif isinstance(node, yaml.MappingNode):
                children = [n for pair in node.value for n in pair]
            else:
                children = []
            # A child still being composed (an alias to its own ancestor) is not in _sizes yet: 1.
            size = 1 + sum(self._sizes.get(id(c), 1) for c in children)
            if size > MAX_NODES:
                raise yaml.YAMLError(f"more than {MAX_NODES} values once its aliases (*name) are expanded; "
                                     "a data file holds a few hundred")
            self._sizes[id(node)] = size
        return node


def load_yaml(text: str) -> Any:
    """``yaml.safe_load(text)`` under the alias and depth bounds (``yaml.YAMLError`` past them)."""
    return yaml.load(text, Loader=_BoundedLoader)  # noqa: S506 - a SafeLoader subclass


__all__ = ["MAX_ALIASES", "MAX_DEPTH", "MAX_NODES", "load_yaml", "show"]
