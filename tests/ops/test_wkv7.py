"""WKV7: chunked and single-step forms against the token loop, a hand-computed case, gradients."""

from __future__ import annotations

import importlib
import math

import pytest
import torch
import torch.nn.functional as F

wkv7_module = importlib.import_module("spikelm.ops.wkv7")
wkv7, wkv7_naive, wkv7_step, wkv7_chunked = (
    wkv7_module.wkv7, wkv7_module.wkv7_naive, wkv7_module.wkv7_step, wkv7_module.wkv7_chunked)


def make_inputs(
    B: int, T: int, H: int, N: int, dtype: torch.dtype = torch.float32, seed: int = 0, decays: str = "wide"
) -> tuple[torch.Tensor, ...]:
    """Random r, k, v, logw, a, b, state in the model's regime: a = -kk, b = kk * alpha with kk a
    per-head unit vector and alpha in (0, 1) (what RWKV-7 feeds the op).

    ``decays``: ``model`` (the model's range, logw in [-exp(-0.5), 0]), ``wide`` (-exp(3) ..
    -exp(-6)), or ``extreme`` (wide, plus some -1e4 and -inf steps that wipe a channel, and some
    exactly 0: no decay at all).
    """
    g = torch.Generator().manual_seed(seed)
    r, k, v = (torch.randn(B, T, H, N, generator=g, dtype=dtype) for _ in range(3))
    kk = F.normalize(torch.randn(B, T, H, N, generator=g, dtype=dtype), dim=-1)
    alpha = torch.rand(B, T, H, N, generator=g, dtype=dtype)
    if decays == "model":
        logw = -math.exp(-0.5) * torch.rand(B, T, H, N, generator=g, dtype=dtype)
    else:
        logw = -torch.exp(torch.empty(B, T, H, N, dtype=dtype).uniform_(-6.0, 3.0, generator=g))
    if decays == "extreme":
        pick = torch.rand(B, T, H, N, generator=g)
        logw = torch.where(pick < 0.1, torch.full_like(logw, -1e4), logw)
        logw = torch.where(pick > 0.97, torch.full_like(logw, -math.inf), logw)
        logw = torch.where((pick > 0.5) & (pick < 0.6), torch.zeros_like(logw), logw)
    state = torch.randn(B, H, N, N, generator=g, dtype=dtype)
    return r, k, v, logw, -kk, kk * alpha, state


def assert_close_rel(actual: torch.Tensor, expected: torch.Tensor, rel: float) -> None:
    """Max abs error relative to the largest magnitude of the reference."""
    assert torch.isfinite(actual).all()
    scale = expected.abs().max().clamp(min=1e-30)
    err = (actual - expected).abs().max() / scale
    assert err < rel, f"relative error {err:.3g} >= {rel:g}"


# (B, T, H, N, chunk_size): T not a multiple of the chunk, T < chunk, T = 1, exact multiples,
# a chunk of 1 (every step its own chunk) and a prime chunk.
SHAPES = [
    (2, 37, 3, 8, 8),
    (1, 5, 2, 4, 8),
    (2, 1, 2, 4, 8),
    (1, 64, 2, 16, 16),
    (1, 40, 1, 4, 7),
    (2, 29, 2, 8, 12),
    (1, 9, 1, 4, 1),
]


@pytest.mark.parametrize("B,T,H,N,chunk", SHAPES)
@pytest.mark.parametrize("decays", ["model", "wide", "extreme"])
def test_chunked_matches_naive_float32(B: int, T: int, H: int, N: int, chunk: int, decays: str) -> None:
    inputs = make_inputs(B, T, H, N, decays=decays, seed=T + N)
    y_ref, s_ref = wkv7_naive(*inputs)
    y, s = wkv7_chunked(*inputs, chunk_size=chunk)
    assert y.shape == (B, T, H, N) and s.shape == (B, H, N, N)
    assert y.dtype == torch.float32 and s.dtype == torch.float32
    assert_close_rel(y, y_ref, 1e-5)
    assert_close_rel(s, s_ref, 1e-5)


