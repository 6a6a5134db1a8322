"""Stage configs as the single source of every option: help text from the fields' docstrings, and
``argparse`` flags derived from the fields (the CLI builds nothing by hand, so each default is defined
once, on the dataclass).

A config dataclass documents a field with a string literal right after it (as PEP 257 attribute
docstrings, read here from the source with :mod:`ast`, as jsonargparse and litgpt do)::

    @dataclass
    class TrainConfig:
        run_dir: str = "runs/demo"
        \"\"\"Run directory (checkpoints, logs, metrics.json).\"\"\"

Flags: ``run_dir`` -> ``--run-dir``; ``bool`` -> ``--x`` / ``--no-x``; ``list[str]`` -> a repeatable
flag; ``list[int]`` / ``list[float]`` -> one comma-separated value; ``Literal[...]`` -> choices; a
nested dataclass field contributes its own fields' flags. ``field(metadata={"flag": "--set"})`` renames
a flag; ``metadata={"cli": False}`` keeps a field off the command line; ``metadata={"positional": True}`` makes
a ``str`` field a positional argument (required when the field has no default). Flags not given are not passed,
so the dataclass's own default and its ``__post_init__`` validation apply.

Groups: a nested dataclass field with ``metadata={"group": True}`` gets dotted flags named as its YAML keys
(``stage_a: StageAConfig`` -> ``--stage_a.steps``, ``--stage_a.curriculum.start``); a ``dict`` field with
``metadata={"fields": SomeDataclass}`` gets one flag per field of that dataclass and holds only the keys given.
``metadata={"hidden": True}`` keeps a flag out of ``--help`` (test-only switches).

Config files: :func:`make_config` builds a config from a YAML mapping over the same fields (nested mappings
for nested dataclasses) with flags on top, so a recipe is nothing but saved flags; every command takes
``--config PATH`` (:func:`add_config_file_flag`), and a class may name its default file in ``DEFAULT_CONFIG``
(a shipped recipe).
"""
from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import textwrap
import types
import typing
from functools import cache
from typing import Any, Literal, Union, get_args, get_origin


