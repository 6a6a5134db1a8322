"""``safe <command>``: one table from command to stage function; every flag comes from the stage's config
dataclass (:mod:`safe.stages.options`), so each default is written once, on the dataclass."""
from __future__ import annotations

import argparse
import importlib
import os
import pickle
import sys
import traceback
from dataclasses import dataclass

# Before torch (and MKL) load: MKL otherwise picks its thread count by machine load, which changes float
# summation order, so a long CPU training run (the built-in base models) is not reproducible run to run.
os.environ.setdefault("MKL_DYNAMIC", "FALSE")
os.environ.setdefault("MKL_CBWR", "AUTO")


@dataclass(frozen=True)
class Command:
    """One row of the table: ``module:function`` taking ``module:Config``; both are imported only when the
    command runs, so ``safe --help`` stays fast."""

    function: str
    config: str
    help: str

    def load(self, name: str):
        module, _, attr = name.partition(":")
        return getattr(importlib.import_module(module), attr)


S = "safe.stages."
COMMANDS: dict[str, Command | dict[str, Command]] = {
    "verify": Command(S + "verify:verify", S + "verify:VerifyConfig",
                      "Stage 1 safety verification: bit-exact bypass, frozen weights, parameter table"),
    "data": {"synth": Command(S + "builtin:synth", S + "builtin:SynthStageConfig",
                              "generate the built-in audio-visual benchmark"),
             "check": Command(S + "data_check:check_data", S + "data_check:DataCheckConfig",
                              "read a data spec's splits: rows, skips and reasons, tasks, audio share, bad media")},
    "base": {"build": Command(S + "builtin:build_base", S + "builtin:BaseBuildConfig",
                              "build the built-in frozen VL model and audio encoder")},
    "train": Command(S + "stage_a:train", S + "stage_a:TrainConfig",
                     "Stage A: train projector + gated adapters (audio CE, retention KL, Fisher, dual ascent)"),
    "policy": {
        "train": Command(S + "policy:train_policy", S + "policy:PolicyTrainConfig",
                         "Stages B and C: PPO policy over measured outcome tables, baselines, Pareto, distilled gate"),
        "distill": Command(S + "policy:distill_again", S + "policy:DistillConfig",
                           "Stage C again from the tables and PPO policy a train run saved"),
        "ablate-state": Command(S + "policy_state:ablate_state", S + "policy_state:StateAblationConfig",
                                "the policy's state ablated part by part: use rate, accuracy, cost over seeds"),
    },
    "eval": Command(S + "evaluate:evaluate", S + "evaluate:EvalConfig",
                    "the evaluation protocol: retention, audio gains, efficiency, attribution, robustness, gates"),
    "ablate": Command(S + "ablate:ablate", S + "ablate:AblateConfig",
                      "Stage A ablations over a config grid (no retention loss, k, LoRA rank, dense block)"),
    "report": Command(S + "evaluate:report", S + "evaluate:ReportConfig",
                      "write report.html (and plots / docs tables) from a run's metrics.json"),
    "predict": Command(S + "predict:predict_command", S + "predict:PredictConfig",
                       "answer questions about images and audio with a trained run (one JSON object each)"),
    "serve": Command(S + "serve:serve", S + "serve:ServeConfig",
                     "OpenAI-compatible chat endpoint over a trained run: per-request audio, dynamic batching"),
    "demo": Command(S + "demo:demo", S + "demo:DemoConfig",
                    "run the embedded pipeline end to end on CPU: data, base models, verify, Stages A, B, C, eval"),
}

# Printers for results whose command prints something other than the result's own summary().
PRINTERS = {"policy distill": ("safe.stages.policy:distill_summary", "safe.stages.policy:distill_ok")}


def _help_of(entry: Command | dict[str, Command]) -> str:
    return entry.help if isinstance(entry, Command) else "; ".join(f"{k}: {c.help}" for k, c in entry.items())


def _top_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="safe", description="SAFE: add audio to a frozen vision-language model.",
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="commands:\n" + "\n".join(f"  {name:<8}{_help_of(e)}"
                                                                      for name, e in COMMANDS.items()))
    parser.add_argument("command", nargs="?", choices=list(COMMANDS), metavar="command")
    return parser


def build_parser(name: str, command: Command) -> argparse.ArgumentParser:
    """The parser of one command, its flags derived from the command's config dataclass, plus ``--config``
    (a YAML file over the same settings); ``--help`` shows the defaults of the command's default config file."""
    from safe.stages.options import add_config_file_flag, add_config_flags, read_config_file

    cls = command.load(command.config)
    parser = argparse.ArgumentParser(prog=f"safe {name}", description=command.help)
    add_config_file_flag(parser, cls)
    add_config_flags(parser, cls, shown=read_config_file(getattr(cls, "DEFAULT_CONFIG", None)))
    return parser


