"""Switching between two environments: does either rebuild spikelm's compiled CPU kernels?

Runs the same short ``spikelm generate`` (a 1-layer RWKV-6, a few tokens) as a new process in
environment A, then B, then A, B, A (``--order``), and prints each run's wall time and whether it
built the kernels (from the log line "built spikelm's compiled CPU kernels in N s", printed only
when a build runs). The two environments are two spikelm checkouts whose kernel sources differ
(B: a copy of this src/ with one comment added to csrc/spikelm.h, as a fresh clone of another
version beside a working one), sharing one kernel cache (a fresh temporary folder unless
``--cache``) and this Python and torch. Every run after each environment's first should build
nothing. Wall times include Python and torch start-up; the machine may be shared.

    python benchmarks/kernel_cache_switch.py [--order ABABA] [--tokens 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
BUILT = re.compile(r"built spikelm's compiled CPU kernels in ([0-9.]+) s")


def run(src: Path, cache: Path, threads: int, args: list[str]) -> tuple[float, str]:
    env = dict(os.environ, PYTHONPATH=str(src), SPIKELM_KERNELS_DIR=str(cache), OMP_NUM_THREADS=str(threads))
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "spikelm", *args], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"spikelm {' '.join(args)} failed:\n{p.stderr[-3000:]}")
    return wall, p.stderr


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--order", default="ABABA", help="the environments in the order they run (A and B)")
    ap.add_argument("--tokens", type=int, default=3, help="tokens generated per run")
    ap.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of each run")
    ap.add_argument("--cache", default="", help="the kernel cache folder (default: a fresh temporary one, removed after)")
    args = ap.parse_args()
    if set(args.order) - {"A", "B"}:
        ap.error("--order takes the letters A and B")
    with tempfile.TemporaryDirectory(prefix="spikelm-switch-") as tmp:
        tmp_path = Path(tmp)
        cache = Path(args.cache) if args.cache else tmp_path / "kernels"
        src_b = tmp_path / "src-b"
        shutil.copytree(SRC, src_b, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        header = src_b / "spikelm" / "ops" / "csrc" / "spikelm.h"
        header.write_text(header.read_text() + "\n// environment B: another spikelm checkout\n")
        envs = {"A": SRC, "B": src_b}
        model = tmp_path / "model"
        run(SRC, cache, args.threads, ["init", str(model), "--n-layer", "1", "--n-embd", "64", "--head-size", "32"])
        gen = ["generate", str(model), "--prompt", "The", "--max-tokens", str(args.tokens), "--device", "cpu",
               "--dtype", "fp32", "--temperature", "0"]
        print(f"spikelm generate, 1-layer RWKV-6 (n_embd 64, fp32, CPU), {args.tokens} tokens, a new process per run; "
              f"threads used: {args.threads}; Python {sys.version.split()[0]}")
        print("A: this checkout's src/; B: a copy whose kernel sources differ by one comment; one shared kernel cache\n")
        print("| run | environment | wall time | kernels built in this run |")
        print("|---:|---|---:|---|")
        builds = {"A": 0, "B": 0}
        for i, env in enumerate(args.order, 1):
            wall, err = run(envs[env], cache, args.threads, gen)
            m = BUILT.search(err)
            builds[env] += bool(m)
            print(f"| {i} | {env} | {wall:.1f} s | {'yes, in ' + m.group(1) + ' s' if m else 'no'} |", flush=True)
        print(f"\nbuilds: A {builds['A']}, B {builds['B']} (each environment should build once)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
