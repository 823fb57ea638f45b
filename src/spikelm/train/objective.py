"""What a run optimises (:class:`Objective`), its optimizer (AdamW over :func:`param_groups`) and its
learning-rate schedule (:func:`lr_at`: over the steps, or over a time budget)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..runargs import RunArgs
from ..ops.cross_entropy import cross_entropy_fp32

__all__ = ["Objective", "param_groups", "make_optimizer", "lr_at", "schedule_description"]


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two AdamW groups: decayed weight matrices, and everything else (see the module docstring)."""
    embeddings = {id(p) for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters()}
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        leaf = name.rsplit(".", 1)[-1]
        if sum(n != 1 for n in p.shape) < 2 or leaf.startswith("time_") or id(p) in embeddings:  # squeeze()'s dims, by shape (a sharded DTensor cannot squeeze)
            no_decay.append(p)
        else:
            decay.append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def make_optimizer(model: nn.Module, args: RunArgs, groups: list[dict[str, Any]] | None = None) -> torch.optim.AdamW:
    """AdamW over ``groups`` (default :func:`param_groups`). A group may carry ``lr_scale``: its
    learning rate is the schedule's times that factor at every step; with ``lr_relative`` also
    times its (single) parameter's current mean magnitude, so each step moves it by about the same
    fraction of itself (a multiplicative step, as on its logarithm)."""
    groups = param_groups(model, args.weight_decay) if groups is None else groups
    return torch.optim.AdamW(groups, lr=args.lr, betas=args.betas, eps=args.eps)


class Objective:
    """What a run optimises, and what it hands over at the end. This one is training from
    scratch: the next-token cross-entropy of ``model``, every trainable parameter in
    :func:`param_groups`. Spiking-aware fine-tuning (:mod:`.finetune`) overrides it: distillation
    from a teacher, learnable spike scales, a spike-rate penalty, a merged model at the end.

    Every process calls the same methods on its own copy.
    """

    log_fields: tuple[str, ...] = ()  # extra columns of log.csv (keys of :meth:`row_extra`)

    def param_groups(self, model: nn.Module, args: RunArgs) -> list[dict[str, Any]]:
        return param_groups(model, args.weight_decay)

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The loss of one micro-batch (a float32 scalar; ``model`` may be DDP-wrapped)."""
        logits, _ = model(x)
        # fp32 loss without an fp32 copy of the whole (bf16) logits: ops/cross_entropy.py
        return cross_entropy_fp32(logits.flatten(0, 1), y.flatten())

    def start(self, run: Any) -> None:
        """Called once before the first step, with the run (its validation is ``run.validate``)."""

    def after_step(self, model: nn.Module) -> None:
        """Called after every optimizer step, on the raw (unwrapped) model."""

    def row_extra(self, val_loss: float | None) -> dict[str, Any]:
        """Extra fields of a log row (and of log.csv, for the names in ``log_fields``)."""
        return {}

    def final_model(self, model: nn.Module) -> nn.Module:
        """The model ``out_dir/final`` holds (the run is over: it may change ``model`` in place)."""
        return model

    def final_extra(self) -> dict[str, Any] | None:
        """Extra keys of ``final/config.json``."""
        return None

    def summary(self) -> dict[str, Any]:
        """Extra keys of ``summary.json``."""
        return {}


def lr_at(step: int, args: RunArgs, total_steps: int | None = None, time_fraction: float | None = None) -> float:
    """Learning rate of the optimizer step with 0-based index ``step``.

    Linear warm-up from ``lr / warmup_steps`` to ``lr`` over the first ``warmup_steps`` steps,
    then a cosine from ``lr`` down to ``min_lr``, reached at the last step.

    With a time budget (``max_minutes``), ``time_fraction`` is the part of the budget spent when
    this step ends (1.0: it is the last). The cosine then follows whichever end comes first, the
    steps or the budget (the larger of the two progress fractions), so the rate reaches ``min_lr``
    at the end of the run however many steps fit in it; the warm-up still counts steps.
    """
    total = args.total_steps if total_steps is None else total_steps
    span = max(1, total - args.warmup_steps - 1)
    progress = min(1.0, max(0.0, (step - args.warmup_steps) / span))
    if time_fraction is not None:
        progress = max(progress, min(1.0, max(0.0, time_fraction)))
    cosine = args.min_lr + 0.5 * (args.lr - args.min_lr) * (1.0 + math.cos(math.pi * progress))
    if step < args.warmup_steps:  # under a budget, never above the cosine (a budget may end inside the warm-up)
        warm = args.lr * (step + 1) / args.warmup_steps
        return warm if time_fraction is None else min(warm, cosine)
    return cosine


def schedule_description(args: RunArgs, total_steps: int) -> str:
    """What the run's learning rate follows, for the log and summary.json."""
    warm = f"linear warm-up over {args.warmup_steps} steps, then " if args.warmup_steps else ""
    if args.max_minutes > 0:
        return (f"{warm}cosine from {args.lr:g} to min_lr {args.min_lr:g} over the time budget of {args.max_minutes:g} "
                f"minutes (or {total_steps} steps, whichever ends first)")
    return f"{warm}cosine from {args.lr:g} to min_lr {args.min_lr:g} at step {total_steps}"
