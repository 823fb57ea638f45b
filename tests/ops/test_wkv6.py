"""WKV6: the chunked form against the token loop, a hand-computed case, and gradcheck."""

from __future__ import annotations

import importlib
import math

import pytest
import torch

from spikelm.ops import wkv6, wkv6_chunked, wkv6_naive

wkv6_module = importlib.import_module("spikelm.ops.wkv6")  # the package attribute is the function


def make_inputs(
    B: int, T: int, H: int, N: int, dtype: torch.dtype = torch.float32, seed: int = 0, strong: bool = False
) -> tuple[torch.Tensor, ...]:
    """Random r, k, v, logw, u, state; logw spans the decays of real models, -exp(3) .. -exp(-6).

    ``strong`` also plants some -1e4 and -inf log-decays (a step that wipes the state).
    """
    g = torch.Generator().manual_seed(seed)
    r, k, v = (torch.randn(B, T, H, N, generator=g, dtype=dtype) for _ in range(3))
    logw = -torch.exp(torch.empty(B, T, H, N, dtype=dtype).uniform_(-6.0, 3.0, generator=g))
    if strong:
        pick = torch.rand(B, T, H, N, generator=g)
        logw = torch.where(pick < 0.1, torch.full_like(logw, -1e4), logw)
        logw = torch.where(pick > 0.97, torch.full_like(logw, -math.inf), logw)
    u = torch.randn(H, N, generator=g, dtype=dtype)
    state = torch.randn(B, H, N, N, generator=g, dtype=dtype)
    return r, k, v, logw, u, state


def assert_close_rel(actual: torch.Tensor, expected: torch.Tensor, rel: float) -> None:
    """Max abs error relative to the largest magnitude of the reference."""
    assert torch.isfinite(actual).all()
    scale = expected.abs().max().clamp(min=1e-30)
    err = (actual - expected).abs().max() / scale
    assert err < rel, f"relative error {err:.3g} >= {rel:g}"


# (B, T, H, N, chunk_size): T not a multiple of the chunk, T < chunk, T = 1, exact multiples,
# chunk sizes with sub-chunks of 8 (several per chunk), 6 and 7 (a prime chunk: one sub-chunk).
SHAPES = [
    (2, 37, 3, 8, 32),
    (1, 5, 2, 4, 32),
    (2, 1, 2, 4, 32),
    (1, 64, 2, 16, 16),
    (1, 40, 1, 4, 7),
    (2, 29, 2, 8, 12),
    (1, 70, 1, 8, 64),
]


@pytest.mark.parametrize("B,T,H,N,chunk", SHAPES)
@pytest.mark.parametrize("strong", [False, True])
def test_chunked_matches_naive_float32(B: int, T: int, H: int, N: int, chunk: int, strong: bool) -> None:
    inputs = make_inputs(B, T, H, N, strong=strong, seed=T + N)
    y_ref, s_ref = wkv6_naive(*inputs)
    y, s = wkv6_chunked(*inputs, chunk_size=chunk)
    assert y.shape == (B, T, H, N) and s.shape == (B, H, N, N)
    assert y.dtype == torch.float32 and s.dtype == torch.float32
    assert_close_rel(y, y_ref, 1e-4)
    assert_close_rel(s, s_ref, 1e-4)


def test_weak_decay_after_strong_decay_keeps_precision() -> None:
    """Huge |cumsum| (from -60-floored steps) must not blur a later weak decay (float64 cumsums)."""
    B, T, H, N = 1, 32, 1, 4
    r, k, v, logw, u, state = make_inputs(B, T, H, N, seed=3)
    logw = torch.full_like(logw, -1e-3)
    logw[:, :20] = -50.0  # cumulative decay ~ -1000 before the weak steps
    y_ref, s_ref = wkv6_naive(r, k, v, logw, u, state)
    y, s = wkv6_chunked(r, k, v, logw, u, state, chunk_size=32)
    assert_close_rel(y[:, 20:], y_ref[:, 20:], 1e-5)
    assert_close_rel(s, s_ref, 1e-5)


