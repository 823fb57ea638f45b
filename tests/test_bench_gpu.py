"""The prepared GPU check (``make bench-gpu``, benchmarks/gpu_suite.py) on a machine without a GPU:
it says there is nothing to measure and exits 0, writing nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without a GPU")


def _run(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    env = {"PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_bench_gpu_skips_cleanly_without_a_gpu(tmp_path):
    out = _run(str(REPO / "benchmarks" / "gpu_suite.py"), "run", "--out", str(tmp_path / "out"))
    assert out.returncode == 0 and "no CUDA GPU" in out.stdout, out.stderr[-2000:]
    assert not (tmp_path / "out").exists()
