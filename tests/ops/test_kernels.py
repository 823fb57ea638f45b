"""The C++ kernels against their naive twins (the WKV6 recurrence, the one-row products, spike
decoding and counting, in their portable and AVX2 builds), their argument checks, and when ``wkv6``
takes the recurrence."""

from __future__ import annotations

import pytest
import torch

import importlib

from spikelm.ops import backend, kernels
from spikelm.ops.spikes import level_histogram
from spikelm.ops.wkv6 import wkv6, wkv6_naive, wkv6_recurrent_cpu

wkv6_module = importlib.import_module("spikelm.ops.wkv6")  # the package attribute is the function

needs_kernel = pytest.mark.skipif(kernels.library() is None, reason="no C++ compiler / ninja to build the kernel")


def _close(got, ref, tol=2e-6):
    """float32 rounding: the largest difference relative to the largest reference value."""
    err = ((got.double() - ref).abs().max() / ref.abs().max()).item()
    assert err < tol, f"relative error {err:.2e}"


def _inputs(B, T, H, N, seed=0, floor=False):
    g = torch.Generator().manual_seed(seed)
    r, k, v = (torch.randn(B, T, H, N, generator=g) for _ in range(3))
    logw = -torch.exp(torch.rand(B, T, H, N, generator=g) * 7 - 6)  # decays from e^-e^-6 to e^-e^1
    if floor:
        logw[:, ::3] = -60.0  # the floor: a decay of e^-60 per step, which the recurrence takes as is
    u = torch.randn(H, N, generator=g) * 0.5
    s0 = torch.randn(B, H, N, N, generator=g)
    return r, k, v, logw, u, s0


@pytest.fixture(params=[True, False], ids=["avx2", "portable"])
def isa(request):
    """Each compiled loop in both builds (on a CPU without AVX2 both runs take the portable one)."""
    ops = kernels.library()
    if ops is None:
        pytest.skip("no C++ compiler / ninja to build the kernel")
    ops.set_avx2(request.param)
    yield request.param
    ops.set_avx2(True)


@pytest.mark.parametrize("B, T, H, N", [(1, 1, 1, 16), (2, 7, 3, 16), (2, 33, 2, 64), (1, 130, 4, 64), (1, 1, 2, 64),
                                        (2, 9, 2, 32), (1, 11, 1, 48), (1, 5, 1, 96)])
@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("floor", [False, True])
def test_recurrent_cpu_equals_the_naive_loop(isa, B, T, H, N, with_state, floor):
    r, k, v, logw, u, s0 = _inputs(B, T, H, N, seed=T, floor=floor)
    state = s0 if with_state else None
    y, s = wkv6_recurrent_cpu(r, k, v, logw, u, state)
    ref_y, ref_s = wkv6_naive(*(t.double() for t in (r, k, v, logw, u)), None if state is None else state.double())
    assert y.dtype == torch.float32 and s.dtype == torch.float32 and s.shape == (B, H, N, N)
    _close(y, ref_y)
    _close(s, ref_s)
    if state is not None:
        assert torch.equal(state, s0)  # the caller's state is not written to


@needs_kernel
def test_recurrent_cpu_takes_bf16_inputs_and_returns_their_dtype():
    r, k, v, logw, u, _ = _inputs(1, 20, 2, 32)
    rb, kb, vb = (t.bfloat16() for t in (r, k, v))
    y, s = wkv6_recurrent_cpu(rb, kb, vb, logw, u)
    ref_y, ref_s = wkv6_naive(*(t.double() for t in (rb, kb, vb, logw, u)))
    assert y.dtype == torch.bfloat16 and s.dtype == torch.float32
    _close(y, ref_y, tol=1e-2)  # y rounded to bf16
    _close(s, ref_s)