def test_all_infinite_decay_is_finite_and_forgets() -> None:
    """logw = -inf everywhere: each step sees only its own token (bonus) and the previous one."""
    B, T, H, N = 1, 20, 2, 4
    r, k, v, _, u, state = make_inputs(B, T, H, N, seed=5)
    logw = torch.full((B, T, H, N), -math.inf)
    y, s = wkv6_chunked(r, k, v, logw, u, state, chunk_size=8)
    y_ref, s_ref = wkv6_naive(r, k, v, logw, u, state)
    assert_close_rel(y, y_ref, 1e-5)
    assert_close_rel(s, s_ref, 1e-5)
    last = k[0, -1].unsqueeze(-1) * v[0, -1].unsqueeze(-2)  # only the last token survives
    assert_close_rel(s[0], last, 1e-6)


@pytest.mark.parametrize("B,T,H,N,chunk", [(2, 37, 2, 8, 32), (1, 9, 1, 4, 4), (1, 1, 2, 4, 32), (1, 24, 1, 8, 16)])
def test_gradients_match_naive(B: int, T: int, H: int, N: int, chunk: int) -> None:
    """Gradients w.r.t. r, k, v, logw, u and the initial state, in float64, strong decays included."""
    inputs = make_inputs(B, T, H, N, dtype=torch.float64, strong=True, seed=7 + T)
    weights = [torch.randn(B, T, H, N, dtype=torch.float64), torch.randn(B, H, N, N, dtype=torch.float64)]

    def grads(fn) -> list[torch.Tensor]:
        leaves = [x.clone().requires_grad_(True) for x in inputs]
        y, s = fn(*leaves)
        ((y * weights[0]).sum() + (s * weights[1]).sum()).backward()
        return [x.grad for x in leaves]

    g_ref = grads(wkv6_naive)
    g = grads(lambda *a: wkv6_chunked(*a, chunk_size=chunk))
    for name, a, b in zip(["r", "k", "v", "logw", "u", "state"], g, g_ref):
        assert torch.isfinite(a).all(), name
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9, msg=name)


def test_gradients_match_naive_float32() -> None:
    inputs = make_inputs(1, 45, 2, 8, seed=11)

    def grads(fn) -> list[torch.Tensor]:
        leaves = [x.clone().requires_grad_(True) for x in inputs]
        y, s = fn(*leaves)
        (y.square().sum() + s.sum()).backward()
        return [x.grad for x in leaves]

    for a, b in zip(grads(lambda *a: wkv6_chunked(*a, chunk_size=16)), grads(wkv6_naive)):
        assert_close_rel(a, b, 1e-4)


@pytest.mark.parametrize("impl", ["naive", "chunked"])
def test_state_carry_equals_one_call(impl: str) -> None:
    r, k, v, logw, u, state = make_inputs(2, 50, 2, 8, seed=13)
    y_full, s_full = wkv6(r, k, v, logw, u, state, impl=impl, chunk_size=16)
    cut = 21
    y1, s1 = wkv6(r[:, :cut], k[:, :cut], v[:, :cut], logw[:, :cut], u, state, impl=impl, chunk_size=16)
    y2, s2 = wkv6(r[:, cut:], k[:, cut:], v[:, cut:], logw[:, cut:], u, s1, impl=impl, chunk_size=16)
    assert_close_rel(torch.cat([y1, y2], dim=1), y_full, 1e-5)
    assert_close_rel(s2, s_full, 1e-5)


def test_token_by_token_decoding_equals_parallel() -> None:
    r, k, v, logw, u, state = make_inputs(1, 12, 2, 4, seed=17)
    y_par, s_par = wkv6(r, k, v, logw, u, state)
    s, ys = state, []
    for t in range(12):
        y_t, s = wkv6(r[:, t : t + 1], k[:, t : t + 1], v[:, t : t + 1], logw[:, t : t + 1], u, s)
        ys.append(y_t)
    assert_close_rel(torch.cat(ys, dim=1), y_par, 1e-5)
    assert_close_rel(s, s_par, 1e-5)