def test_model_head_size_64() -> None:
    """The released head size, with the model's decays, over several chunks."""
    inputs = make_inputs(1, 45, 2, 64, decays="model", seed=1)
    y_ref, s_ref = wkv7_naive(*inputs)
    y, s = wkv7_chunked(*inputs)
    assert_close_rel(y, y_ref, 1e-5)
    assert_close_rel(s, s_ref, 1e-5)


def test_weak_decay_after_strong_decay_keeps_precision() -> None:
    """Steps at the floor then weak ones: the pairwise decays are local sums, not differences of
    cumulative sums ~ -1000 (which in float32 would blur e^-1e-3 by ~1e-4)."""
    r, k, v, logw, a, b, state = make_inputs(1, 32, 1, 4, seed=3)
    logw = torch.full_like(logw, -1e-3)
    logw[:, :20] = -50.0
    y_ref, s_ref = wkv7_naive(r, k, v, logw, a, b, state)
    y, s = wkv7_chunked(r, k, v, logw, a, b, state, chunk_size=32)
    assert_close_rel(y[:, 20:], y_ref[:, 20:], 1e-5)
    assert_close_rel(s, s_ref, 1e-5)


def test_all_infinite_decay_is_finite() -> None:
    """logw = -inf everywhere: diag(w) S vanishes and only the rank-1 terms carry anything,
    S_t = b_t (a_t^T S_{t-1}) + k_t^T v_t; the chunked form must stay finite (no -inf - -inf)."""
    r, k, v, _, a, b, state = make_inputs(1, 20, 2, 4, seed=5)
    logw = torch.full_like(r, -math.inf)
    y, s = wkv7_chunked(r, k, v, logw, a, b, state, chunk_size=8)
    y_ref, s_ref = wkv7_naive(r, k, v, logw, a, b, state)
    assert_close_rel(y, y_ref, 1e-5)
    assert_close_rel(s, s_ref, 1e-5)
    _, s_prev = wkv7_naive(*(x[:, :-1] for x in (r, k, v, logw, a, b)), state)
    a_s = torch.einsum("bhi,bhij->bhj", a[:, -1], s_prev)
    by_hand = b[:, -1].unsqueeze(-1) * a_s.unsqueeze(-2) + k[:, -1].unsqueeze(-1) * v[:, -1].unsqueeze(-2)
    assert_close_rel(s, by_hand, 1e-6)


def grads(fn, inputs, weights=None) -> list[torch.Tensor]:
    leaves = [x.clone().requires_grad_(True) for x in inputs]
    y, s = fn(*leaves)
    if weights is None:
        loss = y.square().sum() + s.sum()
    else:
        loss = (y * weights[0]).sum() + (s * weights[1]).sum()
    loss.backward()
    return [x.grad for x in leaves]


NAMES = ["r", "k", "v", "logw", "a", "b", "state"]


@pytest.mark.parametrize("B,T,H,N,chunk", [(2, 37, 2, 8, 8), (1, 9, 1, 4, 4), (1, 1, 2, 4, 8), (1, 24, 1, 8, 16)])
def test_gradients_match_naive_float64(B: int, T: int, H: int, N: int, chunk: int) -> None:
    """Gradients w.r.t. every input and the initial state, float64, extreme decays included."""
    inputs = make_inputs(B, T, H, N, dtype=torch.float64, decays="extreme", seed=7 + T)
    g = torch.Generator().manual_seed(0)
    weights = [torch.randn(B, T, H, N, generator=g, dtype=torch.float64), torch.randn(B, H, N, N, generator=g, dtype=torch.float64)]
    g_ref = grads(wkv7_naive, inputs, weights)
    g_new = grads(lambda *x: wkv7_chunked(*x, chunk_size=chunk), inputs, weights)
    for name, x, ref in zip(NAMES, g_new, g_ref):
        assert torch.isfinite(x).all(), name
        if name == "logw":  # below the floor the chunked form has no gradient, the loop ~ e^-1e4 * ...
            keep = inputs[3] > wkv7_module.LOG_DECAY_FLOOR
            x, ref = x[keep], ref[keep]
        torch.testing.assert_close(x, ref, rtol=1e-9, atol=1e-9, msg=name)


