"""cross_entropy_fp32 against its naive twin F.cross_entropy(logits.float(), y): the same loss and
gradient, and never an fp32 tensor the size of the whole logits."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from spikelm.ops.cross_entropy import cross_entropy_fp32


class LargestFloat32(TorchDispatchMode):
    """Records the largest fp32 tensor any op produces."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and t.dtype == torch.float32:
                self.largest = max(self.largest, t.numel())
        return out


def _logits(N=96, V=301, dtype=torch.bfloat16, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(N, V, generator=g) * 3).to(dtype).requires_grad_()
    return x, torch.randint(0, V, (N,), generator=g)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_chunked_loss_and_gradient_equal_the_fp32_copy(dtype, reduction):
    x, y = _logits(dtype=dtype)
    ref = F.cross_entropy(x.float(), y, reduction=reduction)
    (g_ref,) = torch.autograd.grad(ref * 0.37, x)
    got = cross_entropy_fp32(x, y, reduction=reduction, chunk_rows=7)  # 7 does not divide 96: a ragged last block
    (g_got,) = torch.autograd.grad(got * 0.37, x)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, ref, rtol=1e-6, atol=0)  # only the order of the fp32 sum differs
    assert g_got.dtype == dtype
    # the fp32 gradient rounded to the logits' dtype either way: at most one unit in the last place apart
    fi = torch.finfo(dtype)
    ulp = fi.eps * g_ref.float().abs() + fi.tiny * fi.eps  # (the second term: one step among subnormals)
    assert ((g_got.float() - g_ref.float()).abs() <= ulp).all()
    assert (g_got != g_ref).float().mean() < 0.01


def test_fp32_logits_take_cross_entropy_as_it_is():
    x, y = _logits(dtype=torch.float32)
    ref = F.cross_entropy(x, y)
    got = cross_entropy_fp32(x, y, chunk_rows=5)
    assert torch.equal(got, ref)
    assert torch.equal(torch.autograd.grad(got, x)[0], torch.autograd.grad(ref, x)[0])


def test_peak_fp32_memory_is_one_block():
    N, V, rows = 96, 301, 8
    x, y = _logits(N, V)
    with LargestFloat32() as naive:
        F.cross_entropy(x.float(), y).backward()
    with LargestFloat32() as chunked:
        cross_entropy_fp32(x, y, chunk_rows=rows).backward()
    assert naive.largest == N * V  # the whole fp32 copy (and its log-softmax)
    assert chunked.largest == rows * V


def test_bad_reduction():
    x, y = _logits()
    with pytest.raises(ValueError, match="reduction"):
        cross_entropy_fp32(x, y, reduction="none")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("tau", [1.0, 2.5])
def test_distillation_loss_and_gradient_equal_the_naive_kl(dtype, tau):
    from spikelm.ops.cross_entropy import kl_distill_fp32

    s, _ = _logits(dtype=dtype, seed=1)
    t, _ = _logits(dtype=dtype, seed=2)
    ref = tau**2 * F.kl_div(torch.log_softmax(s.float() / tau, -1), torch.log_softmax(t.float() / tau, -1),
                            log_target=True, reduction="batchmean")
    (g_ref,) = torch.autograd.grad(ref * 0.37, s)
    with LargestFloat32() as mode:
        got = kl_distill_fp32(s, t, tau, chunk_rows=10)
        (g,) = torch.autograd.grad(got * 0.37, s)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
    tol = dict(rtol=1e-5, atol=1e-7) if dtype == torch.float32 else dict(rtol=1.6e-2, atol=1e-5)
    torch.testing.assert_close(g.float(), g_ref.float(), **tol)
    assert g.dtype == dtype
    if dtype != torch.float32:
        assert mode.largest < s.numel()  # never an fp32 copy of the whole logits
    same = kl_distill_fp32(s, s.detach(), tau)
    assert abs(float(same)) < 1e-6  # a student equal to its teacher has no loss
