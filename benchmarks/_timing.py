"""The timer the benchmarks share: best wall time of each contender, their runs alternating.

Alternating (a, b, a, b, ...) makes a slow phase of a shared machine hit every contender alike,
and keeping each one's minimum keeps the run least disturbed by other load. Scripts in this
folder import it as ``from _timing import best_times`` (Python puts a script's folder on the path).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

# --clock: wall time, or this process's CPU time (every thread's): on a machine shared with other
# work, one thread and the CPU time measure what a path costs without the time spent waiting for a
# core; on a quiet machine, wall time measures what a user waits.
CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}


def add_clock_option(ap: argparse.ArgumentParser, default: str = "wall") -> None:
    ap.add_argument("--clock", choices=sorted(CLOCKS), default=default,
                    help="wall: wall time; cpu: this process's CPU time (steady on a shared machine, with --threads 1)")


def best_times(*fns: Callable[[], object], repeats: int, warmup: bool = True,
               clock: Callable[[], float] = time.perf_counter) -> list[float]:
    """Best time in seconds of each function over ``repeats`` alternating rounds, after one
    untimed call of each when ``warmup``. ``clock``: wall time by default; ``time.process_time``
    (the CPU time of this process, every thread's) is the steadier measure on a shared machine
    with one thread, since time spent waiting for a core is not counted."""
    if warmup:
        for fn in fns:
            fn()
    best = [float("inf")] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            t0 = clock()
            fn()
            best[i] = min(best[i], clock() - t0)
    return best
