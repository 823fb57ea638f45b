"""WKV4: the parallel (log-space) form against the official-style loop, a hand case, gradcheck."""

from __future__ import annotations

import importlib
import math

import pytest
import torch

from spikelm.ops import wkv4, wkv4_naive, wkv4_parallel

wkv4_module = importlib.import_module("spikelm.ops.wkv4")  # the package attribute is the function


def make_inputs(
    B: int, T: int, C: int, dtype: torch.dtype = torch.float32, seed: int = 0, k_scale: float = 3.0
) -> tuple[torch.Tensor, ...]:
    """w = -exp(time_decay) with time_decay in [-6, 3] (SpikeGPT's range and beyond), u, k, v."""
    g = torch.Generator().manual_seed(seed)
    w = -torch.exp(torch.empty(C, dtype=dtype).uniform_(-6.0, 3.0, generator=g))
    u = torch.randn(C, generator=g, dtype=dtype)
    k = k_scale * torch.randn(B, T, C, generator=g, dtype=dtype)
    v = torch.randn(B, T, C, generator=g, dtype=dtype)
    return w, u, k, v


def warm_state(w: torch.Tensor, u: torch.Tensor, B: int, C: int, seed: int, dtype=torch.float32):
    """A realistic non-empty state: the loop's state after a random 9-token prefix."""
    g = torch.Generator().manual_seed(seed)
    k = 3.0 * torch.randn(B, 9, C, generator=g, dtype=dtype)
    v = torch.randn(B, 9, C, generator=g, dtype=dtype)
    return wkv4_naive(w, u, k, v)[1]


def assert_close_rel(actual: torch.Tensor, expected: torch.Tensor, rel: float) -> None:
    assert torch.isfinite(actual).all()
    scale = expected.abs().max().clamp(min=1e-30)
    err = (actual - expected).abs().max() / scale
    assert err < rel, f"relative error {err:.3g} >= {rel:g}"


def assert_state_close(actual, expected, rel: float) -> None:
    """Same representation: aa and bb relative to their scale, pp to within rel * max(1, |pp|)."""
    for a, b in zip(actual[:2], expected[:2]):
        assert_close_rel(a, b, rel)
    assert ((actual[2] - expected[2]).abs() <= rel * expected[2].abs().clamp(min=1.0)).all()


@pytest.mark.parametrize("B,T,C", [(2, 50, 16), (1, 1, 8), (3, 7, 5), (1, 300, 4)])
@pytest.mark.parametrize("warm", [False, True])
def test_parallel_matches_naive(B: int, T: int, C: int, warm: bool) -> None:
    w, u, k, v = make_inputs(B, T, C, seed=T + C)
    state = warm_state(w, u, B, C, seed=1) if warm else None
    y_ref, s_ref = wkv4_naive(w, u, k, v, state)
    y, s = wkv4_parallel(w, u, k, v, state)
    assert y.shape == (B, T, C) and y.dtype == torch.float32
    assert all(x.shape == (B, C) and x.dtype == torch.float32 for x in s)
    assert_close_rel(y, y_ref, 1e-5)
    assert_state_close(s, s_ref, 1e-5)


def test_large_keys_long_sequence() -> None:
    """k in [-50, 50] over T = 1024: e^k alone would overflow float32; both forms must agree with a
    float64 loop (the parallel one at least as closely as the float32 loop)."""
    B, T, C = 1, 1024, 8
    w, u, _, v = make_inputs(B, T, C, seed=2)
    k = torch.empty(B, T, C).uniform_(-50.0, 50.0, generator=torch.Generator().manual_seed(3))
    y64, s64 = wkv4_naive(*(x.double() for x in (w, u, k, v)))
    y32, _ = wkv4_naive(w, u, k, v)
    y, s = wkv4_parallel(w, u, k, v)
    assert_close_rel(y, y64.float(), 1e-5)
    assert_state_close(s, tuple(x.float() for x in s64), 1e-5)
    assert (y.double() - y64).abs().max() <= 2 * (y32.double() - y64).abs().max() + 1e-6


