"""Progress reporting without drawing: library functions take an optional callback, the CLI draws.

A long-running library function (preparing a corpus, evaluating, training, scoring) accepts
``progress: ProgressFn | None`` and calls it with a :class:`Progress` each time it advances. It
never prints; :mod:`spikelm.cli` turns the events into progress bars (or nothing, with
``--no-progress``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Progress", "ProgressFn", "report"]


@dataclass
class Progress:
    """One progress event. ``done`` and ``total`` are in ``unit``s (``total`` None: unknown);
    ``finished`` marks the last event of the task ``desc``."""

    desc: str
    done: float
    total: float | None = None
    unit: str = "it"
    postfix: dict[str, Any] = field(default_factory=dict)
    finished: bool = False


ProgressFn = Callable[[Progress], None]


def report(progress: ProgressFn | None, desc: str, done: float, total: float | None = None, unit: str = "it",
           finished: bool = False, **postfix: Any) -> None:
    """Call ``progress`` (when there is one) with one event. A bool in its place (the old
    ``progress=True/False`` of the Python API) reports nothing: the library never draws."""
    if callable(progress):
        progress(Progress(desc, done, total, unit, postfix, finished))
