"""Argument parsers built from the command functions' signatures and docstrings.

Each subcommand is a plain typed function in :mod:`spikelm.cli`; its parser comes from the
function's signature and docstring (an ``Args:`` section, one ``name: help`` line per parameter).
Nothing else parses argv.

Conventions: parameters without a default are positional (keyword-only ones, after ``*``, are
required ``--options``); ``bool`` parameters become
``--flag`` / ``--no-flag``; ``Literal[...]`` parameters take one of their words; a ``**overrides`` parameter collects ``--key value`` pairs that the
function validates itself (``spikelm train CONFIG --lr 1e-3``).
"""

from __future__ import annotations

import argparse
import inspect
import types
import typing
from typing import Any, Callable

from ..errors import ConfigError

def _parse_docstring(doc: str | None) -> tuple[str, dict[str, str]]:
    """Split a docstring into its description and the ``Args:`` section's per-parameter help.

    In the ``Args:`` section a line at the arguments' indentation starts ``name: help``; a line
    indented deeper continues the previous help; a line back at column 0 ends the section.
    """
    if not doc:
        return "", {}
    lines = inspect.cleandoc(doc).splitlines()
    desc: list[str] = []
    helps: dict[str, str] = {}
    in_args = False
    arg_indent: int | None = None
    current = None
    for line in lines:
        if line.strip() in ("Args:", "Arguments:"):
            in_args = True
            continue
        indent = len(line) - len(line.lstrip())
        if in_args and line.strip():
            if indent == 0:
                in_args = False
            elif arg_indent is None or indent <= arg_indent:
                arg_indent = indent
                name, _, text = line.strip().partition(":")
                current = name.strip().lstrip("*")
                helps[current] = text.strip()
                continue
            elif current:
                helps[current] += " " + line.strip()
                continue
        if not in_args:
            desc.append(line)
    return "\n".join(desc).strip(), helps


def _base_type(tp: Any) -> Any:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0]
    return tp


class _Parser(argparse.ArgumentParser):
    """argparse that raises a ``ConfigError`` (one line, exit 2 in :func:`spikelm.cli.main`) instead of exiting."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise ConfigError(f"{message} (see `{self.prog} --help`)")


def _default(value: Any) -> str:
    """The help's default note; None means "not given" (the help text says what applies then)."""
    return "" if value is None else f" (default: {value})"


def build_parser(name: str, fn: Callable[..., Any]) -> tuple[argparse.ArgumentParser, bool]:
    desc, helps = _parse_docstring(fn.__doc__)
    p = _Parser(prog=f"spikelm {name}", description=desc, formatter_class=argparse.RawDescriptionHelpFormatter)
    hints = typing.get_type_hints(fn)
    sig = inspect.signature(fn)
    takes_overrides = False
    for pname, param in sig.parameters.items():
        if param.kind is inspect.Parameter.VAR_KEYWORD:
            takes_overrides = True
            continue
        tp = _base_type(hints.get(pname, str))
        help_text = helps.get(pname, "")
        # a trailing underscore avoids shadowing a module (json_ -> --json)
        flag = "--" + pname.rstrip("_").replace("_", "-")
        if param.default is inspect.Parameter.empty and param.kind is inspect.Parameter.KEYWORD_ONLY:
            p.add_argument(flag, dest=pname, type=tp, required=True, help=help_text + " (required)")
        elif param.default is inspect.Parameter.empty:
            if typing.get_origin(tp) is list:
                p.add_argument(pname, nargs="+", type=typing.get_args(tp)[0], help=help_text)
            else:
                p.add_argument(pname, type=tp, help=help_text)
        elif tp is bool:
            p.add_argument(flag, dest=pname, action=argparse.BooleanOptionalAction, default=param.default,
                           help=help_text + (f" (default: {param.default})" if help_text else ""))
        elif typing.get_origin(tp) is list:
            p.add_argument(flag, dest=pname, nargs="+", type=typing.get_args(tp)[0], default=param.default,
                           help=help_text + _default(param.default))
        elif typing.get_origin(tp) is typing.Literal:  # a fixed set of words: argparse choices
            p.add_argument(flag, dest=pname, type=str, choices=typing.get_args(tp), default=param.default,
                           help=help_text + _default(param.default))
        else:
            p.add_argument(flag, dest=pname, type=tp, default=param.default, metavar=pname.rstrip("_").upper(),
                           help=help_text + _default(param.default))
    if takes_overrides:
        p.epilog = "Any other --key value pair overrides the configuration key of that name."
    return p, takes_overrides


def parse_overrides(extra: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    i = 0
    while i < len(extra):
        tok = extra[i]
        if not tok.startswith("--"):
            raise ConfigError(f"unexpected argument {tok!r}; overrides take the form --key value")
        key = tok[2:]
        if "=" in key:
            key, val = key.split("=", 1)
            i += 1
        else:
            if i + 1 >= len(extra):
                raise ConfigError(f"--{key} needs a value (overrides take the form --key value)")
            val = extra[i + 1]
            i += 2
        out[key.replace("-", "_")] = val
    return out