def test_extreme_decays() -> None:
    """w down to -1e6 and -inf (time_decay overflowing exp), and w = 0 (no decay)."""
    B, T, C = 2, 40, 6
    w, u, k, v = make_inputs(B, T, C, seed=4)
    w = torch.tensor([-1e6, -math.inf, 0.0, -1e4, -1e-5, -100.0])
    y_ref, s_ref = wkv4_naive(w, u, k, v)
    y, s = wkv4_parallel(w, u, k, v)
    assert_close_rel(y, y_ref, 1e-5)
    assert_state_close(s, s_ref, 1e-5)


@pytest.mark.parametrize("warm", [False, True])
def test_chunks_carry_state(monkeypatch: pytest.MonkeyPatch, warm: bool) -> None:
    """Sequences are cut into chunks; a chunk length of 7 (T = 30: a short last chunk) exercises
    the hand-over cheaply."""
    monkeypatch.setattr(wkv4_module, "_CHUNK", 7)
    w, u, k, v = make_inputs(2, 30, 5, seed=5)
    state = warm_state(w, u, 2, 5, seed=6) if warm else None
    y_ref, s_ref = wkv4_naive(w, u, k, v, state)
    y, s = wkv4_module.wkv4_parallel(w, u, k, v, state)
    assert_close_rel(y, y_ref, 1e-5)
    assert_state_close(s, s_ref, 1e-5)


@pytest.mark.parametrize("impl", ["naive", "parallel"])
def test_state_carry_equals_one_call(impl: str) -> None:
    w, u, k, v = make_inputs(2, 40, 6, seed=6)
    y_full, s_full = wkv4(w, u, k, v, impl=impl)
    y1, s1 = wkv4(w, u, k[:, :13], v[:, :13], impl=impl)
    y2, s2 = wkv4(w, u, k[:, 13:], v[:, 13:], s1, impl=impl)
    assert_close_rel(torch.cat([y1, y2], dim=1), y_full, 1e-5)
    assert_state_close(s2, s_full, 1e-5)


def test_gradients_match_naive() -> None:
    """float64 gradients w.r.t. w, u, k, v and the state (aa, bb, pp); v has exact zeros, as
    spiking inputs do, where a sign split of v must still have derivative 1."""
    B, T, C = 2, 33, 5
    w, u, k, v = make_inputs(B, T, C, dtype=torch.float64, seed=7)
    v = torch.where(v > 0.3, v, torch.zeros_like(v))
    state = warm_state(w, u, B, C, seed=8, dtype=torch.float64)
    g = torch.Generator().manual_seed(9)
    wy = torch.randn(B, T, C, generator=g, dtype=torch.float64)
    ws = [torch.randn(B, C, generator=g, dtype=torch.float64) for _ in range(3)]

    def grads(fn) -> list[torch.Tensor]:
        leaves = [x.clone().requires_grad_(True) for x in (w, u, k, v, *state)]
        y, s = fn(*leaves[:4], tuple(leaves[4:]))
        loss = (y * wy).sum() + sum((a * b).sum() for a, b in zip(s, ws))
        loss.backward()
        return [x.grad for x in leaves]

    for name, a, b in zip(["w", "u", "k", "v", "aa", "bb", "pp"], grads(wkv4_parallel), grads(wkv4_naive)):
        assert torch.isfinite(a).all(), name
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-8, msg=name)


def test_gradients_finite_from_empty_state_float32() -> None:
    w, u, k, v = make_inputs(1, 64, 8, seed=10, k_scale=20.0)
    leaves = [x.clone().requires_grad_(True) for x in (w, u, k, v)]
    y, (aa, bb, pp) = wkv4_parallel(*leaves)
    (y.square().sum() + aa.sum() + bb.sum()).backward()
    ref = [x.clone().requires_grad_(True) for x in (w, u, k, v)]
    y_r, (aa_r, bb_r, _) = wkv4_naive(*ref)
    (y_r.square().sum() + aa_r.sum() + bb_r.sum()).backward()
    for a, b in zip(leaves, ref):
        assert_close_rel(a.grad, b.grad, 1e-4)