@pytest.mark.parametrize("impl", ["naive", "chunked"])
def test_hand_computed_case(impl: str) -> None:
    """H = 1, N = 2, T = 3, worked out on paper; decays differ per key dim, so a transposed state
    (decay on the value dim) or a bonus on the wrong token would show.

    S0 = I, u = [0.5, 2], w_1 = [0.5, 0.25], w_2 = [0.5, 0.5], w_3 = [0.5, 0.25]
    t=1: y = r1 u k1 v1 + r1 S0 = 0.5 [1, 2] + [1, 1] = [1.5, 2];  S1 = [[1.5, 2], [0, 0.25]]
    t=2: y = (1*2*1) [3, 1] + r2 S1 = [6, 2] + [1.5, 2.25] = [7.5, 4.25];  S2 = [[0.75, 1], [3, 1.125]]
    t=3: y = (2*0.5 + 1*2) [0, 1] + [2, 1] S2 = [0, 3] + [4.5, 3.125] = [4.5, 6.125]
         S3 = diag(0.5, 0.25) S2 + [[0, 1], [0, 1]] = [[0.375, 1.5], [0.75, 1.28125]]
    """
    f = torch.float64
    r = torch.tensor([[1.0, 1.0], [1.0, 1.0], [2.0, 1.0]], dtype=f).view(1, 3, 1, 2)
    k = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=f).view(1, 3, 1, 2)
    v = torch.tensor([[1.0, 2.0], [3.0, 1.0], [0.0, 1.0]], dtype=f).view(1, 3, 1, 2)
    w = torch.tensor([[0.5, 0.25], [0.5, 0.5], [0.5, 0.25]], dtype=f).view(1, 3, 1, 2)
    u = torch.tensor([[0.5, 2.0]], dtype=f)
    state = torch.eye(2, dtype=f).view(1, 1, 2, 2)
    y, s = wkv6(r, k, v, torch.log(w), u, state, impl=impl, chunk_size=2)
    expected_y = torch.tensor([[1.5, 2.0], [7.5, 4.25], [4.5, 6.125]], dtype=f).view(1, 3, 1, 2)
    expected_s = torch.tensor([[0.375, 1.5], [0.75, 1.28125]], dtype=f).view(1, 1, 2, 2)
    torch.testing.assert_close(y, expected_y, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(s, expected_s, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("chunk", [4, 16])
def test_gradcheck_chunked(chunk: int) -> None:
    """chunk 4: three chunks (state passing); chunk 16: two sub-chunks of 8 (both intra paths)."""
    B, T, H, N = 1, 11, 1, 2
    r, k, v, logw, u, state = make_inputs(B, T, H, N, dtype=torch.float64, seed=19)
    logw = -torch.exp(torch.empty_like(logw).uniform_(-2.0, 1.0))  # away from the clamp's kink
    leaves = tuple(x.clone().requires_grad_(True) for x in (r, k, v, logw, u, state))
    assert torch.autograd.gradcheck(lambda *a: wkv6_chunked(*a, chunk_size=chunk), leaves)


def test_low_precision_inputs_computed_in_float32() -> None:
    r, k, v, logw, u, state = make_inputs(1, 20, 2, 4, seed=23)
    lo = [x.to(torch.bfloat16) for x in (r, k, v, logw)]
    y, s = wkv6_chunked(*lo, u.to(torch.bfloat16), state)
    y_ref, s_ref = wkv6_naive(*(x.float() for x in lo), u.to(torch.bfloat16).float(), state)
    assert y.dtype == torch.bfloat16 and s.dtype == torch.float32
    assert_close_rel(s, s_ref, 1e-5)
    assert_close_rel(y.float(), y_ref, 1e-2)  # only bfloat16 rounding of the output


def test_dispatcher(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    naive, chunked, step = wkv6_module.wkv6_naive, wkv6_module.wkv6_chunked, wkv6_module.wkv6_step
    monkeypatch.setattr(wkv6_module, "wkv6_naive", lambda *a: calls.append("naive") or naive(*a))
    monkeypatch.setattr(wkv6_module, "wkv6_step", lambda *a: calls.append("step") or step(*a))
    monkeypatch.setattr(wkv6_module, "wkv6_chunked", lambda *a, **kw: calls.append("chunked") or chunked(*a, **kw))
    recurrent = wkv6_module.wkv6_recurrent_cpu
    monkeypatch.setattr(wkv6_module, "wkv6_recurrent_cpu", lambda *a: calls.append("recurrent") or recurrent(*a))
    one = make_inputs(1, 1, 1, 4)
    many = make_inputs(1, 3, 1, 4)
    wkv6_module.wkv6(*one)  # no gradient wanted: the compiled recurrence where it could be built
    wkv6_module.wkv6(*many)
    wkv6_module.wkv6(*(t.requires_grad_() if t is one[3] else t for t in one))  # a gradient, one step: step
    wkv6_module.wkv6(*(t.requires_grad_() if t is many[3] else t for t in many))  # a gradient: chunked
    wkv6_module.wkv6(*many, impl="naive")
    compiled = importlib.import_module("spikelm.ops.kernels").library() is not None
    assert calls == ["recurrent" if compiled else "step", "recurrent" if compiled else "chunked", "step", "chunked",
                     "naive"]
    with pytest.raises(ValueError, match="impl"):
        wkv6_module.wkv6(*many, impl="cuda")


def test_rejects_bad_shapes() -> None:
    r, k, v, logw, u, state = make_inputs(1, 4, 2, 4)
    with pytest.raises(ValueError, match="u must be"):
        wkv6_chunked(r, k, v, logw, u[0], state)
    with pytest.raises(ValueError, match="state must be"):
        wkv6_naive(r, k, v, logw, u, state[:, :1])
    with pytest.raises(ValueError, match="k must"):
        wkv6_chunked(r, k[:, :3], v, logw, u, state)


@pytest.mark.parametrize("B,H,N", [(1, 1, 4), (2, 3, 8), (3, 8, 64)])
@pytest.mark.parametrize("with_state", [True, False])
def test_step_matches_naive(B: int, H: int, N: int, with_state: bool) -> None:
    """The single-token fast path of decoding equals the naive loop (strong decays included)."""
    r, k, v, logw, u, state = make_inputs(B, 1, H, N, strong=True)
    state = state if with_state else None
    y0, s0 = wkv6_naive(r, k, v, logw, u, state)
    y1, s1 = wkv6_module.wkv6_step(r, k, v, logw, u, state)
    torch.testing.assert_close(y1, y0, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(s1, s0, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="one time step"):
        wkv6_module.wkv6_step(*make_inputs(1, 2, 1, 4))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_gradients_finite_with_decays_at_the_floor(dtype: torch.dtype) -> None:
    """Regression: channels whose log-decay sits just above the floor for a whole sub-chunk
    (cumulative -480) once made the chunked backward return NaN for logw (a quotient rule that
    squared e^{-480}); training an RWKV-6 at lr 3e-3 hit it at step 103."""
    r, k, v, logw, u, state = make_inputs(2, 40, 2, 8, dtype=dtype, seed=3)
    logw = logw.clone()
    logw[..., :3] = -59.5 + 0.4 * torch.rand(2, 40, 2, 3, dtype=dtype)  # three channels at the floor throughout
    inputs = (r, k, v, logw, u, state)

    def grads(fn) -> list[torch.Tensor]:
        leaves = [x.clone().requires_grad_(True) for x in inputs]
        y, s = fn(*leaves)
        (y.square().sum() + s.sum()).backward()
        return [x.grad for x in leaves]

    g_ref = grads(wkv6_naive)
    for name, a, b in zip(["r", "k", "v", "logw", "u", "state"], grads(lambda *a: wkv6_chunked(*a, chunk_size=16)), g_ref):
        assert torch.isfinite(a).all(), name
        if dtype == torch.float64:
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9, msg=name)
        else:
            assert_close_rel(a, b, 1e-4)


@pytest.mark.parametrize("T,chunk", [(37, 16), (64, 32), (5, 8)])
def test_float32_chunked_form_matches_naive(T: int, chunk: int) -> None:
    """The CUDA form (float32 throughout, recomputation in backward) against the loop: outputs, state, gradients."""
    from spikelm.ops.wkv6 import wkv6_chunked_fp32

    g = torch.Generator().manual_seed(T)
    B, H, N = 2, 2, 8
    r, k, v = (torch.randn(B, T, H, N, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(3))
    logw = (-torch.rand(B, T, H, N, generator=g, dtype=torch.float64) * 5).requires_grad_()
    u = torch.randn(H, N, generator=g, dtype=torch.float64, requires_grad=True)
    y0, s0 = wkv6_naive(r, k, v, logw, u)
    y1, s1 = wkv6_chunked_fp32(r, k, v, logw, u, chunk_size=chunk)
    torch.testing.assert_close(y1, y0, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(s1, s0, rtol=1e-9, atol=1e-9)
    g0 = torch.autograd.grad((y0.square().sum() + s0.sum()), (r, k, v, logw, u))
    g1 = torch.autograd.grad((y1.square().sum() + s1.sum()), (r, k, v, logw, u))
    for a, b in zip(g1, g0):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-9)
