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


def test_exp_of_the_avx2_build_within_two_ulp(isa):
    """The WKV kernel takes its decays exp(logw) from a polynomial in the AVX2 build: over the
    float32 range, within 2 ulp of the exact exp; below it 0; NaN stays NaN. Read back through the
    recurrence itself: from the state diag(1) with k = v = 0 and r = 1, the second token's output
    is the first token's decays."""
    special = torch.tensor([-1e4, -100.0, 0.0, -0.0] + [-1.0] * 60)
    lw = torch.cat((torch.linspace(-87.0, 0.0, 64 * 500), special, torch.full((64,), float("nan"))))  # NaN: a head of its own
    H = lw.numel() // 64
    logw = torch.zeros(1, 2, H, 64)
    logw[0, 0] = lw.view(H, 64)
    r = torch.ones(1, 2, H, 64)
    k = v = torch.zeros(1, 2, H, 64)
    state = torch.eye(64).expand(1, H, 64, 64).contiguous()
    y, _ = wkv6_recurrent_cpu(r, k, v, logw, torch.zeros(H, 64), state)
    got, exact = y[0, 1].reshape(-1)[:-64], torch.exp(lw[:-64].double())
    assert ((got.double() - exact).abs() <= 2 * torch.finfo(torch.float32).eps * exact + 1e-37).all()
    assert got[-64] == 0 and got[-62] == 1 and y[0, 1, -1].isnan().all()


@needs_kernel
def test_every_op_has_a_fake_implementation_and_its_schema():
    """torch.library.opcheck on each op: its fake (meta) implementation gives the real output's
    shapes and dtypes, and the schema (what it writes, what it returns) is what the kernel does;
    so torch.compile traces the ops without running them."""
    lib = kernels.library()
    r, k, v, logw, u, s0 = _inputs(2, 5, 2, 32)
    x, w = torch.randn(48).bfloat16(), torch.randn(24, 48).bfloat16()
    q = torch.randint(0, 16, (6, 8)).float()
    samples = {
        "wkv6_forward": (r, k, v, logw, u, s0),
        "gemv": (x, w),
        "gemv_t": (x.view(3, 16), torch.randn(3, 16, 24).bfloat16(), torch.randn(3, 24).bfloat16()),
        "level_histogram": (q, torch.randn(6, 8), torch.tensor([0.1]), 4),
    }
    for name, args in samples.items():
        torch.library.opcheck(getattr(lib, name).default, args)
    from spikelm.testing import make_rwkv6
    from spikelm.ops import rwkv6 as ops6

    blk = make_rwkv6(n_layer=1, n_embd=64, head_size=16).blocks[0]
    params = dict(blk.named_parameters())
    p = [params[n] if n in params else torch.empty(0) for n in ops6.block_step_params()]
    st = (torch.randn(2, 64), torch.randn(2, 4, 16, 16), torch.randn(2, 64))
    with torch.no_grad():
        torch.library.opcheck(lib.rwkv6_block_step.default, (torch.randn(2, 64), *st[:2], st[2], p, 1e-5, 64e-5))


@needs_kernel
def test_every_op_checks_its_arguments():
    """Wrong shapes, dtypes, devices or layouts give an error naming the op and the argument,
    never a crash (each of these once read or wrote outside its tensors)."""
    lib = kernels.library()
    r, k, v, logw, u, s0 = _inputs(1, 3, 2, 16)
    bad_wkv = [((r[:, :2], k, v, logw, u, s0), "one shape"), ((r, k, v, logw, u[:1], s0), "u must be"),
               ((r, k, v, logw, u, s0[:, :1]), "s must be"), ((r.double(), k, v, logw, u, s0), "dtype"),
               ((r.transpose(1, 2), k, v, logw, u, s0), "contiguous"), ((r[0], k, v, logw, u, s0), "r must be")]
    for args, match in bad_wkv:
        with pytest.raises(RuntimeError, match=match):
            lib.wkv6_forward(*args)
    q = torch.randint(0, 16, (6, 8)).float()
    for args, match in [((q, torch.randn(6, 7), torch.tensor([0.1]), 4), "as many values"),
                        ((q, torch.randn(6, 8), torch.ones(3), 4), "unit must hold"),
                        ((q.int(), torch.randn(6, 8), torch.tensor([0.1]), 4), "dtype"),
                        ((q, torch.randn(6, 8), torch.tensor([0.1]), 40), "layers"),
                        ((q + 16, torch.randn(6, 8), torch.tensor([0.1]), 4), "integer levels"),
                        ((-q - 1, torch.randn(6, 8), torch.tensor([0.1]), 4), "integer levels")]:
        with pytest.raises(RuntimeError, match=match):
            lib.level_histogram(*args)
    from spikelm.testing import make_rwkv6
    from spikelm.ops import rwkv6 as ops6

    blk = make_rwkv6(n_layer=1, n_embd=64, head_size=16).blocks[0]
    params = dict(blk.named_parameters())
    names = ops6.block_step_params()
    p = [params[n].detach() if n in params else torch.empty(0) for n in names]
    x, st = torch.randn(2, 64), (torch.randn(2, 64), torch.randn(2, 4, 16, 16), torch.randn(2, 64))
    lib.rwkv6_block_step(x, *st, p, 1e-5, 64e-5)  # the right arguments pass
    key = names.index("att.key.weight")
    for change, match in [(lambda a: a.__setitem__(4, a[4][:-1]), "parameters"),
                          (lambda a: a[4].__setitem__(key, a[4][key][:, :32].contiguous()), "att.key.weight has shape"),
                          (lambda a: a[4].__setitem__(key, a[4][key].bfloat16()), "one dtype"),
                          (lambda a: a[4].__setitem__(names.index("ln1.weight"), torch.ones(3)), "ln1.weight has 3"),
                          (lambda a: a.__setitem__(1, a[1][:1]), "shift"),
                          (lambda a: a.__setitem__(2, a[2][:, :, :8]), "wkv must be"),
                          (lambda a: a.__setitem__(2, a[2].double()), "dtype")]:
        args = [x, *st, list(p)]
        change(args)
        with pytest.raises(RuntimeError, match=match):
            lib.rwkv6_block_step(*args, 1e-5, 64e-5)