@pytest.mark.parametrize("impl", ["naive", "parallel"])
def test_hand_computed_case(impl: str) -> None:
    """C = 1, e^w = 1/2, e^u = 2, e^k = [1, 2, 1], v = [1, 2, 3]; worked out on paper:

    t=0: only the current token: y = v_0 = 1
    t=1: (1*1 + 2*2*2) / (1 + 2*2) = 9/5
    t=2: history 1/2*1 + 2*2 = 4.5 over 1/2 + 2 = 2.5; current 2*1 -> (4.5 + 2*3) / (2.5 + 2) = 7/3
    state: A = 1/4*1 + 1*2 + 1*3 = 5.25, B = 1/4 + 1 + 1 = 2.25; the running max pp is
    max(max(0 + w, log 2) + w, 0) = 0, so aa = 5.25, bb = 2.25.
    """
    f = torch.float64
    w = torch.tensor([math.log(0.5)], dtype=f)
    u = torch.tensor([math.log(2.0)], dtype=f)
    k = torch.tensor([0.0, math.log(2.0), 0.0], dtype=f).view(1, 3, 1)
    v = torch.tensor([1.0, 2.0, 3.0], dtype=f).view(1, 3, 1)
    y, (aa, bb, pp) = wkv4(w, u, k, v, impl=impl)
    torch.testing.assert_close(y.flatten(), torch.tensor([1.0, 9 / 5, 7 / 3], dtype=f), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(aa.flatten(), torch.tensor([5.25], dtype=f), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(bb.flatten(), torch.tensor([2.25], dtype=f), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(pp.flatten(), torch.tensor([0.0], dtype=f), rtol=1e-12, atol=1e-12)


def test_gradcheck_parallel() -> None:
    B, T, C = 1, 6, 2
    w, u, k, v = make_inputs(B, T, C, dtype=torch.float64, seed=11)
    state = warm_state(w, u, B, C, seed=12, dtype=torch.float64)
    leaves = tuple(x.clone().requires_grad_(True) for x in (w, u, k, v, *state))

    def fn(w, u, k, v, aa, bb, pp):
        y, s = wkv4_parallel(w, u, k, v, (aa, bb, pp))
        return (y, *s)

    assert torch.autograd.gradcheck(fn, leaves)


def test_dispatcher_and_empty_state(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    naive, parallel = wkv4_module.wkv4_naive, wkv4_module.wkv4_parallel
    monkeypatch.setattr(wkv4_module, "wkv4_naive", lambda *a: calls.append("naive") or naive(*a))
    monkeypatch.setattr(wkv4_module, "wkv4_parallel", lambda *a: calls.append("parallel") or parallel(*a))
    w, u, k, v = make_inputs(2, 3, 4)
    empty = wkv4_module.wkv4_empty_state(2, 4)
    y_none, _ = wkv4_module.wkv4(w, u, k, v)
    y_empty, _ = wkv4_module.wkv4(w, u, k, v, empty)
    wkv4_module.wkv4(w, u, k[:, :1], v[:, :1])
    assert calls == ["parallel", "parallel", "naive"]
    torch.testing.assert_close(y_none, y_empty)
    with pytest.raises(ValueError, match="impl"):
        wkv4_module.wkv4(w, u, k, v, impl="cuda")


def test_rejects_bad_shapes() -> None:
    w, u, k, v = make_inputs(2, 3, 4)
    with pytest.raises(ValueError, match="w must be"):
        wkv4_parallel(w[:3], u, k, v)
    with pytest.raises(ValueError, match="state must be"):
        wkv4_naive(w, u, k, v, (k[:, 0], k[:, 0]))
    with pytest.raises(ValueError, match="v must"):
        wkv4_parallel(w, u, k, v[:, :2])