@pytest.mark.parametrize("decays", ["model", "extreme"])
def test_gradients_match_naive_float32(decays: str) -> None:
    inputs = make_inputs(1, 45, 2, 8, seed=11, decays=decays)
    for name, x, ref in zip(NAMES, grads(lambda *a: wkv7_chunked(*a, chunk_size=16), inputs), grads(wkv7_naive, inputs)):
        assert_close_rel(x, ref, 1e-4)


def test_step_gradients_match_naive() -> None:
    inputs = make_inputs(2, 1, 2, 8, dtype=torch.float64, seed=12)
    for name, x, ref in zip(NAMES, grads(wkv7_step, inputs), grads(wkv7_naive, inputs)):
        torch.testing.assert_close(x, ref, rtol=1e-10, atol=1e-10, msg=name)


@pytest.mark.parametrize("chunk", [3, 8])
def test_gradcheck_chunked(chunk: int) -> None:
    """chunk 3: four chunks (state passing); chunk 8: two chunks, the triangular solve at depth."""
    r, k, v, logw, a, b, state = make_inputs(1, 11, 1, 3, dtype=torch.float64, seed=19, decays="model")
    leaves = tuple(x.clone().requires_grad_(True) for x in (r, k, v, logw, a, b, state))
    assert torch.autograd.gradcheck(lambda *x: wkv7_chunked(*x, chunk_size=chunk), leaves)


@pytest.mark.parametrize("impl", ["naive", "chunked"])
def test_state_carry_equals_one_call(impl: str) -> None:
    r, k, v, logw, a, b, state = make_inputs(2, 50, 2, 8, seed=13)
    y_full, s_full = wkv7(r, k, v, logw, a, b, state, impl=impl, chunk_size=8)
    cut = 21
    first = [x[:, :cut] for x in (r, k, v, logw, a, b)]
    second = [x[:, cut:] for x in (r, k, v, logw, a, b)]
    y1, s1 = wkv7(*first, state, impl=impl, chunk_size=8)
    y2, s2 = wkv7(*second, s1, impl=impl, chunk_size=8)
    assert_close_rel(torch.cat([y1, y2], dim=1), y_full, 1e-5)
    assert_close_rel(s2, s_full, 1e-5)


def test_token_by_token_decoding_equals_parallel() -> None:
    inputs = make_inputs(1, 12, 2, 4, seed=17)
    y_par, s_par = wkv7(*inputs)
    s, ys = inputs[-1], []
    for t in range(12):
        y_t, s = wkv7(*(x[:, t : t + 1] for x in inputs[:-1]), s)
        ys.append(y_t)
    assert_close_rel(torch.cat(ys, dim=1), y_par, 1e-5)
    assert_close_rel(s, s_par, 1e-5)


