"""WKV ops under autocast (they must stay float32) and at extreme decays."""

from __future__ import annotations

import importlib
import math

import pytest
import torch

from spikelm.ops import wkv4, wkv4_naive, wkv4_parallel, wkv6, wkv6_chunked, wkv6_naive
from spikelm.ops.wkv6 import wkv6_chunked_fp32

wkv6_module = importlib.import_module("spikelm.ops.wkv6")


def wkv6_inputs(B=2, T=40, H=2, N=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    r, k, v = (torch.randn(B, T, H, N, generator=g) for _ in range(3))
    logw = -torch.exp(torch.empty(B, T, H, N).uniform_(-6.0, 3.0, generator=g))
    return r, k, v, logw, torch.randn(H, N, generator=g), torch.randn(B, H, N, N, generator=g)


def wkv4_inputs(B=2, T=40, C=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = -torch.exp(torch.empty(C).uniform_(-6.0, 3.0, generator=g))
    return w, torch.randn(C, generator=g), 3.0 * torch.randn(B, T, C, generator=g), torch.randn(B, T, C, generator=g)


def max_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    assert torch.isfinite(a).all()
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).abs().max() / b.abs().max())


WKV6_IMPLS = {
    "naive": wkv6_naive,
    "chunked": lambda *a: wkv6_chunked(*a, chunk_size=16),
    "chunked_fp32": lambda *a: wkv6_chunked_fp32(*a, chunk_size=16),
    "step": lambda r, k, v, logw, u, s: wkv6_module.wkv6_step(r[:, :1], k[:, :1], v[:, :1], logw[:, :1], u, s),
    "auto": wkv6,
}


@pytest.mark.parametrize("impl", list(WKV6_IMPLS))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_wkv6_ignores_autocast(impl: str, dtype: torch.dtype) -> None:
    """Autocast used to run the chunked form's float32 matmuls in bfloat16 (error 3e-3)."""
    fn = WKV6_IMPLS[impl]
    inputs = wkv6_inputs()
    y_ref, s_ref = fn(*inputs)
    with torch.autocast("cpu", dtype=dtype):
        y, s = fn(*inputs)
    assert y.dtype == torch.float32 and s.dtype == torch.float32
    assert max_rel(y, y_ref) < 1e-5 and max_rel(s, s_ref) < 1e-5


@pytest.mark.parametrize("impl", ["naive", "parallel"])
def test_wkv4_ignores_autocast(impl: str) -> None:
    inputs = wkv4_inputs()
    y_ref, s_ref = wkv4(*inputs, impl=impl)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, s = wkv4(*inputs, impl=impl)
    assert y.dtype == torch.float32
    assert max_rel(y, y_ref) < 1e-5
    for a, b in zip(s, s_ref):
        assert a.dtype == torch.float32 and max_rel(a, b) < 1e-5


def test_wkv6_fp16_autocast_state_above_fp16_range_stays_finite() -> None:
    """Slow decays and large k, v: the state grows past 65504 (the largest float16); under float16
    autocast the chunked form used to return inf / NaN for most outputs."""
    B, T, H, N = 1, 64, 2, 16
    r, k, v, _, u, _ = wkv6_inputs(B, T, H, N, seed=1)
    k, v = 60.0 * k.abs(), 60.0 * v.abs()
    logw = torch.full_like(k, -1e-4)
    y_ref, s_ref = wkv6_naive(r, k, v, logw, u)
    assert s_ref.abs().max() > 65504
    with torch.autocast("cpu", dtype=torch.float16):
        y, s = wkv6_chunked(r, k, v, logw, u, chunk_size=16)
    assert torch.isfinite(y).all() and torch.isfinite(s).all()
    assert max_rel(y, y_ref) < 1e-5 and max_rel(s, s_ref) < 1e-5


