"""Cross-entropy in fp32 over bf16/fp16 logits without an fp32 copy of the whole logits tensor.

The training loss was ``F.cross_entropy(logits.float().flatten(0, 1), y)``: for a micro-batch of
32 x 1024 tokens and a 65,536-token vocabulary the fp32 copy alone is 8.6 GB, and autograd keeps
the fp32 log-softmax of the same size for the backward pass. :func:`cross_entropy_fp32` computes
the same fp32 loss a block of rows at a time, and its backward pass recomputes each block's
softmax in fp32 (``softmax - onehot``, times the upstream gradient) and writes it into a gradient
of the logits' dtype, which the backward pass needs anyway. Extra memory: about two fp32 blocks
of ``chunk_rows x V`` (the upcast block and its softmax), whatever the batch.

fp32 logits (CPU training) go straight to ``F.cross_entropy``: there ``.float()`` made no copy,
and the values stay bit for bit what they were. The naive twin is ``F.cross_entropy(logits.float(),
target)``, which the tests compare with (values and gradients).

:func:`kl_distill_fp32` is the distillation loss of spiking-aware fine-tuning (the KL divergence
from a teacher's softened distribution to the student's) in the same way: fp32 a block of rows at
a time, the backward pass recomputing both softmaxes. Its naive twin is ``T**2 *
F.kl_div(log_softmax(s / T), log_softmax(t / T), log_target=True, reduction="batchmean")``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["cross_entropy_fp32", "kl_distill_fp32", "CHUNK_ELEMENTS"]

CHUNK_ELEMENTS = 1 << 24  # fp32 elements per block of rows: 64 MB, a few blocks per micro-batch


def cross_entropy_fp32(logits: Tensor, target: Tensor, reduction: str = "mean", chunk_rows: int | None = None) -> Tensor:
    """``F.cross_entropy(logits.float(), target, reduction=reduction)`` for 2-D ``logits`` (N, V)
    and class indices ``target`` (N,), as a float32 scalar, computed ``chunk_rows`` rows at a time
    when the logits are bf16/fp16 (default: ``CHUNK_ELEMENTS // V`` rows). ``reduction``: "mean"
    or "sum"."""
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    if logits.dtype == torch.float32 or logits.dtype == torch.float64:
        return F.cross_entropy(logits, target, reduction=reduction)
    rows = chunk_rows if chunk_rows is not None else max(1, CHUNK_ELEMENTS // max(1, logits.shape[-1]))
    total = _ChunkedCrossEntropy.apply(logits, target, int(rows))
    return total / target.numel() if reduction == "mean" else total


class _ChunkedCrossEntropy(torch.autograd.Function):
    """Sum of the fp32 cross-entropies of (N, V) logits, one block of rows at a time; backward
    recomputes each block's softmax (d loss / d logits = softmax - onehot)."""

    @staticmethod
    def forward(ctx, logits: Tensor, target: Tensor, rows: int) -> Tensor:  # type: ignore[override]
        total = torch.zeros((), dtype=torch.float32, device=logits.device)
        for i in range(0, logits.shape[0], rows):
            total += F.cross_entropy(logits[i : i + rows].float(), target[i : i + rows], reduction="sum")
        ctx.save_for_backward(logits, target)
        ctx.rows = rows
        return total

    @staticmethod
    def backward(ctx, grad_total: Tensor) -> tuple[Tensor, None, None]:  # type: ignore[override]
        logits, target = ctx.saved_tensors
        rows = ctx.rows
        grad = torch.empty_like(logits)
        g = grad_total.float()
        for i in range(0, logits.shape[0], rows):
            p = torch.softmax(logits[i : i + rows].float(), dim=-1)
            t = target[i : i + rows, None]
            p.scatter_add_(1, t, torch.full(t.shape, -1.0, device=p.device))  # softmax - onehot
            grad[i : i + rows] = p.mul_(g)
        return grad, None, None


def kl_distill_fp32(student: Tensor, teacher: Tensor, temperature: float = 1.0, chunk_rows: int | None = None) -> Tensor:
    """Knowledge distillation (Hinton et al. 2015): ``T**2`` times the mean over rows of
    ``KL(softmax(teacher / T) || softmax(student / T))``, for (N, V) logits, as a float32 scalar.

    The ``T**2`` keeps the gradient's size independent of the temperature. Only ``student`` takes
    a gradient (``teacher`` is detached). Computed in fp32 ``chunk_rows`` rows at a time (default
    ``CHUNK_ELEMENTS // V``), so bf16 logits never get a whole fp32 copy; the backward pass
    recomputes ``(T / N) (softmax(student / T) - softmax(teacher / T))`` block by block.
    """
    if student.shape != teacher.shape or student.dim() != 2:
        raise ValueError(f"student and teacher logits must both be (N, V); got {tuple(student.shape)} and {tuple(teacher.shape)}")
    if not temperature > 0:
        raise ValueError(f"the distillation temperature must be > 0, got {temperature!r}")
    rows = chunk_rows if chunk_rows is not None else max(1, CHUNK_ELEMENTS // max(1, student.shape[-1]))
    return _ChunkedDistill.apply(student, teacher.detach(), float(temperature), int(rows))


class _ChunkedDistill(torch.autograd.Function):
    @staticmethod
    def forward(ctx, student: Tensor, teacher: Tensor, tau: float, rows: int) -> Tensor:  # type: ignore[override]
        total = torch.zeros((), dtype=torch.float32, device=student.device)
        for i in range(0, student.shape[0], rows):
            log_ps = torch.log_softmax(student[i : i + rows].float() / tau, dim=-1)
            log_pt = torch.log_softmax(teacher[i : i + rows].float() / tau, dim=-1)
            total += (log_pt.exp() * (log_pt - log_ps)).sum()
        ctx.save_for_backward(student, teacher)
        ctx.tau, ctx.rows = tau, rows
        return total * (tau * tau / max(1, student.shape[0]))

    @staticmethod
    def backward(ctx, grad_total: Tensor) -> tuple[Tensor, None, None, None]:  # type: ignore[override]
        student, teacher = ctx.saved_tensors
        tau, rows = ctx.tau, ctx.rows
        grad = torch.empty_like(student)
        g = grad_total.float() * (tau / max(1, student.shape[0]))
        for i in range(0, student.shape[0], rows):
            p = torch.softmax(student[i : i + rows].float() / tau, dim=-1)
            p -= torch.softmax(teacher[i : i + rows].float() / tau, dim=-1)
            grad[i : i + rows] = p.mul_(g)
        return grad, None, None, None