@pytest.mark.parametrize("B,H,N", [(1, 1, 4), (2, 3, 8), (3, 8, 64)])
@pytest.mark.parametrize("with_state", [True, False])
def test_step_matches_naive(B: int, H: int, N: int, with_state: bool) -> None:
    r, k, v, logw, a, b, state = make_inputs(B, 1, H, N, decays="extreme")
    state = state if with_state else None
    y0, s0 = wkv7_naive(r, k, v, logw, a, b, state)
    y1, s1 = wkv7_step(r, k, v, logw, a, b, state)
    torch.testing.assert_close(y1, y0, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(s1, s0, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="one time step"):
        wkv7_step(*make_inputs(1, 2, 1, 4)[:-1])


@pytest.mark.parametrize("impl", ["naive", "chunked", "step"])
def test_hand_computed_case(impl: str) -> None:
    """H = 1, N = 2, worked out on paper; w differs per key dim and a, b are not symmetric, so a
    transposed state, a decay on the value dim, b/a swapped, or reading y before the update shows.

    S0 = [[1, 2], [3, 4]] ([key, value]), w = [0.5, 0.25], a = [1, 0], b = [0, -0.5],
    k = [1, 1], v = [1, 0], r = [1, 2]
    a^T S0 = [1, 2]; b (a^T S0) = [[0, 0], [-0.5, -1]]; diag(w) S0 = [[0.5, 1], [0.75, 1]]
    S1 = [[0.5, 1], [0.25, 0]] + [[1, 0], [1, 0]] = [[1.5, 1], [1.25, 0]];  y = r S1 = [4, 1]
    """
    f = torch.float64
    t = lambda *x: torch.tensor(x, dtype=f).view(1, 1, 1, 2)
    r, k, v, w, a, b = t(1.0, 2.0), t(1.0, 1.0), t(1.0, 0.0), t(0.5, 0.25), t(1.0, 0.0), t(0.0, -0.5)
    state = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=f).view(1, 1, 2, 2)
    fn = {"naive": wkv7_naive, "chunked": wkv7_chunked, "step": wkv7_step}[impl]
    y, s = fn(r, k, v, torch.log(w), a, b, state)
    torch.testing.assert_close(y, t(4.0, 1.0), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(s, torch.tensor([[1.5, 1.0], [1.25, 0.0]], dtype=f).view(1, 1, 2, 2), rtol=1e-12, atol=1e-12)


def test_low_precision_inputs_computed_in_float32() -> None:
    r, k, v, logw, a, b, state = make_inputs(1, 20, 2, 4, seed=23)
    lo = [x.to(torch.bfloat16) for x in (r, k, v, logw, a, b)]
    y, s = wkv7_chunked(*lo, state)
    y_ref, s_ref = wkv7_naive(*(x.float() for x in lo), state)
    assert y.dtype == torch.bfloat16 and s.dtype == torch.float32
    assert_close_rel(s, s_ref, 1e-5)
    assert_close_rel(y.float(), y_ref, 1e-2)  # only bfloat16 rounding of the output


def test_dispatcher(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    naive, chunked, step = wkv7_module.wkv7_naive, wkv7_module.wkv7_chunked, wkv7_module.wkv7_step
    monkeypatch.setattr(wkv7_module, "wkv7_naive", lambda *a: calls.append("naive") or naive(*a))
    monkeypatch.setattr(wkv7_module, "wkv7_step", lambda *a: calls.append("step") or step(*a))
    monkeypatch.setattr(wkv7_module, "wkv7_chunked", lambda *a, **kw: calls.append("chunked") or chunked(*a, **kw))
    wkv7_module.wkv7(*make_inputs(1, 1, 1, 4))
    wkv7_module.wkv7(*make_inputs(1, 3, 1, 4))
    wkv7_module.wkv7(*make_inputs(1, 3, 1, 4), impl="naive")
    assert calls == ["step", "chunked", "naive"]
    with pytest.raises(ValueError, match="impl"):
        wkv7_module.wkv7(*make_inputs(1, 3, 1, 4), impl="cuda")


def test_rejects_bad_shapes() -> None:
    r, k, v, logw, a, b, state = make_inputs(1, 4, 2, 4)
    with pytest.raises(ValueError, match="b must"):
        wkv7_chunked(r, k, v, logw, a, b[:, :, :1], state)
    with pytest.raises(ValueError, match="state must be"):
        wkv7_naive(r, k, v, logw, a, b, state[:, :1])
    with pytest.raises(ValueError, match="chunk_size"):
        wkv7_chunked(r, k, v, logw, a, b, state, chunk_size=0)
