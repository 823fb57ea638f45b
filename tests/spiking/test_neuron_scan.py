"""The Triton neuron scan (ops/neuron_scan.py) against ``multi_step_reference``, on CPU.

Triton decides at kernel definition whether to compile or interpret (``TRITON_INTERPRET``), and a
GPU test in the same session must get compiled kernels, so the interpreted checks run in one
subprocess: tests/neuron_scan_helpers.py run as a script does every comparison and prints a JSON
verdict per case.
Skipped cleanly without triton (an optional dependency: ``pip install spikelm[gpu]``).
The same comparisons on a real GPU are in tests/gpu/test_cuda.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from neuron_scan_helpers import CASES, GRAD_TOL
from spikelm.ops import neuron_scan
from spikelm.spiking.neurons import IFNeuron, LIFNeuron, set_scan_backend

HELPERS = Path(__file__).resolve().parents[1] / "neuron_scan_helpers.py"



@pytest.fixture(scope="module")
def interpreted() -> dict:
    if not neuron_scan.HAS_TRITON:
        pytest.skip("triton is not installed (optional: pip install spikelm[gpu])")
    env = dict(os.environ, TRITON_INTERPRET="1")
    root = Path(__file__).resolve().parents[2]
    env["PYTHONPATH"] = os.pathsep.join([str(root / "src"), env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, str(HELPERS)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("case", list(CASES))
def test_triton_scan_equals_reference_interpreted(interpreted, case):
    r = interpreted[case]
    assert 0 < r["spike_rate"] < 1  # some spikes, not all
    assert r["spikes_equal"] and r["dtype_kept"], r
    if CASES[case].get("dtype") == "bfloat16":  # the interpreter truncates fp32 -> bf16 (GPUs round to nearest)
        assert r["v_within_ulp"], r
    else:
        assert r["v_equal"], r
    assert r["grad_rel_err"] < GRAD_TOL[CASES[case].get("dtype", "float32")], r


def test_auto_backend_keeps_cpu_tensors_on_the_torch_loop(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("the Triton scan ran on a CPU tensor")

    monkeypatch.setattr(neuron_scan, "neuron_scan_forward", boom)
    monkeypatch.setattr(neuron_scan, "reverse_linear_scan", boom)
    n = LIFNeuron()
    assert n.scan_backend == "auto"
    x = torch.randn(2, 5, 3, requires_grad=True)
    s, v = n.multi_step(x, dim=1)
    (s.sum() + v.sum()).backward()


def test_forced_backends_are_checked():
    n = IFNeuron()
    x = torch.randn(4, 3, dtype=torch.float64)
    set_scan_backend(n, "triton")
    with pytest.raises(ValueError, match="triton"):
        n.multi_step(x)  # float64 (and, without triton installed, anything) cannot take the kernel
    with pytest.raises(ValueError, match="scan backend"):
        set_scan_backend(n, "cuda")
    set_scan_backend(n, "torch")
    s, v = n.multi_step(x)
    torch.testing.assert_close(s, n.multi_step_reference(x)[0], rtol=0, atol=0)
