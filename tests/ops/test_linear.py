"""spikelm.ops.linear against its naive twins (F.linear, @, torch.baddbmm)."""

import pytest
import torch
import torch.nn.functional as F

from spikelm.ops import kernels
from spikelm.ops import linear as lin


@pytest.fixture(params=[False, True], ids=["torch-path", "fp32-path"])
def emulated(request, monkeypatch):
    """Run each test both ways: as on a CPU with native bf16 GEMMs and as on one without."""
    monkeypatch.setattr(lin, "_native", {torch.bfloat16: not request.param, torch.float16: not request.param})
    return request.param


def test_fp32_is_torch_bit_for_bit(emulated):
    g = torch.Generator().manual_seed(0)
    x, w, b = torch.randn(3, 5, 16, generator=g), torch.randn(8, 16, generator=g), torch.randn(8, generator=g)
    assert torch.equal(lin.linear(x, w, b), F.linear(x, w, b))
    assert torch.equal(lin.matmul(x, w.t()), x @ w.t())
    c, a, m = torch.randn(4, 1, 8, generator=g), torch.randn(4, 6, 16, generator=g), torch.randn(4, 16, 8, generator=g)
    assert torch.equal(lin.baddbmm(c, a, m), torch.baddbmm(c, a, m))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_matches_a_float32_product_rounded_once(emulated, dtype):
    g = torch.Generator().manual_seed(1)
    x, w = torch.randn(2, 7, 64, generator=g).to(dtype), torch.randn(32, 64, generator=g).to(dtype)
    exact = F.linear(x.double(), w.double())  # the exact product of the low-precision values
    y = lin.linear(x, w)
    assert y.dtype == dtype and y.shape == (2, 7, 32)
    # one rounding of the fp32-accumulated product: within half an ulp of the dtype plus fp32 noise
    eps = torch.finfo(dtype).eps
    assert ((y.double() - exact).abs() <= eps * exact.abs() + 1e-5).all()
    if emulated:  # exactly the fp32 product of the same values, rounded once
        assert torch.equal(y, F.linear(x.float(), w.float()).to(dtype))
    ym = lin.matmul(x, w.t())
    assert torch.equal(ym, y) if emulated else ((ym.double() - exact).abs() <= eps * exact.abs() + 1e-5).all()
    c = torch.randn(2, 1, 32, generator=g).to(dtype)
    yb = lin.baddbmm(c, x, w.t().expand(2, 64, 32))
    ref = torch.baddbmm(c.double(), x.double(), w.t().double().expand(2, 64, 32))
    assert ((yb.double() - ref).abs() <= 2 * eps * ref.abs() + 1e-5).all()


def test_single_rows_keep_the_native_path(monkeypatch):
    """A matrix-vector product (decoding) is memory-bound: it stays in bf16 even where GEMMs are emulated."""
    monkeypatch.setattr(lin, "_native", {torch.bfloat16: False, torch.float16: False})
    assert not lin.emulated_low_precision(torch.zeros(1, 1, 8, dtype=torch.bfloat16))
    assert lin.emulated_low_precision(torch.zeros(1, 2, 8, dtype=torch.bfloat16))
    assert not lin.emulated_low_precision(torch.zeros(1, 2, 8))


def test_large_weights_go_in_blocks_of_rows_with_the_same_result(monkeypatch):
    """A head-sized weight is cast to float32 a block of rows at a time: the same values as one product."""
    monkeypatch.setattr(lin, "_native", {torch.bfloat16: False, torch.float16: False})
    monkeypatch.setattr(lin, "_BLOCK_FLOATS", 5 * 16)  # blocks of 5 rows of 16 inputs
    g = torch.Generator().manual_seed(2)
    x, w, b = (torch.randn(3, 4, 16, generator=g).bfloat16(), torch.randn(23, 16, generator=g).bfloat16(),
               torch.randn(23, generator=g).bfloat16())
    largest = []
    real_linear = F.linear
    monkeypatch.setattr(lin.F, "linear", lambda a, ww, bb=None: largest.append(ww.shape[0]) or real_linear(a, ww, bb))
    y = lin.linear(x, w, b)
    assert max(largest) == 5 and y.dtype == torch.bfloat16
    assert torch.equal(y, real_linear(x.float(), w.float(), b.float()).to(torch.bfloat16))
    m = lin.Linear(16, 23)
    m.weight.data, m.bias.data = w, b
    assert isinstance(m, torch.nn.Linear) and torch.equal(m(x), y)


needs_kernel = pytest.mark.skipif(kernels.library() is None, reason="no C++ compiler / ninja to build the kernel")


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_single_rows_take_the_compiled_product(monkeypatch, dtype):
    """Decoding: one row goes to the compiled product (both memory orders, and baddbmm's batch of
    one-row products), on a CPU with native bf16 GEMMs too; with a gradient wanted, a bias or a
    strided weight, torch's own."""
    calls = []

    def counting(name):
        real = kernels.op(name)
        return lambda *a: calls.append(name) or real(*a)

    monkeypatch.setattr(lin, "cpp_op", counting)
    monkeypatch.setattr(lin, "_native", {torch.bfloat16: False, torch.float16: False})
    g = torch.Generator().manual_seed(3)
    x, w, b = (torch.randn(1, 1, 48, generator=g).to(dtype), torch.randn(24, 48, generator=g).to(dtype),
               torch.randn(24, generator=g).to(dtype))
    exact = F.linear(x.double(), w.double())
    eps = torch.finfo(dtype).eps
    c, a, m = (torch.randn(5, 1, 24, generator=g).to(dtype), torch.randn(5, 1, 48, generator=g).to(dtype),
               torch.randn(5, 48, 24, generator=g).to(dtype))
    exact_b = torch.baddbmm(c.double(), a.double(), m.double())
    with torch.no_grad():
        y = lin.linear(x, w)
        ym = lin.matmul(x, w.t().contiguous())
        yb = lin.baddbmm(c, a, m)
    assert calls == ["gemv", "gemv_t", "gemv_t"]
    assert y.shape == ym.shape == (1, 1, 24) and yb.shape == (5, 1, 24) and y.dtype == ym.dtype == yb.dtype == dtype
    for got, ref in ((y, exact), (ym, exact), (yb, exact_b)):
        assert ((got.double() - ref).abs() <= eps * ref.abs() + 1e-4).all()
    calls.clear()
    lin.linear(x, w, b)  # a bias
    lin.linear(x, w.t().contiguous().t())  # a strided weight
    lin.baddbmm(c, a, m.transpose(1, 2).contiguous().transpose(1, 2))  # a strided batch of matrices
    xg = x.clone().requires_grad_()
    lin.linear(xg, w).sum().backward()  # a gradient wanted: torch's product, which has one
    assert xg.grad is not None and calls == []
    monkeypatch.setattr(lin, "_native", {torch.bfloat16: True, torch.float16: True})  # native GEMMs: one row still compiled
    with torch.no_grad():
        lin.linear(x, w)
    assert calls == ["gemv"]
