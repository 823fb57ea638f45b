"""WKV6 and WKV7 through flash-linear-attention (ops/wkv_fla.py) against the float64 loops, on CPU.

fla's recurrent kernels run under Triton's interpreter (its chunked kernels use constructs the
interpreter lacks; they and their gradients are checked on a GPU in tests/gpu/test_cuda.py). The
interpreted run is one subprocess (tests/wkv_fla_helpers.py as a script, ``TRITON_INTERPRET=1``):
the boundary is what it checks, shapes, the [key, value] state given and returned, the log-decays,
RWKV-6's bonus and RWKV-7's a and b, against spikelm's own loop. Skipped without fla or triton.
"""

from __future__ import annotations

import importlib
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

    monkeypatch.setattr(importlib.import_module("spikelm.ops.wkv6"), "wkv6_fla", boom)
    monkeypatch.setattr(importlib.import_module("spikelm.ops.wkv7"), "wkv7_fla", boom)
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

    mod = importlib.import_module(f"spikelm.ops.{op}")
    monkeypatch.setattr(mod, "fla_usable", lambda *t: True)
    monkeypatch.setattr(mod, f"{op}_fla", fake)
    for T in (1, 7):
        r, k, v = (torch.randn(1, T, 2, 4) for _ in range(3))
        logw = -torch.rand(1, T, 2, 4)
        extra = [torch.randn(2, 4)] if op == "wkv6" else [-k, k * 0.5]
        fn = wkv6 if op == "wkv6" else wkv7
        fn(r, k, v, logw, *extra)
        y, _ = fn(r.requires_grad_(), k, v, logw, *extra)
        assert y.requires_grad
    assert taken == ["recurrent", "chunk"] * 2


@pytest.mark.parametrize("op", ["rwkv6", "rwkv7"])
def test_chunked_kernels_get_the_autocast_dtype_and_recurrent_ones_fp32(op, monkeypatch):
    """Under bf16 autocast (training) fla's chunked kernels get r, k, v (and RWKV-7's a, b) in bf16,
    as fla's models train; log-decays and state stay fp32, y comes back in r's dtype; without
    autocast, and always for the recurrent kernels, the inputs go as they come."""
    seen = []

    def fake(*a, initial_state=None, **k):
        seen.append([t.dtype for t in a if isinstance(t, torch.Tensor)] + [initial_state.dtype])
        return a[0] * 1, initial_state

    monkeypatch.setattr(wkv_fla, "_ops", lambda name: (fake, fake))
    r, k, v = (torch.randn(1, 3, 1, 4) for _ in range(3))
    logw, s = -torch.rand(1, 3, 1, 4), torch.randn(1, 1, 4, 4)
    fn = (lambda mode: wkv_fla.wkv6_fla(r, k, v, logw, torch.zeros(1, 4), s, mode=mode)) if op == "rwkv6" else \
        (lambda mode: wkv_fla.wkv7_fla(r, k, v, logw, -k, k, s, mode=mode))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y_chunk, _ = fn("chunk")
        fn("recurrent")
    fn("chunk")
    bf, f32 = torch.bfloat16, torch.float32
    n = 3 if op == "rwkv6" else 5  # the activations (r, k, v; RWKV-7 also a, b)
    chunk_amp, recurrent_amp, chunk_plain = seen
    assert chunk_amp.count(bf) == n and chunk_amp[-1] == f32 and y_chunk.dtype == f32
    assert set(recurrent_amp) == {f32} and set(chunk_plain) == {f32}