def resolve(argv: list[str]) -> tuple[str, Command, list[str]] | None:
    """``(name, command, remaining argv)``, or None after printing help / an error for the command word(s)."""
    top = _top_parser()
    if not argv or argv[0] in ("-h", "--help"):
        top.print_help()
        return None
    entry = COMMANDS.get(argv[0])
    if entry is None:
        top.error(f"unknown command {argv[0]!r}; commands: {', '.join(COMMANDS)}")
    if isinstance(entry, Command):
        return argv[0], entry, argv[1:]
    actions = ", ".join(entry)
    if len(argv) < 2 or argv[1] not in entry:
        if len(argv) >= 2 and argv[1] in ("-h", "--help"):
            print(f"usage: safe {argv[0]} {{{actions}}} ...\n\n" +
                  "\n".join(f"  {k:<8}{c.help}" for k, c in entry.items()))
            return None
        top.error(f"safe {argv[0]} needs one of: {actions}" + (f" (got {argv[1]!r})" if len(argv) >= 2 else ""))
    return f"{argv[0]} {argv[1]}", entry[argv[1]], argv[2:]


#: Exceptions a user's input causes (options, files, data): one line and exit 2. Anything else is a bug:
#: one line, exit 1 and a hint to rerun with --debug. Either way the traceback is printed only with --debug.
#: ValueError stays a user error: the named input errors (StageError, ConfigError, SpecError, AudioInputError,
#: ImageInputError, CertificateError, ...) are its subclasses, and the library still raises a plain ValueError
#: for many bad inputs (a run's checkpoint files, --input rows). A plain ValueError may also be a bug, so
#: its line carries the --debug hint (:data:`PLAIN`). RecursionError is not here: one raised by the JSON or
#: YAML parser is an input nested too deep (a user error, :func:`_parser_too_deep`); any other is a bug.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError, EOFError, UnicodeError, pickle.UnpicklingError)
PLAIN: tuple[type[BaseException], ...] = (ValueError,)
"""User errors whose exact type (not a subclass) names no input problem: exit 2 with the --debug hint."""


def _user_errors() -> tuple[type[BaseException], ...]:
    extra = []
    try:  # safetensors' own error type (a truncated or garbage weights file), when it is installed
        from safetensors import SafetensorError

        extra.append(SafetensorError)
    except ImportError:
        pass
    try:
        from PIL import Image

        extra.append(Image.DecompressionBombError)
    except ImportError:
        pass
    try:
        import yaml

        extra.append(yaml.YAMLError)
    except ImportError:
        pass
    return USER_ERRORS + tuple(extra)


def _parser_too_deep(err: BaseException) -> bool:
    """A RecursionError raised inside the json or yaml package: a file nested deeper than the parser goes."""
    if not isinstance(err, RecursionError):
        return False
    import json

    roots = [os.path.dirname(json.__file__)]
    try:
        import yaml

        roots.append(os.path.dirname(yaml.__file__))
    except ImportError:
        pass
    frames = traceback.extract_tb(err.__traceback__)
    return bool(frames) and any(frames[-1].filename.startswith(r + os.sep) for r in roots)


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    if not isinstance(err, (ValueError, OSError)):  # a bare KeyError('x') says little without its type
        text = f"{type(err).__name__}: {text}"
    return text[:2000]


def main(argv: list[str] | None = None) -> int:
    """Run one command. Errors: one line on stderr naming the input, exit 2 for what the input caused
    (bad options, files, weights, configs, data), 1 for an internal error; ``--debug`` (anywhere in the
    arguments) shows the traceback instead."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    try:
        found = resolve(argv)
    except SystemExit as exit_:  # argparse's error: exit code 2, message already on stderr
        return int(exit_.code or 0)
    if found is None:
        return 0 if argv else 2
    name, command, rest = found
    from safe.stages.options import config_from_args

    parser = build_parser(name, command)
    parser.add_argument("--debug", action="store_true", help="print the traceback of an error (else: one line)")
    try:
        values = vars(parser.parse_args(rest))
    except SystemExit as exit_:
        return int(exit_.code or 0)
    values.pop("debug", None)
    try:
        config = config_from_args(command.load(command.config), values)
        result = command.load(command.function)(config)
    except KeyboardInterrupt:
        print(f"safe {name}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - the one error contract of the command line
        if debug:
            raise
        user = isinstance(err, _user_errors()) or _parser_too_deep(err)
        if not user:
            hint = " (an internal error; rerun with --debug for the traceback)"
        else:
            hint = " (rerun with --debug for the traceback)" if type(err) in PLAIN else ""
        print(f"safe {name}: error: {_one_line(err)}{hint}", file=sys.stderr)
        return 2 if user else 1
    summary, ok = PRINTERS.get(name, (None, None))
    print(command.load(summary)(result) if summary else result.summary())
    return 0 if (command.load(ok)(result) if ok else result.ok) else 1


if __name__ == "__main__":
    sys.exit(main())