def test_rwkv6_time_mixing_wkv_under_autocast(monkeypatch: pytest.MonkeyPatch) -> None:
    """The WKV inside RWKV-6 time mixing under bfloat16 autocast equals float32 WKV on the very
    inputs it was given (the rest of the block may round to bfloat16; the recurrence may not)."""
    from conftest import make_rwkv6

    rwkv6_model = importlib.import_module("spikelm.models.rwkv6")
    model = make_rwkv6(n_layer=1, n_embd=64, head_size=16)
    calls = []
    real = rwkv6_model.wkv6

    def spy(*args, **kw):
        out = real(*args, **kw)
        calls.append((args, kw, out))
        return out

    monkeypatch.setattr(rwkv6_model, "wkv6", spy)
    idx = torch.randint(0, 257, (2, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        model(idx)
    (args, kw, (y, s)), = calls
    y_ref, s_ref = real(*(a.float() if a is not None else None for a in args), **kw)
    assert y.dtype == torch.float32 and s.dtype == torch.float32
    assert max_rel(y, y_ref) < 1e-5 and max_rel(s, s_ref) < 1e-5


@pytest.mark.parametrize("pattern", ["floor", "alternating", "weak_after_strong", "inf_and_zero"])
@pytest.mark.parametrize("chunk", [8, 32])
def test_wkv6_chunked_float32_at_extreme_decays(pattern: str, chunk: int) -> None:
    """The float32 chunked form (no float64 anywhere) against a float64 naive loop, outputs,
    states and gradients, at decays where a difference of cumulative sums would lose precision
    or an unbounded factor would overflow."""
    B, T, H, N = 1, 45, 2, 8
    r, k, v, logw, u, state = wkv6_inputs(B, T, H, N, seed=2)
    t = torch.arange(T).view(1, T, 1, 1).expand_as(logw)
    if pattern == "floor":
        logw = torch.full_like(logw, -59.9)
    elif pattern == "alternating":
        logw = torch.where(t % 2 == 0, torch.full_like(logw, -60.0), torch.full_like(logw, -1e-4))
    elif pattern == "weak_after_strong":
        logw = torch.where(t < 13, torch.full_like(logw, -45.0), torch.full_like(logw, -1e-3))
    else:
        logw = torch.where(t % 3 == 0, torch.full_like(logw, -math.inf), torch.zeros_like(logw))
    inputs = (r, k, v, logw, u, state)
    wy = torch.randn(B, T, H, N, generator=torch.Generator().manual_seed(3))

    def run(fn, dtype):
        leaves = [x.to(dtype).clone().requires_grad_(True) for x in inputs]
        y, s = fn(*leaves)
        ((y * wy.to(dtype)).sum() + s.sum()).backward()
        return y, s, [x.grad for x in leaves]

    y64, s64, g64 = run(wkv6_naive, torch.float64)
    y, s, g = run(lambda *a: wkv6_chunked_fp32(*a, chunk_size=chunk), torch.float32)
    assert y.dtype == torch.float32
    assert max_rel(y, y64) < 2e-6 and max_rel(s, s64) < 2e-6
    for name, a, b in zip(["r", "k", "v", "logw", "u", "state"], g, g64):
        if name == "logw" and pattern == "inf_and_zero":
            b = torch.where(torch.isinf(logw), torch.zeros_like(b), b)  # clamped: no gradient at -inf
            a = torch.where(torch.isinf(logw), torch.zeros_like(a), a)
        assert max_rel(a, b) < 1e-5, name


@pytest.mark.parametrize("T", [5, 16, 45])
def test_wkv4_parallel_float32_at_extreme_decays(T: int) -> None:
    """The float32 parallel form (no float64 anywhere) against a float64 loop at w from -1e6 and
    -inf to 0, with keys up to +-40 (e^k far outside float32) and a warm state: outputs, state
    and gradients w.r.t. u, k, v."""
    B, C = 2, 6
    w, u, k, v = wkv4_inputs(B, T, C, seed=3)
    w = torch.tensor([-1e6, -math.inf, 0.0, -1e4, -1e-5, -30.0])
    k = k * 13.0
    state = wkv4_naive(w, u, 13.0 * torch.randn(B, 9, C, generator=torch.Generator().manual_seed(4)), torch.randn(B, 9, C))[1]
    wy = torch.randn(B, T, C, generator=torch.Generator().manual_seed(5))

    def run(dtype):
        leaves = [x.to(dtype).clone().requires_grad_(True) for x in (u, k, v)]
        y, s = wkv4_naive(w.to(dtype), *leaves, tuple(x.to(dtype) for x in state)) if dtype == torch.float64 else \
            wkv4_parallel(w, *leaves, state)
        ((y * wy.to(dtype)).sum() + s[0].sum() + s[1].sum()).backward()
        return y, s, [x.grad for x in leaves]

    y64, s64, g64 = run(torch.float64)
    y, s, g = run(torch.float32)
    assert y.dtype == torch.float32 and all(x.dtype == torch.float32 for x in s)
    assert max_rel(y, y64) < 1e-5
    assert max_rel(s[0], s64[0]) < 1e-5 and max_rel(s[1], s64[1]) < 1e-5
    assert ((s[2].double() - s64[2]).abs() <= 1e-5 * s64[2].abs().clamp(min=1.0)).all()
    for name, a, b in zip("ukv", g, g64):
        assert max_rel(a, b) < 1e-4, name