@cache
def field_docs(cls: type) -> dict[str, str]:
    """``{field: docstring}`` of a dataclass and its dataclass bases (a base's text is overridden by the
    subclass's). Fields without a docstring are absent."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError, SyntaxError):  # no source (frozen app): flags still work, without help
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for stmt, nxt in zip(body, body[1:]):
            if (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and isinstance(nxt, ast.Expr)
                    and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str)):
                docs[stmt.target.id] = " ".join(inspect.cleandoc(nxt.value.value).split())
    return docs


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    if get_origin(tp) in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(get_args(tp)) == 2:
            return args[0], True
    return tp, False


def _comma_list(item_type: type, flag: str):
    def parse(text: str) -> list:
        try:
            return [item_type(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{flag} takes comma-separated values, each {_KIND[item_type]}, got {text!r}") from None
    return parse


_KIND = {int: "an integer", float: "a number", str: "a string"}


def _scalar(tp: type, flag: str, optional: bool):
    def parse(text: str):
        if optional and text.lower() in ("none", "null"):
            return None
        try:
            return tp(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} takes {_KIND[tp]}, got {text!r}") from None
    return parse


def _union_value(tp: Any, flag: str):
    """A flag for a union field: the text as the first member it parses as (a number; a comma-separated list
    of numbers when it holds a comma), else as the text itself when a string is allowed."""
    def parse(text: str):
        for member in get_args(tp):
            item = get_args(member)[0] if get_origin(member) in (list, tuple) and get_args(member) else None
            try:
                if member in (int, float):
                    return member(text)
                if item in (int, float) and "," in text:
                    return [item(v) for v in text.split(",") if v.strip()]
            except ValueError:
                continue
        if str in get_args(tp):
            return text
        raise argparse.ArgumentTypeError(f"{flag} takes {_describe(tp)}, got {text!r}")
    return parse


def _default_value(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return dataclasses.MISSING


def _default_text(value: Any) -> str:
    if value is dataclasses.MISSING or dataclasses.is_dataclass(value) or isinstance(value, (bool, dict)):
        return ""
    if value in (None, "", [], ()):
        return ""
    if isinstance(value, (list, tuple)):
        value = ",".join(str(v) for v in value)
    return f" (default: {value})"


def flag_name(f: dataclasses.Field, group: str = "") -> str:
    """``--run-dir`` for a top-level field, ``--stage_a.lr_projector`` inside a group (the YAML key path)."""
    if group:
        return "--" + group + f.name
    return f.metadata.get("flag", "--" + f.name.replace("_", "-"))


class _Removed(argparse.Action):
    """A flag that is gone: using it is an error saying what replaces it."""

    def __init__(self, option_strings, dest, replacement: str = "", **kw):
        super().__init__(option_strings, dest, nargs="?", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        self.replacement = replacement

    def __call__(self, parser, namespace, values, option_string=None):
        parser.error(f"{option_string} is gone: {self.replacement}")


def add_config_flags(parser: argparse.ArgumentParser, cls: type, dest_prefix: str = "",
                     seen: dict[str, str] | None = None, group: str = "", shown: dict | None = None) -> None:
    """Add one flag per init field of dataclass ``cls`` (recursively for nested dataclasses); ``dest`` is
    the dotted field path. A flag name used twice (a nested field clashing with an outer one) raises.
    ``group``: the dotted prefix of a group's flags; ``shown``: the values (a nested mapping, e.g. the default
    recipe's) that ``--help`` gives as defaults instead of the dataclass's."""
    top = seen is None
    seen = {} if seen is None else seen
    shown = shown or {}
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    for f in dataclasses.fields(cls):
        if not f.init or f.metadata.get("cli") is False:
            continue
        tp, optional = _unwrap_optional(hints[f.name])
        dest = dest_prefix + f.name
        sub_shown = shown.get(f.name) if isinstance(shown.get(f.name), dict) else {}
        schema = f.metadata.get("fields")
        if dataclasses.is_dataclass(tp) or schema is not None:
            grouped = group or f.metadata.get("group") or schema is not None
            sub_group = f"{group}{f.name}." if grouped else ""
            target = parser
            if grouped and not group:  # a top-level group: its own --help section
                target = parser.add_argument_group(f"--{f.name}.* ({docs.get(f.name, '')})".replace("%", "%%"))
            add_config_flags(target, schema or tp, dest + ".", seen, sub_group, sub_shown)
            continue
        if f.metadata.get("positional"):
            required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING  # type: ignore[misc]
            parser.add_argument(dest, metavar=f.metadata.get("metavar", f.name.upper()), help=docs.get(f.name, ""),
                                **({} if required else {"nargs": "?", "default": argparse.SUPPRESS}))
            continue
        flag = flag_name(f, group)
        if flag in seen:
            raise TypeError(f"{cls.__name__}.{f.name}: flag {flag} already used by {seen[flag]}")
        seen[flag] = dest
        default = shown[f.name] if f.name in shown else _default_value(f)
        help_text = (docs.get(f.name, "") + _default_text(default)).replace("%", "%%")
        if f.metadata.get("hidden"):
            help_text = argparse.SUPPRESS
        kw: dict[str, Any] = {"dest": dest, "default": argparse.SUPPRESS, "help": help_text}
        origin = get_origin(tp)
        if tp is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
        elif origin is Literal:
            parser.add_argument(flag, choices=list(get_args(tp)), **kw)
        elif origin in (list, tuple) and get_args(tp):
            item = get_args(tp)[0]
            if item is str:
                parser.add_argument(flag, action="append", metavar=f.metadata.get("metavar", "VALUE"), **kw)
            else:
                parser.add_argument(flag, type=_comma_list(item, flag), metavar="A,B,...", **kw)
        elif tp in (str, int, float):
            metavar = f.metadata.get("metavar", f.name.upper())
            parser.add_argument(flag, type=_scalar(tp, flag, optional), metavar=metavar, **kw)
        elif origin in (Union, types.UnionType):  # e.g. a number, a list of numbers or a named setting
            parser.add_argument(flag, type=_union_value(tp, flag), metavar=f.metadata.get("metavar", "VALUE"), **kw)
        else:
            raise TypeError(f"{cls.__name__}.{f.name}: no command-line form for type {tp!r}")
    grouped = [flag for flag in seen if "." in flag]
    if top and grouped:  # the old key=value overrides of a group: say what replaced them
        parser.add_argument("--set", action=_Removed, replacement=f"give each setting as its own flag "
                            f"(--set steps=200 is now {grouped[0].split('.')[0]}.steps 200; see --help)")


def add_config_file_flag(parser: argparse.ArgumentParser, cls: type) -> None:
    """``--config PATH``: a YAML file over ``cls``'s fields; flags given on the command line win over it. A class
    with a ``DEFAULT_CONFIG`` (a shipped recipe) reads that file when ``--config`` is not given."""
    default = getattr(cls, "DEFAULT_CONFIG", None)
    text = ("YAML file of these settings (a key per flag, named with underscores: run_dir; a dotted group as a nested "
            "mapping: stage_a: {steps: 200}); flags given win over it")
    if default:
        from safe.training.config import shipped_recipes

        text += (f"; a recipe SAFE ships needs no folder ({', '.join(shipped_recipes())}); a file given replaces "
                 f"the default one (default: {default})")
    parser.add_argument("--config", metavar="PATH", default=default, help=text)


def read_config_file(path: str | None) -> dict[str, Any]:
    """The mapping of a YAML config file: ``path`` as given, else the shipped recipe of that file name (so
    ``--config configs/stage_a.yaml`` works outside the checkout too). ``{}`` for None."""
    from safe.training.config import read_recipe

    return {} if path is None else read_recipe(path)


def _nest(values: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in values.items():
        *parents, leaf = key.split(".")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def _merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for k, v in top.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def _float_text(value: Any) -> bool:
    """A string YAML 1.1 reads as text though it is a number (``1e-4``: PyYAML wants a dot)."""
    if not isinstance(value, str):
        return False
    try:
        float(value)
    except ValueError:
        return False
    return True


def _fits(value: Any, tp: Any) -> bool:
    """Whether ``value`` (read from YAML, or parsed from a flag) is of the field type ``tp``. Types the
    flags cannot express are not judged (the dataclass's own checks apply)."""
    origin, args = get_origin(tp), get_args(tp)
    if tp is Any:
        return True
    if origin in (Union, types.UnionType):
        return any(_fits(value, a) for a in args)
    if tp is type(None):
        return value is None
    if origin is Literal:
        return any(value == a and type(value) is type(a) for a in args)
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return (isinstance(value, (int, float)) and not isinstance(value, bool)) or _float_text(value)
    if tp is str:
        return isinstance(value, str)
    if origin in (list, tuple) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return False
        if not args:
            return True
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            return len(value) == len(args) and all(_fits(v, a) for v, a in zip(value, args))
        return all(_fits(v, args[0]) for v in value)
    if tp is dict or origin is dict or dataclasses.is_dataclass(tp):
        return isinstance(value, dict) or (dataclasses.is_dataclass(tp) and isinstance(value, tp))
    return True


def _describe(tp: Any) -> str:
    origin, args = get_origin(tp), get_args(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if tp is type(None):
        return "null"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (list, tuple) and args:
        return f"a list of {_describe(args[0]).removeprefix('an ').removeprefix('a ')}s"
    if tp is dict or origin is dict or dataclasses.is_dataclass(tp):
        return "a mapping"
    return _NAMES.get(tp, getattr(tp, "__name__", str(tp)))


def _construct(cls: type, data: dict[str, Any], where: str, prefix: str = "") -> Any:
    """``cls(**data)``, nested mappings built into their dataclasses. An unknown key or a value not of its
    field's type is a :class:`~safe.training.config.ConfigError` naming ``where`` (the file), the key,
    the type expected and the type given, before any code sees the value."""
    from safe.data.yaml_bounded import show
    from safe.training.config import ConfigError

    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(f"{where}: unknown setting(s) {', '.join(prefix + u for u in unknown)} "
                          f"(known under {prefix.rstrip('.') or 'the top level'}: {', '.join(sorted(known))})")
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        f = known[name]
        if not _fits(value, hints[name]):
            raise ConfigError(f"{where}: {prefix}{name}: expected {_describe(hints[name])}, got "
                              f"{type(value).__name__} {show(value)}")
        tp, _ = _unwrap_optional(hints[name])
        schema = f.metadata.get("fields")
        if dataclasses.is_dataclass(tp) and isinstance(value, dict):
            value = _construct(tp, value, where, prefix + name + ".")
        elif schema is not None and isinstance(value, dict):
            _construct(schema, value, where, prefix + name + ".")  # unknown keys named here; the owner validates
        elif tp is float and isinstance(value, str):
            value = float(value)  # "1e-4": a number YAML 1.1 reads as text
        kwargs[name] = value
    return cls(**kwargs)


def make_config(cls: type, config: str | None = None, values: dict[str, Any] | None = None) -> Any:
    """``cls`` from its dataclass defaults, then the YAML file ``config`` (:func:`read_config_file`), then
    ``values`` (dotted keys, as the parsed flags). The keys of ``values`` are kept as ``given_flags(obj)``."""
    values = dict(values or {})
    data = _merge(read_config_file(config), _nest(values))
    obj = _construct(cls, data, f"--config {config}" if config else cls.__name__)
    object.__setattr__(obj, "_given_flags", frozenset(values))
    return obj


def given_flags(cfg: Any) -> frozenset[str]:
    """The dotted settings given on the command line (or as ``values`` to :func:`make_config`), so a stage can
    let a flag win over a value it fills in itself (a data spec's ``audio_share`` over the recipe's)."""
    return getattr(cfg, "_given_flags", frozenset())


def config_from_args(cls: type, values: dict[str, Any]) -> Any:
    """Build ``cls`` from the parsed flags (dotted keys for nested dataclasses; ``config``: the YAML file they
    go on top of); fields whose flag was not given keep the file's value, else the dataclass default."""
    values = dict(values)
    config = values.pop("config", None)
    return make_config(cls, config, values)
