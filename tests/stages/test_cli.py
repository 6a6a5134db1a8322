"""The command table: every command's flags come from its config dataclass, each flag is documented, and a
command that fails on its arguments prints one line, exits 2 and leaves nothing behind."""
import pytest

from safe.cli import COMMANDS, Command, build_parser, main
from safe.stages.options import field_docs


def _commands():
    for name, entry in COMMANDS.items():
        if isinstance(entry, Command):
            yield name, entry
        else:
            yield from ((f"{name} {action}", c) for action, c in entry.items())


@pytest.mark.parametrize("name, command", list(_commands()), ids=[n for n, _ in _commands()])
def test_every_flag_is_documented(name, command):
    parser = build_parser(name, command)
    for action in parser._actions:
        if action.option_strings and action.dest != "help":
            assert action.help and action.help.strip(), f"safe {name} {action.option_strings[0]} has no help"
    config = command.load(command.config)
    assert config.__doc__ and field_docs(config)


def test_top_level_help_lists_every_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert name in out
    assert main([]) == 2


@pytest.mark.parametrize("argv, message", [
    (["nope"], "unknown command 'nope'"),
    (["policy"], "needs one of: train, distill"),
    (["policy", "fly"], "needs one of: train, distill"),
    (["verify", "--batch", "1"], "--batch must be an integer >= 2"),
    (["policy", "train", "--steps", "many"], "--steps takes an integer, got 'many'"),
    (["policy", "train", "--state", "late"], "invalid choice: 'late'"),
    (["train", "--stage_a.steps", "0"], "steps: expected a positive integer, got 0"),
    (["train", "--set", "steps=0"], "--set is gone: give each setting as its own flag (--set steps=200 is now "
                                    "--stage_a.steps 200"),
    (["train", "--config", "nowhere.yaml"], "config file not found: nowhere.yaml"),
])
def test_bad_arguments_are_one_line_and_exit_2(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("command", [["policy", "train"], ["eval"], ["policy", "distill"], ["report"]])
def test_a_failed_command_leaves_no_run_directory(command, tmp_path, capsys):
    run = tmp_path / "nonexistent" / "run"
    assert main([*command, "--run-dir", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"safe {' '.join(command)}: error:")
    assert not run.exists() and not run.parent.exists()


def _leaf_settings(cls, prefix=""):
    """Dotted paths of every setting of a config dataclass (nested dataclasses and field-schema dicts opened)."""
    import dataclasses
    import typing

    from safe.stages.options import _unwrap_optional

    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        tp, _ = _unwrap_optional(hints[f.name])
        inner = f.metadata.get("fields") or (tp if dataclasses.is_dataclass(tp) else None)
        if inner is not None:
            yield from _leaf_settings(inner, prefix + f.name + ".")
        else:
            yield prefix + f.name


@pytest.mark.parametrize("name, command", list(_commands()), ids=[n for n, _ in _commands()])
def test_every_setting_is_a_flag(name, command):
    """Each field of a command's config, nested ones included (Stage A's 30-odd under --stage_a.), has a flag
    whose value lands on that field; none is reachable only through a file or a key=value string."""
    parser = build_parser(name, command)
    dests = {a.dest for a in parser._actions}
    missing = [s for s in _leaf_settings(command.load(command.config)) if s not in dests]
    assert not missing, f"safe {name}: settings without a flag: {missing}"


def test_train_help_shows_stage_a_settings_with_the_recipe_defaults(capsys):
    assert main(["train", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--stage_a.steps STEPS Optimiser steps. (default: 2000)" in text  # stage_a_builtin.yaml's value
    assert "--stage_a.safe.lora_rank" in text and "--stage_a.curriculum.start" in text
    assert "--tiny" not in text  # test-only switches stay out of the help
