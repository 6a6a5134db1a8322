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


@dataclass
class Arch:
    width: int = 8
    """Width."""
    layers: list[int] = field(default_factory=lambda: [-1])
    """Layers."""


@dataclass
class Recipe:
    steps: int = 5
    """Optimiser steps."""
    share: float = 0.5
    """Audio share."""
    inner: Inner = field(default_factory=Inner)
    """Nested inside a group."""
    arch: dict = field(default_factory=dict, metadata={"fields": Arch})
    """Only the keys given."""


@dataclass
class Command:
    run_dir: str = "runs/x"
    """Run."""
    tiny: bool = field(default=False, metadata={"hidden": True})
    """For tests."""
    recipe: Recipe = field(default_factory=Recipe, metadata={"group": True})
    """The recipe."""


def _parser(cls, shown=None):
    from safe.stages.options import add_config_file_flag

    p = argparse.ArgumentParser(prog="t", exit_on_error=False)
    add_config_file_flag(p, cls)
    add_config_flags(p, cls, shown=shown)
    return p


def test_group_flags_are_dotted_yaml_keys():
    cfg = config_from_args(Command, vars(_parser(Command).parse_args(
        ["--recipe.steps", "7", "--recipe.inner.rates", "1,2", "--recipe.arch.width", "3", "--tiny"])))
    assert cfg.recipe == Recipe(steps=7, inner=Inner(rates=[1.0, 2.0]), arch={"width": 3}) and cfg.tiny
    # group flags do not clash with a top-level flag of the same field name
    assert "--recipe.inner.steps" in _parser(Command).format_help()


def test_a_config_file_holds_the_same_settings_and_flags_win(tmp_path):
    from safe.stages.options import given_flags

    path = tmp_path / "c.yaml"
    path.write_text("run_dir: runs/y\nrecipe:\n  steps: 9\n  share: 0.7\n  arch: {layers: [0, 1]}\n")
    cfg = config_from_args(Command, vars(_parser(Command).parse_args(
        ["--config", str(path), "--recipe.steps", "11", "--recipe.arch.width", "4"])))
    assert cfg.run_dir == "runs/y" and cfg.recipe.steps == 11 and cfg.recipe.share == 0.7
    assert cfg.recipe.arch == {"layers": [0, 1], "width": 4}  # merged key by key
    assert given_flags(cfg) == {"recipe.steps", "recipe.arch.width"}  # what the command line set, not the file
    path.write_text("recipe:\n  stpes: 9\n")
    with pytest.raises(ValueError, match="unknown setting.*recipe.stpes"):
        config_from_args(Command, vars(_parser(Command).parse_args(["--config", str(path)])))


def test_hidden_flags_and_shown_defaults_in_help():
    text = " ".join(_parser(Command, shown={"recipe": {"steps": 2000}}).format_help().split())
    assert "--tiny" not in text
    assert "Optimiser steps. (default: 2000)" in text  # the default config file's value, not the dataclass's


def test_set_is_refused_with_what_replaces_it():
    with pytest.raises((SystemExit, argparse.ArgumentError)):
        _parser(Command).parse_args(["--set", "steps=3"])


def test_a_union_field_takes_a_number_a_list_or_its_named_setting():
    """SAFEConfig.output_scale (a number, one per fusion layer, or \"hidden_rms\") through safe train's flags."""
    from safe.stages.stage_a import TrainConfig

    def scale(*flag):
        p = argparse.ArgumentParser(prog="t")
        add_config_flags(p, TrainConfig)
        return config_from_args(TrainConfig, vars(p.parse_args(list(flag)))).stage_a.safe_config().output_scale

    assert scale("--stage_a.safe.output_scale", "2.5") == 2.5
    assert scale("--stage_a.safe.output_scale", "hidden_rms") == "hidden_rms"
    assert scale("--stage_a.safe.fusion_layers", "0,1", "--stage_a.safe.output_scale", "3,4") == [3.0, 4.0]
    with pytest.raises(ValueError, match="output_scale"):
        scale("--stage_a.safe.output_scale", "large")
