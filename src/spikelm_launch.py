"""The ``spikelm`` and ``spikelm-lm-eval`` programs: start the command line so that Ctrl-C at any
moment, even while the library is still loading, ends with exit code 130 and one line, never a
traceback.

This module lies outside the ``spikelm`` package on purpose: importing any module of the package
first runs ``spikelm/__init__.py``, whose facade loads torch and the models (seconds), and a Ctrl-C
during that import would reach the console script's own ``import`` line as a traceback. Here the
import of the command line is the first thing the ``try`` below does, so nothing of spikelm has run
before it. It does nothing else: :func:`spikelm.cli.entry` is the program.
"""

from __future__ import annotations

import sys


def _interrupted(prog: str, when: str = " while loading") -> int:
    try:
        sys.stderr.write(f"\n{prog}: interrupted{when}\n")
        sys.stderr.flush()
    except (OSError, ValueError, KeyboardInterrupt):
        pass
    return 130


def _numpy_first() -> None:
    """Import numpy before torch: torch's C initialisation imports numpy itself and clears any error
    of that import, so a Ctrl-C landing there would be swallowed (the command then ran on, or died
    later on a half-imported numpy). Imported here, a Ctrl-C in it is an ordinary KeyboardInterrupt."""
    import numpy  # noqa: F401


def _load(load):
    """``load()`` with Ctrl-C held back until it returns, then raised as KeyboardInterrupt.

    A KeyboardInterrupt raised inside a compiled extension's initialisation can end in a C++
    ``std::terminate`` (seen on a loaded machine: a nanobind module's import aborted the program,
    exit -6, with a C++ message). Loading takes seconds; the interrupt waits for it."""
    import signal

    pending: list[int] = []
    try:
        previous = signal.signal(signal.SIGINT, lambda signum, frame: pending.append(signum))
    except ValueError:  # not the main thread: nothing to hold back
        return load()
    try:
        out = load()
    finally:
        signal.signal(signal.SIGINT, previous)
    if pending:
        raise KeyboardInterrupt
    return out


def _entry():
    _numpy_first()
    from spikelm.cli import entry  # the whole library: the import a Ctrl-C may interrupt
    return entry


def _lm_eval_entry():
    _numpy_first()
    from spikelm.cli.lm_eval import main as lm_eval_main
    return lm_eval_main


def main() -> int:
    """``spikelm``: :func:`spikelm.cli.entry`, with a Ctrl-C while it loads as exit 130."""
    try:
        entry = _load(_entry)
    except KeyboardInterrupt:
        return _interrupted("spikelm")
    try:
        return entry()
    except KeyboardInterrupt:  # outside the command's own handler (parsing its arguments, its last lines)
        return _interrupted("spikelm", "")


def lm_eval() -> int:
    """``spikelm-lm-eval``: :func:`spikelm.cli.lm_eval.main`, with a Ctrl-C while it loads as exit 130."""
    try:
        lm_eval_main = _load(_lm_eval_entry)
    except KeyboardInterrupt:
        return _interrupted("spikelm-lm-eval")
    try:
        return lm_eval_main()
    except KeyboardInterrupt:
        return _interrupted("spikelm-lm-eval", "")


if __name__ == "__main__":
    sys.exit(main())
