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


def _default_text(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        value = f.default_factory()  # type: ignore[misc]
    else:
        return ""
    if dataclasses.is_dataclass(value) or value in (None, "", [], ()):
        return ""
    if isinstance(value, bool):
        return ""
    if isinstance(value, (list, tuple)):
        value = ",".join(str(v) for v in value)
    return f" (default: {value})"


def flag_name(f: dataclasses.Field) -> str:
    return f.metadata.get("flag", "--" + f.name.replace("_", "-"))


def add_config_flags(parser: argparse.ArgumentParser, cls: type, dest_prefix: str = "",
                     seen: dict[str, str] | None = None) -> None:
    """Add one flag per init field of dataclass ``cls`` (recursively for nested dataclasses); ``dest`` is
    the dotted field path. A flag name used twice (a nested field clashing with an outer one) raises."""
    seen = {} if seen is None else seen
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    for f in dataclasses.fields(cls):
        if not f.init or f.metadata.get("cli") is False:
            continue
        tp, optional = _unwrap_optional(hints[f.name])
        dest = dest_prefix + f.name
        if dataclasses.is_dataclass(tp):
            add_config_flags(parser, tp, dest + ".", seen)
            continue
        if f.metadata.get("positional"):
            required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING  # type: ignore[misc]
            parser.add_argument(dest, metavar=f.metadata.get("metavar", f.name.upper()), help=docs.get(f.name, ""),
                                **({} if required else {"nargs": "?", "default": argparse.SUPPRESS}))
            continue
        flag = flag_name(f)
        if flag in seen:
            raise TypeError(f"{cls.__name__}.{f.name}: flag {flag} already used by {seen[flag]}")
        seen[flag] = dest
        help_text = (docs.get(f.name, "") + _default_text(f)).replace("%", "%%")
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
        else:
            raise TypeError(f"{cls.__name__}.{f.name}: no command-line form for type {tp!r}")


def config_from_args(cls: type, values: dict[str, Any]) -> Any:
    """Build ``cls`` from the parsed flags (dotted keys for nested dataclasses); fields whose flag was
    not given keep the dataclass default."""
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        tp, _ = _unwrap_optional(hints[f.name])
        if dataclasses.is_dataclass(tp):
            prefix = f.name + "."
            sub = {k[len(prefix):]: v for k, v in values.items() if k.startswith(prefix)}
            if sub:
                kwargs[f.name] = config_from_args(tp, sub)
        elif f.name in values:
            kwargs[f.name] = values[f.name]
    return cls(**kwargs)