@needs_kernel
def test_auto_takes_the_kernel_only_without_gradients(monkeypatch):
    calls = []
    real = wkv6_module.wkv6_recurrent_cpu
    monkeypatch.setattr(wkv6_module, "wkv6_recurrent_cpu", lambda *a: calls.append(1) or real(*a))
    r, k, v, logw, u, s0 = _inputs(1, 16, 2, 16)
    with torch.no_grad():
        y, s = wkv6(r, k, v, logw, u, s0)
    assert calls == [1]
    ref_y, ref_s = wkv6(r, k, v, logw, u, s0, impl="chunked")
    torch.testing.assert_close(y, ref_y, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(s, ref_s, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        y1, s1 = wkv6(r[:, :1], k[:, :1], v[:, :1], logw[:, :1], u, s0)  # one step (decoding): the kernel too
    assert calls == [1, 1]
    ref_y1, ref_s1 = wkv6(r[:, :1], k[:, :1], v[:, :1], logw[:, :1], u, s0, impl="naive")
    torch.testing.assert_close(y1, ref_y1, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(s1, ref_s1, rtol=1e-5, atol=1e-5)
    wkv6(r, k, v, logw.requires_grad_(), u, s0)  # a gradient is wanted: the chunked form
    wkv6(r[:, :1], k[:, :1], v[:, :1], logw[:, :1], u, s0)  # and for one step, wkv6_step
    with torch.no_grad():
        wkv6(*(t.double() for t in (r, k, v, logw, u, s0)))  # float64: the chunked form
    assert calls == [1, 1]


def test_without_the_kernel_auto_keeps_the_chunked_form(monkeypatch):
    monkeypatch.setattr(backend, "library", lambda: None)
    monkeypatch.setattr(kernels, "library", lambda: None)
    r, k, v, logw, u, s0 = _inputs(1, 16, 2, 16)
    with torch.no_grad():
        y, s = wkv6(r, k, v, logw, u, s0)
        ref_y, ref_s = wkv6(r, k, v, logw, u, s0, impl="chunked")
    assert torch.equal(y, ref_y) and torch.equal(s, ref_s)
    with pytest.raises(RuntimeError, match="not available"):
        wkv6_recurrent_cpu(r, k, v, logw, u)


def test_the_environment_turns_the_kernels_off(monkeypatch):
    """SPIKELM_BACKEND=torch: every op takes its tensor operations and nothing is built."""
    monkeypatch.setenv("SPIKELM_BACKEND", "torch")
    monkeypatch.setattr(backend, "_default", None)
    monkeypatch.setattr(backend, "library", lambda: pytest.fail("the kernels were loaded"))
    r, k, v, logw, u, s0 = _inputs(1, 4, 1, 16)
    calls = []
    monkeypatch.setattr(wkv6_module, "wkv6_recurrent_cpu", lambda *a: calls.append(1))
    with torch.no_grad():
        wkv6(r, k, v, logw, u, s0)
    assert calls == [] and backend.resolve("wkv6", None, r) == "torch"


@needs_kernel
@pytest.mark.parametrize("layers", [1, 4, 9])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("per_channel", [False, True])
def test_level_histogram_equals_tensor_operations(layers, dtype, per_channel):
    g = torch.Generator().manual_seed(layers)
    C, top = 24, 2**layers - 1
    x = (torch.randn(37, C, generator=g) * 2).to(dtype)
    x[0, :3] = torch.tensor([-0.0, 0.0, -1e-3]).to(dtype)
    unit = (torch.rand(C, generator=g) + 0.05) * 2.0 ** -layers if per_channel else torch.tensor([2.0 ** -layers * 0.3])
    u = x.float().abs() / unit  # as the encoder computes it
    q = u.clamp(max=float(top)).floor()
    q[1, 1] = float("nan")
    got = level_histogram(q, x, unit, layers)
    ok = ~q.isnan()
    code = (q[ok] + 2**layers * (x.float()[ok] < 0)).long()
    assert got[0] == torch.bincount(code, minlength=2 ** (layers + 1)).tolist()
    assert got[1] == int((u[ok] > top).sum()) and got[2] == 1
    assert level_histogram(q.double(), x, unit, layers) is None  # not a float32 level tensor


def _exact_product(x, w):
    """float64 product of the low-precision values, and the float32-summation error bound: n ulp(2^-24)
    of sum |x_i w_i| for n terms (any order of summation)."""
    exact = x.double() @ w.double().t()
    bound = x.shape[-1] * 2.0**-24 * (x.double().abs() @ w.double().abs().t())
    return exact, bound


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("O, I", [(1, 1), (7, 33), (64, 512), (300, 96), (129, 40), (5, 1000)])
def test_one_row_products_equal_a_float32_product_rounded_once(isa, dtype, O, I):
    ops = kernels.library()
    g = torch.Generator().manual_seed(O * I)
    x, w = torch.randn(I, generator=g).to(dtype), torch.randn(O, I, generator=g).to(dtype)
    exact, bound = _exact_product(x.unsqueeze(0), w)
    exact, bound = exact[0], bound[0]
    eps = torch.finfo(dtype).eps  # the last rounding, to the dtype: at most half an ulp (eps / 2 relative)
    for y in (ops.gemv(x, w), ops.gemv_t(x, w.t().contiguous())):
        assert y.dtype == dtype and y.shape == (O,)
        assert ((y.double() - exact).abs() <= eps / 2 * (exact.abs() + bound) + bound).all()
    # a batch of three (baddbmm's form), with c added before the one rounding
    xs, bs = torch.stack((x, -x, 2 * x)), torch.stack((w.t(), w.t().flip(0), w.t())).contiguous()
    c = torch.randn(3, O, generator=g).to(dtype)
    y3 = ops.gemv_t(xs, bs, c)
    exact3 = torch.baddbmm(c.double().unsqueeze(1), xs.double().unsqueeze(1), bs.double())[:, 0]
    bound3 = I * 2.0**-24 * (xs.double().abs().unsqueeze(1) @ bs.double().abs())[:, 0] + 2.0**-24 * c.double().abs()
    assert y3.dtype == dtype and y3.shape == (3, O)
    assert ((y3.double() - exact3).abs() <= eps / 2 * (exact3.abs() + bound3) + bound3).all()
    # no more than one ulp of the dtype from torch's own float32 product of the same values
    ref = (x.float() @ w.float().t()).to(dtype)
    assert ((ops.gemv(x, w).double() - ref.double()).abs() <= eps * ref.double().abs() + 2 * bound).all()


def test_one_row_products_refuse_what_they_do_not_take():
    ops = kernels.library()
    if ops is None:
        pytest.skip("no C++ compiler / ninja to build the kernel")
    x, w = torch.randn(8).bfloat16(), torch.randn(4, 8).bfloat16()
    with pytest.raises(RuntimeError, match="shapes"):
        ops.gemv(x[:5], w)
    with pytest.raises(RuntimeError, match="contiguous"):
        ops.gemv(x, w.t().contiguous().t())
    with pytest.raises(RuntimeError, match="dtype"):
        ops.gemv(x.double(), w.double())
    with pytest.raises(RuntimeError, match="shapes"):
        ops.gemv_t(x, w.t().contiguous(), torch.zeros(5))  # c of the wrong size


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("per_channel", [False, True])
def test_compiled_decode_is_the_general_path_bit_for_bit(isa, dtype, per_channel, monkeypatch):
    """``mhse_decode`` with T > 1 on the CPU runs the compiled pass: the same bits as its tensor
    operations (the general path), for rate and multi-layer codes, init_half, signed zeros,
    infinities, NaN, values at and next to every level boundary."""
    import spikelm.spiking.encoding as enc

    g = torch.Generator().manual_seed(7)
    C = 37  # not a multiple of 8: the AVX2 loop and its scalar tail
    for T, layers, n_int, init_half in [(3, 1, 1, False), (4, 1, 1, True), (7, 3, 1, False), (16, 4, 2, True),
                                        (5, 5, 1, True), (2, 2, 2, False)]:
        scale = (torch.rand(C, generator=g) + 0.05) if per_channel else torch.tensor(0.37)
        unit = scale * 2.0 ** (n_int - layers) / T  # one step of the decoded value
        k = torch.randint(0, 2**layers * T + 2, (4, C), generator=g).float()
        x = torch.cat([torch.randn(4, C, generator=g) * 3,
                       k * unit, torch.nextafter(k * unit, torch.tensor(1e9)), torch.nextafter(k * unit, -torch.tensor(1e9)),
                       (k + 0.5) * unit, -(k + 0.5) * unit])
        x[0, :5] = torch.tensor([0.0, -0.0, float("inf"), -float("inf"), float("nan")])
        x = x.to(dtype)
        got = enc.mhse_decode(x, scale, T, layers, n_int, init_half, backend="cpp")
        ref = enc.mhse_decode(x, scale, T, layers, n_int, init_half, backend="torch")
        bits = torch.int32 if dtype == torch.float32 else torch.int16
        nan = ref.isnan()
        assert torch.equal(got.isnan(), nan)
        assert torch.equal(got[~nan].view(bits), ref[~nan].view(bits)), (T, layers, n_int, init_half)


def test_the_kernels_build_where_a_compiler_and_ninja_are_present():
    """A compile error must fail here, not turn every kernel test into a skip."""
    import importlib.util
    import os
    import shutil

    if os.environ.get("SPIKELM_BACKEND", "auto") == "torch":
        pytest.skip("the kernels are switched off (SPIKELM_BACKEND=torch)")
    if not shutil.which("c++") or not (shutil.which("ninja") or importlib.util.find_spec("ninja")):
        pytest.skip("no C++ compiler or no ninja here")
    assert kernels.library() is not None, "the compiled CPU kernels failed to build (see the logged warning)"


# ---- the elementwise passes of a float32 prefill (Block._fused_forward), against torch's operations


def _shifted(x, shift):
    return torch.cat((shift.unsqueeze(1), x[:, :-1]), 1)


@pytest.mark.parametrize("G, B, T, C, with_lora", [(1, 1, 1, 8, False), (5, 2, 7, 20, True), (2, 1, 33, 64, False),
                                                   (5, 1, 16, 512, True)])
def test_token_lerp_is_the_modules_arithmetic(isa, G, B, T, C, with_lora):
    """out[g] = x + (shift(x) - x) * (maa[g] + lora[g]): the same float32 operations (torch's addcmul
    may fuse its multiply and add, so one rounding apart)."""
    g = torch.Generator().manual_seed(C + T)
    x, shift, maa = torch.randn(B, T, C, generator=g), torch.randn(B, C, generator=g), torch.randn(G, C, generator=g)
    lora = torch.randn(G, B, T, C, generator=g) if with_lora else None
    xx = _shifted(x, shift) - x
    ref = torch.stack([torch.addcmul(x, xx, maa[i] + lora[i] if with_lora else maa[i]) for i in range(G)])
    got = kernels.library().token_lerp(x, shift, maa, None if lora is None else lora.clone())
    assert got.shape == (G, B, T, C) and torch.allclose(got, ref, rtol=1e-6, atol=1e-6)


def test_exp_of_the_avx2_build_within_two_ulp(isa):
    """The decay pass takes its exp from a polynomial in the AVX2 build: over the float32 range,
    within 2 ulp of the exact exp; beyond it 0 or inf; NaN stays NaN; the floor clamps."""
    d = torch.cat((torch.linspace(-87.0, 88.0, 200003), torch.tensor([-1e4, -100.0, 0.0, -0.0, 89.0, float("nan")])))
    got = kernels.library().rwkv6_decay_(d.clone(), torch.zeros(d.numel()), -float("inf"))
    exact = -torch.exp(d.double())
    fin = exact.abs() < 3e38
    ulp = torch.finfo(torch.float32).eps * exact[fin].abs()
    assert ((got[fin].double() - exact[fin]).abs() <= 2 * ulp + 1e-37).all()
    assert got[-2] == -float("inf") and got[-1].isnan() and got[-6] == 0 and got[-4] == -1
    clamped = kernels.library().rwkv6_decay_(torch.tensor([5.0, -3.0, 3.0]), torch.tensor([0.0, 0.0, 2.0]), -60.0)
    assert clamped[0] == -60 and clamped[2] == -60 and abs(clamped[1] + torch.exp(torch.tensor(-3.0))) < 1e-8


def test_gates_equal_torch(isa):
    """silu_gate_: y * silu(g); sigmoid_gate_: sigmoid(r) * v; relu_square_: relu(k)^2, NaN kept."""
    ops, g = kernels.library(), torch.Generator().manual_seed(5)
    k = torch.cat((torch.randn(3, 1001, generator=g), torch.tensor([[float("nan"), 0.0, -0.0]] * 3)), 1)
    ref = torch.relu(k).square()
    got = ops.relu_square_(k.clone())
    assert torch.equal(got.isnan(), ref.isnan()) and torch.equal(got.nan_to_num(), ref.nan_to_num())
    a, b = torch.randn(2, 37, 129, generator=g) * 5, torch.randn(2, 37, 129, generator=g) * 5
    for got, ref in ((ops.silu_gate_(a, b.clone()), a * torch.nn.functional.silu(b)),
                     (ops.sigmoid_gate_(a.clone(), b), torch.sigmoid(a) * b)):
        assert torch.allclose(got, ref, rtol=1e-6, atol=1e-6 * ref.abs().max().item())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_passes_in_low_precision_round_float32_arithmetic_once(isa, dtype):
    """In bf16 and fp16 the passes widen to float32, do the float32 arithmetic and round each
    output once to nearest even: token_lerp and relu_square_ exactly that (against torch's float32
    operations rounded once); the gates within one rounding of it (their exp is a polynomial).
    Sizes leave a tail after the 8-wide loop; NaN stays NaN."""
    ops, g = kernels.library(), torch.Generator().manual_seed(7)
    B, T, C, G = 2, 5, 43, 5
    x, shift, maa = (torch.randn(*s, generator=g).to(dtype) for s in ((B, T, C), (B, C), (G, C)))
    lora = torch.randn(G, B, T, C, generator=g).to(dtype)
    xf, mf, lf = x.float(), maa.float(), lora.float()
    xx = _shifted(xf, shift.float()) - xf
    ref = torch.stack([xf + xx * (mf[i] + lf[i]) for i in range(G)]).to(dtype)
    got = ops.token_lerp(x, shift, maa, lora.clone())
    assert got.dtype == dtype and torch.equal(got, ref)
    assert torch.equal(ops.token_lerp(x, shift, maa[:1]), (xf + xx * mf[0]).to(dtype).unsqueeze(0))

    k = torch.cat((torch.randn(3, 1001, generator=g) * 4, torch.tensor([[float("nan"), 0.0, -0.0]] * 3)), 1).to(dtype)
    ref = torch.relu(k.float()).square().to(dtype)
    got = ops.relu_square_(k.clone())
    assert torch.equal(got.isnan(), ref.isnan()) and torch.equal(got.nan_to_num(), ref.nan_to_num())

    y, a, b = (torch.randn(2, 37, 129, generator=g) * 3 for _ in range(3))
    a, b = a.to(dtype), b.to(dtype)
    eps = torch.finfo(dtype).eps  # one rounding of the output, relative
    for got, ref in ((ops.silu_gate_(y, a.clone()), y * torch.nn.functional.silu(a.float())),
                     (ops.sigmoid_gate_(a.clone(), b), torch.sigmoid(a.float()) * b.float())):
        assert got.dtype == dtype
        assert ((got.float() - ref).abs() <= eps * ref.abs() + 1e-6 * ref.abs().max()).all()
    with pytest.raises(RuntimeError, match="token_lerp"):
        ops.token_lerp(x, shift.float(), maa)
