"""The ``spikelm`` command line.

Each subcommand is a plain typed Python function somewhere in the package; this module maps
names to functions and builds the argument parser from the function's signature and docstring
(an ``Args:`` section, one ``name: help`` line per parameter).  Nothing else parses argv.

Conventions: parameters without a default are positional (keyword-only ones, after ``*``, are
required ``--options``); ``bool`` parameters become
``--flag`` / ``--no-flag``; a ``**overrides`` parameter collects ``--key value`` pairs that the
function validates itself (``spikelm train CONFIG --lr 1e-3``).
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import logging
import sys
import types
import typing
from typing import Any, Callable

# name -> "module:function"; imported only when the subcommand runs, so `spikelm --help` is fast.
COMMANDS: dict[str, str] = {
    "info": "spikelm.checkpoint:cli_info",
    "generate": "spikelm.generate:cli_generate",
    "init": "spikelm.checkpoint:cli_init",
    "convert": "spikelm.convert.to_spiking:cli_convert",
    "sweep": "spikelm.convert.sweep:cli_sweep",
    "demo": "spikelm.demo:cli_demo",
    "data": "spikelm.data.corpora:cli_data",
    "train": "spikelm.train:cli_train",
    "eval": "spikelm.evaluate.perplexity:cli_eval",
    "nlu": "spikelm.evaluate.multiple_choice:cli_nlu",
    "energy": "spikelm.energy.report:cli_energy",
}


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


def build_parser(name: str, fn: Callable[..., Any]) -> tuple[argparse.ArgumentParser, bool]:
    desc, helps = _parse_docstring(fn.__doc__)
    p = argparse.ArgumentParser(
        prog=f"spikelm {name}", description=desc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
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
                           help=help_text + f" (default: {param.default})")
        else:
            p.add_argument(flag, dest=pname, type=tp, default=param.default,
                           help=help_text + f" (default: {param.default})")
    if takes_overrides:
        p.epilog = "Any other --key value pair overrides the configuration key of that name."
    return p, takes_overrides


def _parse_overrides(extra: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    i = 0
    while i < len(extra):
        tok = extra[i]
        if not tok.startswith("--"):
            raise SystemExit(f"error: unexpected argument {tok!r}; overrides take the form --key value")
        key = tok[2:]
        if "=" in key:
            key, val = key.split("=", 1)
            i += 1
        else:
            if i + 1 >= len(extra):
                raise SystemExit(f"error: override --{key} needs a value")
            val = extra[i + 1]
            i += 2
        out[key.replace("-", "_")] = val
    return out


def resolve(name: str) -> Callable[..., Any]:
    mod, _, fn = COMMANDS[name].partition(":")
    return getattr(importlib.import_module(mod), fn)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    top = argparse.ArgumentParser(
        prog="spikelm",
        description="Spiking language models: convert RWKV-6 to spikes (SpikeRWKV), train SpikeGPT, "
        "and measure accuracy and energy side by side. `spikelm COMMAND --help` documents each command.",
    )
    top.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    top.add_argument("-q", "--quiet", action="store_true", help="log warnings and errors only")
    top.add_argument("command", choices=sorted(COMMANDS), metavar="COMMAND", help="one of: " + ", ".join(sorted(COMMANDS)))
    top.add_argument("args", nargs=argparse.REMAINDER, help="arguments of the command")
    if not argv:
        top.print_help()
        return 2
    ns = top.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if ns.verbose else logging.WARNING if ns.quiet else logging.INFO,
        format="%(message)s" if not ns.verbose else "%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    fn = resolve(ns.command)
    parser, takes_overrides = build_parser(ns.command, fn)
    if takes_overrides:
        known, extra = parser.parse_known_args(ns.args)
        kwargs = vars(known)
        kwargs.update(_parse_overrides(extra))
    else:
        kwargs = vars(parser.parse_args(ns.args))

    from .errors import ConfigError, SpikelmError

    try:
        result = fn(**kwargs)
    except (SpikelmError, ConfigError, FileNotFoundError) as e:
        print(f"spikelm {ns.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\nspikelm {ns.command}: interrupted", file=sys.stderr)
        return 130
    return int(result) if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
