"""YAML read with bounded cost, and values shown in error messages at bounded length.

A few hundred bytes of YAML can define nested aliases (``b: [*a, *a, ...]``, ``c: [*b, *b, ...]``)
whose expansion is exponential: the loaded object shares its parts, but anything that walks it in full
(a ``repr`` in an error message, a JSON dump) never ends. :func:`load_yaml` refuses a document with
more than :data:`MAX_ALIASES` alias uses or nested deeper than :data:`MAX_DEPTH`; :func:`show` formats
a value for a message in at most a few hundred characters whatever its shape.
"""
from __future__ import annotations

import reprlib
from typing import Any

import yaml

MAX_ALIASES = 100
"""Alias uses (``*name``) accepted in one document; a data spec or config needs a handful at most."""
MAX_DEPTH = 100
"""Deepest nesting of lists and mappings accepted."""

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

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                raise yaml.YAMLError(f"more than {MAX_ALIASES} alias uses (*name); a data file needs a few at most")
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise yaml.YAMLError(f"nested more than {MAX_DEPTH} levels deep")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def load_yaml(text: str) -> Any:
    """``yaml.safe_load(text)`` under the alias and depth bounds (``yaml.YAMLError`` past them)."""
    return yaml.load(text, Loader=_BoundedLoader)  # noqa: S506 - a SafeLoader subclass


__all__ = ["MAX_ALIASES", "MAX_DEPTH", "load_yaml", "show"]
