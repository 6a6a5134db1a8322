"""Flags derived from config dataclasses: names, types, help from field docstrings, defaults written once."""
import argparse
from dataclasses import dataclass, field
from typing import Literal

import pytest

from safe.stages.options import add_config_flags, config_from_args, field_docs


@dataclass
class Inner:
    steps: int = 5
    """Optimiser steps."""
    rates: list[float] = field(default_factory=lambda: [0.1, 0.2])
    """Rates, comma-separated."""


@dataclass
class Outer:
    name: str = "x"
    """The name."""
    limit: float | None = None
    """An optional limit."""
    fresh: bool = False
    """Start over."""
    kind: Literal["a", "b"] = "a"
    """Which kind."""
    tags: list[str] = field(default_factory=list, metadata={"flag": "--tag"})
    """A tag (repeatable)."""
    inner: Inner = field(default_factory=Inner)
    """Nested settings."""

    def __post_init__(self) -> None:
        if self.limit is not None and self.limit < 0:
            raise ValueError(f"limit must be >= 0, got {self.limit}")


def parse(cls, argv):
    p = argparse.ArgumentParser(prog="t", exit_on_error=False)
    add_config_flags(p, cls)
    return config_from_args(cls, vars(p.parse_args(argv)))


def test_field_docs_read_attribute_docstrings():
    assert field_docs(Outer)["limit"] == "An optional limit."
    assert field_docs(Inner) == {"steps": "Optimiser steps.", "rates": "Rates, comma-separated."}


def test_defaults_come_from_the_dataclass():
    assert parse(Outer, []) == Outer()


def test_every_kind_of_flag():
    cfg = parse(Outer, ["--name", "y", "--limit", "2.5", "--fresh", "--kind", "b", "--tag", "p", "--tag", "q",
                        "--steps", "7", "--rates", "0.5,1"])
    assert cfg == Outer(name="y", limit=2.5, fresh=True, kind="b", tags=["p", "q"], inner=Inner(steps=7, rates=[0.5, 1.0]))
    assert parse(Outer, ["--no-fresh", "--limit", "none"]).limit is None


def test_bad_values_name_the_flag():
    p = argparse.ArgumentParser(prog="t")
    add_config_flags(p, Outer)
    with pytest.raises(SystemExit):
        p.parse_args(["--steps", "many"])
    with pytest.raises(SystemExit):
        p.parse_args(["--kind", "c"])
    with pytest.raises(ValueError, match="limit must be >= 0"):
        config_from_args(Outer, vars(p.parse_args(["--limit", "-1"])))


def test_help_shows_docstring_and_default(capsys):
    p = argparse.ArgumentParser(prog="t")
    add_config_flags(p, Outer)
    text = p.format_help()
    assert "Optimiser steps. (default: 5)" in " ".join(text.split())
    assert "--rates A,B,..." in text


def test_flag_clash_is_refused():
    @dataclass
    class Clash:
        steps: int = 1
        """Outer steps."""
        inner: Inner = field(default_factory=Inner)
        """Nested."""

    with pytest.raises(TypeError, match="--steps"):
        add_config_flags(argparse.ArgumentParser(), Clash)
