"""The Triton WKV4 kernels (ops/wkv4_triton.py) against the loop ``wkv4_naive``, on CPU.

As for the neuron scan (tests/spiking/test_neuron_scan.py), Triton decides at kernel definition
whether to compile or interpret, so the interpreted checks run in one subprocess
(tests/wkv4_triton_helpers.py run as a script, ``TRITON_INTERPRET=1``) that prints a JSON
verdict per case: outputs, final states, and the gradients of w, u, k, v and the initial state.
Skipped cleanly without triton. The same comparisons on a real GPU are in tests/gpu/test_cuda.py.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import torch

from interpreted import run_interpreted
from spikelm.ops import wkv4_naive, wkv4_triton
from spikelm.ops.wkv4 import wkv4
from wkv4_triton_helpers import CASES, TOL

HELPERS = Path(__file__).resolve().parents[1] / "wkv4_triton_helpers.py"


@pytest.fixture(scope="module")
def interpreted() -> dict:
    if not wkv4_triton.HAS_TRITON:
        pytest.skip("triton is not installed (optional: pip install spikelm[gpu])")
    return run_interpreted(HELPERS)


@pytest.mark.parametrize("case", list(CASES))
def test_triton_wkv4_equals_the_loop_interpreted(interpreted, case):
    r = interpreted[case]
    tol = TOL[CASES[case].get("dtype", "float32")]
    assert r["dtype_kept"] and r["nograd_equal"], r
    assert r["y"] < tol and r["state"] < 2e-5, r  # the state is fp32 in every dtype
    bad = {k: v for k, v in r["grads"].items() if not v < tol}
    assert not bad, r
    if "warm" not in CASES[case] or CASES[case]["warm"]:
        assert set(r["grads"]) == {"w", "u", "k", "v", "aa0", "bb0", "pp0"}  # the initial state got gradients


def test_custom_ops_and_their_fake_implementations(interpreted):
    assert interpreted["opcheck"] == "ok"


def test_auto_keeps_cpu_tensors_on_the_torch_forms(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("the Triton WKV4 ran on a CPU tensor")

    monkeypatch.setattr(importlib.import_module("spikelm.ops.wkv4"), "wkv4_triton", boom)
    g = torch.Generator().manual_seed(0)
    w, u = -torch.rand(5, generator=g), torch.randn(5, generator=g)
    k, v = torch.randn(2, 4, 5, generator=g, requires_grad=True), torch.randn(2, 4, 5, generator=g)
    y, _ = wkv4(w, u, k, v)
    y.sum().backward()
    torch.testing.assert_close(y, wkv4_naive(w, u, k, v)[0], rtol=1e-5, atol=1e-6)
    assert not wkv4_triton.usable(w, k)


def test_forced_triton_checks_its_inputs():
    w, u = torch.zeros(3), torch.zeros(3)
    with pytest.raises(ValueError, match="shape of k"):
        wkv4(w, u, torch.zeros(1, 2, 3), torch.zeros(1, 2, 4), impl="triton")
    with pytest.raises(ValueError, match="impl must be"):
        wkv4(w, u, torch.zeros(1, 2, 3), torch.zeros(1, 2, 3), impl="cuda")
    if wkv4_triton.HAS_TRITON:
        with pytest.raises(ValueError, match="fp32, bf16 or fp16"):
            wkv4(w.double(), u.double(), torch.zeros(1, 2, 3, dtype=torch.float64), torch.zeros(1, 2, 3, dtype=torch.float64),
                 impl="triton")
