"""WKV6 and WKV7 through flash-linear-attention (ops/wkv_fla.py) against the float64 loops, on CPU.

fla's recurrent kernels run under Triton's interpreter (its chunked kernels use constructs the
interpreter lacks; they and their gradients are checked on a GPU in tests/gpu/test_cuda.py). The
interpreted run is one subprocess (tests/wkv_fla_helpers.py as a script, ``TRITON_INTERPRET=1``):
the boundary is what it checks, shapes, the [key, value] state given and returned, the log-decays,
RWKV-6's bonus and RWKV-7's a and b, against spikelm's own loop. Skipped without fla or triton.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from interpreted import run_interpreted
from spikelm.ops import neuron_scan, wkv_fla
from spikelm.ops.wkv6 import wkv6, wkv6_naive
from spikelm.ops.wkv7 import wkv7, wkv7_naive
from wkv_fla_helpers import CASES, TOL

HELPERS = Path(__file__).resolve().parents[1] / "wkv_fla_helpers.py"


@pytest.fixture(scope="module")
def interpreted() -> dict:
    if not (wkv_fla.HAS_FLA and neuron_scan.HAS_TRITON):
        pytest.skip("flash-linear-attention (fla-core) or triton is not installed (optional: pip install spikelm[gpu])")
    return run_interpreted(HELPERS)


@pytest.mark.parametrize("case", list(CASES))
def test_fla_recurrent_equals_the_float64_loop_interpreted(interpreted, case):
    r = interpreted[case]
    fla, ref = r["fla_recurrent"], r["chunked_fp32" if case.startswith("wkv6") else "chunked"]
    assert fla["y"] < TOL["y"] and fla["state"] < TOL["state"], r
    assert fla["dtypes"] == ["torch.float32", "torch.float32"], r
    assert ref["y"] < TOL["y"] and ref["grads"] < TOL["grads"], r  # the reference form, in the same run


def test_auto_keeps_cpu_tensors_off_fla(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("fla ran on a CPU tensor")

    monkeypatch.setattr(wkv_fla, "wkv6_fla", boom)
    monkeypatch.setattr(wkv_fla, "wkv7_fla", boom)
    g = torch.Generator().manual_seed(0)
    r, k, v = (torch.randn(1, 5, 2, 4, generator=g) for _ in range(3))
    logw, u = -torch.rand(1, 5, 2, 4, generator=g), torch.randn(2, 4, generator=g)
    torch.testing.assert_close(wkv6(r, k, v, logw, u)[0], wkv6_naive(r, k, v, logw, u)[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(wkv7(r, k, v, logw, -k, k * 0.5)[0], wkv7_naive(r, k, v, logw, -k, k * 0.5)[0],
                               rtol=1e-5, atol=1e-6)
    assert not wkv_fla.usable(r, k)


def test_recurrent_kernels_refuse_a_gradient():
    """fla's recurrent kernels are forward-only (RWKV-6's drops the final state's gradient): forced
    with a gradient they raise, before fla is even imported."""
    r, k, v = (torch.randn(1, 3, 1, 4, requires_grad=True) for _ in range(3))
    logw = -torch.rand(1, 3, 1, 4)
    with pytest.raises(ValueError, match="forward-only"):
        wkv6(r, k, v, logw, torch.zeros(1, 4), impl="fla_recurrent")
    with pytest.raises(ValueError, match="forward-only"):
        wkv7(r, k, v, logw, -k, k, impl="fla_recurrent")
    with pytest.raises(ValueError, match="fla_chunk"):
        wkv6(r, k, v, logw, torch.zeros(1, 4), impl="fla")


@pytest.mark.parametrize("op", ["wkv6", "wkv7"])
def test_auto_routes_to_fla_where_usable(op, monkeypatch):
    """Where fla takes the inputs (CUDA, simulated here), auto calls its chunked kernels under a
    gradient and its recurrent one otherwise, for any T, with the inputs untouched."""
    taken = []

    def fake(*a, mode):
        taken.append(mode)
        return a[0] * 1.0, torch.zeros(a[0].shape[0], a[0].shape[2], a[0].shape[3], a[0].shape[3])

    monkeypatch.setattr(wkv_fla, "usable", lambda *t: True)
    monkeypatch.setattr(wkv_fla, f"{op}_fla", fake)
    for T in (1, 7):
        r, k, v = (torch.randn(1, T, 2, 4) for _ in range(3))
        logw = -torch.rand(1, T, 2, 4)
        extra = [torch.randn(2, 4)] if op == "wkv6" else [-k, k * 0.5]
        fn = wkv6 if op == "wkv6" else wkv7
        fn(r, k, v, logw, *extra)
        y, _ = fn(r.requires_grad_(), k, v, logw, *extra)
        assert y.requires_grad
    assert taken == ["recurrent", "chunk"] * 2
