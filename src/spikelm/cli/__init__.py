"""The ``spikelm`` command line: every command, its argument parsing, printing and progress bars.

The library below never prints and never draws a progress bar; these commands call it, print its
results, and turn every :class:`spikelm.errors.SpikelmError` into one line on stderr and exit code
2 (a traceback would mean a bug). The options every command shares are in :mod:`.options`.
"""

from __future__ import annotations

import argparse
import ctypes
import io
import logging
import os
import sys
from pathlib import Path
from collections.abc import Callable
from typing import Any

from .. import __version__
from ..data.corpus import cache_dir
from ..errors import ConfigError, SpikelmError
from ..io import describe_os_error
from .demo import cmd_demo
from .kernels import cmd_kernels
from .measure import cmd_energy, cmd_eval, cmd_nlu, cmd_sweep
from .models import cmd_convert, cmd_generate, cmd_info, cmd_init
from .parser import build_parser, parse_overrides
from .run import cmd_data, cmd_finetune, cmd_train

__all__ = ["main", "entry", "COMMANDS", "release_large_frees"]

COMMANDS: dict[str, Callable[..., Any]] = {
    "info": cmd_info,
    "init": cmd_init,
    "data": cmd_data,
    "train": cmd_train,
    "finetune": cmd_finetune,
    "eval": cmd_eval,
    "generate": cmd_generate,
    "convert": cmd_convert,
    "sweep": cmd_sweep,
    "energy": cmd_energy,
    "nlu": cmd_nlu,
    "demo": cmd_demo,
    "kernels": cmd_kernels,
}


class _TopParser(argparse.ArgumentParser):
    """The command chooser: an unknown command is a ``ConfigError`` (returned as exit 2), not a ``SystemExit``."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise ConfigError(f"{message} (see `spikelm --help`)")


def release_large_frees() -> bool:
    """Have glibc give every freed block of 4 MiB or more straight back to the operating system.

    By default glibc raises its mmap threshold up to 32 MiB as large blocks are freed, then serves
    blocks of that size from its heap and keeps them when they are freed: the transient tensors of
    a forward pass (activations, the float32 copies of bf16 weights in ``spikelm.ops.linear``) then
    stay resident, and a bf16 sweep of the 1B6 shape peaked at 1.59x its weights (the tensors alive
    at any moment need about 1.1x). A fixed 4 MiB threshold keeps the peak at what is alive, for a
    few per cent of page faults. Only the command-line process does this (a library does not
    change its host's allocator). False where the C library has no ``mallopt`` (nothing changed).
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    return mallopt(-3, 4 << 20) == 1  # M_MMAP_THRESHOLD; 1 = done


def entry() -> int:
    """The ``spikelm`` program (console script and ``python -m spikelm``): :func:`main` in a process
    whose large frees go back to the operating system (:func:`release_large_frees`)."""
    release_large_frees()
    return main()


def main(argv: list[str] | None = None) -> int:
    """Run one command; every way it can end is an exit code and at most one line on stderr:
    0 done, 2 a user's error (:class:`SpikelmError`, or an ``OSError`` named with its path and
    cause), 130 Ctrl-C (spikelm_launch covers the moments outside this function), 141 a closed
    stdout (``spikelm generate M | head``: quiet, as Unix tools end)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    top = _TopParser(
        prog="spikelm",
        description="Spiking language models: convert RWKV-6 to spikes (SpikeRWKV), train SpikeGPT, "
        "and measure accuracy and energy side by side. `spikelm COMMAND --help` documents each command.",
    )
    top.add_argument("--version", action="version", version=f"spikelm {__version__}")
    top.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    top.add_argument("-q", "--quiet", action="store_true", help="log warnings and errors only")
    top.add_argument("command", choices=sorted(COMMANDS), metavar="COMMAND", help="one of: " + ", ".join(sorted(COMMANDS)))
    top.add_argument("args", nargs=argparse.REMAINDER, help="arguments of the command")
    if not argv:
        top.print_help()
        return 2
    try:
        ns = top.parse_args(argv)
    except SpikelmError as e:  # an unknown command: one line, exit 2, like every other user error
        print(f"spikelm: error: {e}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=logging.DEBUG if ns.verbose else logging.WARNING if ns.quiet else logging.INFO,
        format="%(message)s" if not ns.verbose else "%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    fn = COMMANDS[ns.command]
    try:
        parser, takes_overrides = build_parser(ns.command, fn)
        if takes_overrides:
            known, extra = parser.parse_known_args(ns.args)
            kwargs = vars(known)
            kwargs.update(parse_overrides(extra))
        else:
            kwargs = vars(parser.parse_args(ns.args))
        result = fn(**kwargs)
        sys.stdout.flush()  # a closed pipe shows here, not at exit
    except SpikelmError as e:
        print(f"spikelm {ns.command}: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # stdout closed by its reader (`| head`): stop quietly, as Unix tools do
        _stdout_to_devnull()
        return 141  # 128 + SIGPIPE, what a shell reports for a tool the closed pipe ended
    except OSError as e:  # a path the user named: missing, unwritable, a full disk, a read-only target ...
        print(f"spikelm {ns.command}: error: {describe_os_error(e)}{_cache_hint(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\nspikelm {ns.command}: interrupted", file=sys.stderr)
        return 130
    return int(result) if isinstance(result, int) else 0


def _stdout_to_devnull() -> None:
    """Point the process's stdout at /dev/null, so that the interpreter's last flush of a closed
    pipe does not print "Exception ignored ... BrokenPipeError" (the Python docs' recipe)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):  # stdout is not a real file (tests)
        pass


def _cache_hint(e: OSError) -> str:
    """For an error in spikelm's cache: where the cache is and how to move it."""
    if e.filename is None:
        return ""
    try:
        inside = Path(os.path.abspath(e.filename)).is_relative_to(cache_dir().absolute())
    except (OSError, ValueError):
        return ""
    return (" (this is spikelm's cache, $SPIKELM_CACHE or ~/.cache/spikelm: set SPIKELM_CACHE to a folder with "
            "room)") if inside else ""
