"""The training loop: a language model from scratch (``spikelm train CONFIG.yaml [--key value ...]``).

One loop serves a laptop CPU and a multi-GPU node:

* **Optimizer**: AdamW; weight decay only on the weight matrices of linear layers. No decay on
  1-D parameters (LayerNorm/GroupNorm gains and biases), on ``time_*`` parameters (token-shift
  mixes, decays, bonus, their LoRA matrices: they set *time scales*, and pulling them toward zero
  would silently change how far back the model remembers) and on embeddings (a row is updated
  only when its token occurs, while decay shrinks every row at every step, so rare tokens would
  be pulled to zero).
* **Schedule**: linear warm-up over ``warmup_steps`` to ``lr``, then cosine decay to ``min_lr``
  at the last step.
* **Batches**: ``batch_size`` is the *global* batch. Each process of a ``torchrun`` launch takes
  its rows of it (:class:`spikelm.data.sampler.BatchSampler`), splits them into ``grad_accum``
  micro-batches, and DDP averages the gradients; the logged loss is the mean over the global
  batch (averaged across processes), so it does not depend on the number of processes.
* **Precision**: autocast in bf16 (or fp16 with a gradient scaler) on GPUs, fp32 on CPU; the
  cross-entropy is always computed in fp32.
* **Checkpoints** (:mod:`.checkpointing`): every ``save_every`` steps, atomically. ``--resume`` continues bit for bit:
  the batch at step k depends only on (seed, k), and the weights and optimizer state are restored
  exactly.
* **Divergence**: a non-finite loss (or gradient norm) stops the run with an error naming the step,
  before the weights are updated; the last checkpoint stays the last good one.

Only rank 0 writes files, logs and reports progress (:mod:`.distributed` sets the processes up).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoints import build_model, save
from ..config import ConfigError, TrainArgs
from ..data.build import prepare
from ..data.sampler import BatchSampler
from ..errors import SpikelmError
from ..io import atomic_write_json, atomic_write_text
from ..progress import ProgressFn, report
from .checkpointing import (
    CHECKPOINTS,
    LATEST,
    TrainingDiverged,
    check_args_match,
    diverged_message,
    latest_checkpoint,
    remove_stale_temps,
    restore,
    save_checkpoint,
)
from ..devices import resolve_device
from .distributed import Dist, autocast, resolve_precision, setup_distributed

log = logging.getLogger("spikelm.train")

__all__ = ["TrainResult", "train", "param_groups", "make_optimizer", "lr_at"]

LOG_FIELDS = ("step", "tokens", "loss", "val_loss", "lr", "tokens_per_s", "elapsed_s")


@dataclass
class TrainResult:
    """What a finished run produced. Losses are mean cross-entropies in nats per token."""

    final_path: Path | None  # out_dir/final (spikelm folder), None on ranks other than 0
    val_loss: float | None  # on the fixed validation windows, after the last step
    history: list[dict[str, Any]] = field(default_factory=list)  # the rows of log.jsonl
    steps: int = 0
    tokens: int = 0
    elapsed_s: float = 0.0
    stopped_by: str = "max_steps"  # or "max_minutes"
    checkpoint: Path | None = None  # the newest training checkpoint, if any was written

    @property
    def val_bits(self) -> float | None:
        """Validation loss in bits per token."""
        return None if self.val_loss is None else self.val_loss / math.log(2)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two AdamW groups: decayed weight matrices, and everything else (see the module docstring)."""
    embeddings = {id(p) for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters()}
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        leaf = name.rsplit(".", 1)[-1]
        if p.squeeze().dim() < 2 or leaf.startswith("time_") or id(p) in embeddings:
            no_decay.append(p)
        else:
            decay.append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def make_optimizer(model: nn.Module, args: TrainArgs) -> torch.optim.AdamW:
    return torch.optim.AdamW(param_groups(model, args.weight_decay), lr=args.lr, betas=args.betas, eps=args.eps)


def lr_at(step: int, args: TrainArgs, total_steps: int | None = None) -> float:
    """Learning rate of the optimizer step with 0-based index ``step``.

    Linear warm-up from ``lr / warmup_steps`` to ``lr`` over the first ``warmup_steps`` steps,
    then a cosine from ``lr`` down to ``min_lr``, reached at the last step.
    """
    total = args.total_steps if total_steps is None else total_steps
    if step < args.warmup_steps:
        return args.lr * (step + 1) / args.warmup_steps
    span = max(1, total - args.warmup_steps - 1)
    progress = min(1.0, (step - args.warmup_steps) / span)
    return args.min_lr + 0.5 * (args.lr - args.min_lr) * (1.0 + math.cos(math.pi * progress))


# ---------------------------------------------------------------------------- model and data
def _model_config(args: TrainArgs, vocab_size: int) -> dict[str, Any]:
    """The model config dict, with ``vocab_size`` taken from the tokenizer when not given."""
    cfg = dict(args.model)
    if "vocab_size" not in cfg:
        cfg["vocab_size"] = vocab_size
    elif int(cfg["vocab_size"]) < vocab_size:
        raise ConfigError(f"model.vocab_size: {cfg['vocab_size']} is smaller than the {args.tokenizer!r} tokenizer's {vocab_size}")
    return cfg


def _build_model(args: TrainArgs, vocab_size: int) -> nn.Module:
    try:
        model = build_model(_model_config(args, vocab_size))
    except (TypeError, ValueError) as e:  # a builder that validates its own config dict
        if isinstance(e, ConfigError):
            raise ConfigError(f"model.{e}") from None
        raise ConfigError(f"model: {e}") from None
    if hasattr(model, "init_weights"):
        model.init_weights(args.seed)
    return model


def _validation_starts(n_tokens: int, ctx_len: int, n_windows: int) -> np.ndarray:
    """Evenly spaced window starts over the validation split: a fixed set, the same every eval."""
    last = n_tokens - ctx_len - 1
    if last < 0:
        raise SpikelmError(f"the validation split has {n_tokens:,} tokens, too few for ctx_len={ctx_len}; lower ctx_len")
    return np.unique(np.linspace(0, last, n_windows).round().astype(np.int64))


@torch.no_grad()
def _validate(model: nn.Module, tokens: np.ndarray, starts: np.ndarray, ctx_len: int, micro_batch: int,
              device: torch.device, amp: torch.dtype | None, dist: Dist) -> float:
    """Mean next-token loss (nats) over the fixed windows; each process scores its share."""
    was_training = model.training
    model.eval()
    share = np.array_split(starts, dist.world_size)[dist.rank]
    total = torch.zeros(2, dtype=torch.float64, device=device)  # (sum of NLL, number of tokens)
    for i in range(0, len(share), micro_batch):
        rows = np.stack([np.asarray(tokens[s : s + ctx_len + 1], dtype=np.int64) for s in share[i : i + micro_batch]])
        both = torch.from_numpy(rows).to(device)
        with autocast(device, amp):
            logits, _ = model(both[:, :-1])
        nll = F.cross_entropy(logits.float().flatten(0, 1), both[:, 1:].flatten(), reduction="sum")
        total[0] += nll.double()
        total[1] += both[:, 1:].numel()
    total = dist.sum(total)
    model.train(was_training)
    return float(total[0] / total[1])


class _RunLog:
    """``log.csv`` and ``log.jsonl`` in out_dir (rank 0 only); rows are flushed as they come."""

    def __init__(self, out_dir: Path, enabled: bool, resume_step: int | None) -> None:
        self.enabled = enabled
        self.csv_path, self.jsonl_path = out_dir / "log.csv", out_dir / "log.jsonl"
        self.history: list[dict[str, Any]] = []
        if not enabled:
            return
        if resume_step is not None and self.jsonl_path.is_file():
            # Keep the rows up to the checkpoint; later rows belong to the steps about to be redone.
            for line in self.jsonl_path.read_text().splitlines():
                with contextlib.suppress(json.JSONDecodeError):
                    row = json.loads(line)
                    if isinstance(row, dict) and row.get("step", math.inf) <= resume_step:
                        self.history.append(row)
        self._rewrite()

    def _rewrite(self) -> None:
        atomic_write_text(self.jsonl_path, "".join(json.dumps(r) + "\n" for r in self.history))
        buf = io.StringIO()
        w = csv.DictWriter(buf, LOG_FIELDS, extrasaction="ignore")
        w.writeheader()
        w.writerows(self.history)
        atomic_write_text(self.csv_path, buf.getvalue())

    def append(self, row: dict[str, Any]) -> None:
        self.history.append(row)
        if not self.enabled:
            return
        with open(self.jsonl_path, "a") as f:
            f.write(json.dumps(row) + "\n")
        with open(self.csv_path, "a", newline="") as f:
            csv.DictWriter(f, LOG_FIELDS, extrasaction="ignore").writerow(row)


def train(args: TrainArgs, model: nn.Module | None = None, *, resume: bool = False,
          progress: ProgressFn | None = None) -> TrainResult:
    """Train ``model`` (or a new one built from ``args.model``, initialised with ``args.seed``).

    Under ``torchrun`` every process calls this; the result's ``final_path`` is set on rank 0.
    With ``resume`` the run continues from ``out_dir``'s latest checkpoint (or starts fresh if
    there is none). Raises :class:`TrainingDiverged` if the loss becomes NaN/inf.
    """
    out_dir = Path(args.out_dir)
    device = resolve_device(args.device, int(os.environ.get("LOCAL_RANK", "0")))
    dist = setup_distributed(device)
    try:
        if dist.world_size > 1 and args.batch_size % (dist.world_size * args.grad_accum):
            raise ConfigError(f"batch_size: the global batch {args.batch_size} must be divisible by "
                              f"processes x grad_accum = {dist.world_size} x {args.grad_accum}")
        amp, use_scaler = resolve_precision(args.precision, device)
        if dist.is_main:
            if not resume and ((out_dir / "log.jsonl").exists() or (out_dir / CHECKPOINTS / LATEST).exists()):
                raise SpikelmError(f"{out_dir} holds an earlier run; pass --resume to continue it, or choose another --out-dir")
            out_dir.mkdir(parents=True, exist_ok=True)
            remove_stale_temps(out_dir)
        dist.barrier()

        # Seed everything before building the model (init_weights has its own generator, but other
        # model families may draw from the global one).
        torch.manual_seed(args.seed)
        np.random.seed(args.seed)
        random.seed(args.seed)

        corpus = prepare(args.data, args.tokenizer)
        vocab = int(corpus.meta["vocab_size"])
        if model is None:
            model = _build_model(args, vocab)
        raw = model.to(device)
        optimizer = make_optimizer(raw, args)
        scaler = torch.amp.GradScaler(device.type, enabled=use_scaler)
        sampler = BatchSampler(corpus.tokens("train"), args.batch_size, args.ctx_len, args.seed, dist.rank, dist.world_size)
        val_tokens = corpus.tokens("valid")
        val_starts = _validation_starts(len(val_tokens), args.ctx_len, args.eval_batches * args.batch_size)

        step, tokens_seen, elapsed_before, val_loss = 0, 0, 0.0, None
        last_ckpt = latest_checkpoint(out_dir) if resume else None
        if resume and last_ckpt is None:
            log.info("--resume: no checkpoint in %s, starting from scratch", out_dir / CHECKPOINTS)
        if last_ckpt is not None:
            check_args_match(json.loads((last_ckpt / "train_args.json").read_text()), args, last_ckpt)
            state = restore(last_ckpt, raw, optimizer, scaler, device)
            sampler.load_state_dict(state["sampler"])
            step, tokens_seen, elapsed_before = int(state["step"]), int(state["tokens"]), float(state["elapsed_s"])
            val_loss = state.get("val_loss")
            if dist.is_main:
                log.info("resumed from %s (step %d, %s tokens)", last_ckpt, step, f"{tokens_seen:,}")
        runlog = _RunLog(out_dir, dist.is_main, step if last_ckpt is not None else None)
        if dist.is_main:
            atomic_write_json(out_dir / "train_args.json", args.to_dict())

        model = raw
        ddp = None
        if dist.active:
            model = ddp = nn.parallel.DistributedDataParallel(raw, device_ids=[device.index] if device.type == "cuda" else None)
        if args.compile:
            model = torch.compile(model)

        total = args.total_steps
        micro = args.batch_size // dist.world_size // args.grad_accum
        n_params = sum(p.numel() for p in raw.parameters())
        if dist.is_main:
            log.info("training %s (%s parameters) on %s x %d, %s, %d steps of %s tokens (micro-batch %d x %d, accumulation %d)",
                     type(raw).__name__, f"{n_params:,}", device, dist.world_size, "fp32" if amp is None else str(amp).split(".")[-1],
                     total, f"{args.tokens_per_step:,}", micro, args.ctx_len, args.grad_accum)
            log.info("data: %s; unigram entropy of train %.4f bits/token", corpus.path, corpus.meta["unigram_entropy_bits_per_token"])

        def validate() -> float:
            return _validate(raw, val_tokens, val_starts, args.ctx_len, args.batch_size // dist.world_size, device, amp, dist)

        def checkpoint_state() -> dict[str, Any]:
            return {"step": step, "tokens": tokens_seen, "elapsed_s": elapsed_before + (time.perf_counter() - t_start),
                    "val_loss": val_loss, "sampler": sampler.state_dict(), "world_size": dist.world_size}

        def save_ckpt() -> None:
            if dist.is_main:
                save_checkpoint(out_dir, step, raw, optimizer, scaler, checkpoint_state(), args)
            dist.barrier()

        if not dist.is_main:
            progress = None
        budget_s = args.max_minutes * 60 if args.max_minutes > 0 else None
        model.train()
        t_start = time.perf_counter()
        t_mark, tokens_mark, paused = t_start, tokens_seen, 0.0  # paused: eval/save time, not counted in tokens/s
        losses_since: list[float] = []
        postfix: dict[str, str] = {}
        stopped_by = "max_steps"
        try:
            while step < total:
                lr = lr_at(step, args, total)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                assert sampler.step == step, "sampler and optimizer steps disagree"
                xs, ys = next(sampler)
                loss_sum = torch.zeros((), device=device)
                for i, (x, y) in enumerate(zip(xs.split(micro), ys.split(micro))):
                    x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                    sync = contextlib.nullcontext()
                    if ddp is not None and i < args.grad_accum - 1:
                        sync = ddp.no_sync()  # accumulate locally; all-reduce on the last micro-batch
                    with sync:
                        with autocast(device, amp):
                            logits, _ = model(x)
                        loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
                        scaler.scale(loss / args.grad_accum).backward()
                    loss_sum += loss.detach()
                step_loss = float(dist.mean(loss_sum / args.grad_accum))
                if not math.isfinite(step_loss):
                    optimizer.zero_grad(set_to_none=True)
                    raise TrainingDiverged(diverged_message("loss", step_loss, step + 1, out_dir))
                scaler.unscale_(optimizer)
                if args.grad_clip > 0:
                    gnorm = float(torch.nn.utils.clip_grad_norm_(raw.parameters(), args.grad_clip))
                    if not math.isfinite(gnorm) and not scaler.is_enabled():  # the fp16 scaler skips such steps itself
                        optimizer.zero_grad(set_to_none=True)
                        raise TrainingDiverged(diverged_message("gradient norm", gnorm, step + 1, out_dir))
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                tokens_seen += args.tokens_per_step
                losses_since.append(step_loss)

                elapsed = elapsed_before + (time.perf_counter() - t_start)
                out_of_time = args.max_minutes > 0 and elapsed >= args.max_minutes * 60
                if dist.active and args.max_minutes > 0:  # every process must stop at the same step
                    flag = torch.tensor([float(out_of_time)], device=device)
                    torch.distributed.broadcast(flag, 0)
                    out_of_time = bool(flag.item())
                last = step >= total or out_of_time
                do_eval = last or (args.eval_every > 0 and step % args.eval_every == 0)
                row_val = None
                if do_eval:
                    t0 = time.perf_counter()
                    val_loss = row_val = validate()
                    paused += time.perf_counter() - t0
                if do_eval or last or step % args.log_every == 0:
                    now = time.perf_counter()
                    tps = (tokens_seen - tokens_mark) / max(1e-9, now - t_mark - paused)
                    row = {"step": step, "tokens": tokens_seen, "loss": sum(losses_since) / len(losses_since),
                           "val_loss": row_val, "lr": lr, "tokens_per_s": round(tps, 1),
                           "elapsed_s": round(elapsed_before + now - t_start, 3)}
                    runlog.append(row)
                    postfix = {"loss": f"{row['loss']:.4f}", "val": f"{val_loss:.4f}" if val_loss is not None else "-",
                               "tok_s": f"{tps:,.0f}"}
                    t_mark, tokens_mark, paused, losses_since = now, tokens_seen, 0.0, []
                if args.save_every > 0 and (step % args.save_every == 0 or last):
                    t0 = time.perf_counter()
                    save_ckpt()
                    paused += time.perf_counter() - t0
                # A time-budgeted run reports seconds against its budget (it may stop far before max_steps).
                if budget_s is not None:
                    report(progress, "train", min(elapsed, budget_s), budget_s, unit="s", step=step, **postfix)
                else:
                    report(progress, "train", step, total, unit="step", **postfix)
                if out_of_time:
                    stopped_by = "max_minutes"
                    if dist.is_main:
                        log.info("stopping at step %d: the time budget of %g minutes is spent", step, args.max_minutes)
                    break
        finally:  # the last event keeps the unit and total of the others
            if budget_s is not None:
                spent = elapsed_before + (time.perf_counter() - t_start)
                report(progress, "train", min(spent, budget_s), budget_s, unit="s", step=step, finished=True)
            else:
                report(progress, "train", step, step, unit="step", finished=True)
        if val_loss is None:  # no step was taken (a resumed run that had already finished)
            val_loss = validate()
        elapsed = elapsed_before + (time.perf_counter() - t_start)
        raw.eval()

        final_path = None
        if dist.is_main:
            final_path = save(raw, out_dir / "final")
            summary = {"final": str(final_path), "steps": step, "tokens": tokens_seen, "val_loss": val_loss,
                       "val_bits_per_token": None if val_loss is None else val_loss / math.log(2),
                       "unigram_entropy_bits_per_token": corpus.meta["unigram_entropy_bits_per_token"],
                       "elapsed_s": round(elapsed, 3), "stopped_by": stopped_by, "parameters": n_params,
                       "world_size": dist.world_size, "device": str(device)}
            atomic_write_json(out_dir / "summary.json", summary)
            log.info("done: %d steps, val loss %.4f nats (%.4f bits/token), model saved to %s",
                     step, val_loss if val_loss is not None else math.nan,
                     val_loss / math.log(2) if val_loss is not None else math.nan, final_path)
        dist.barrier()
        return TrainResult(final_path=final_path, val_loss=val_loss, history=runlog.history, steps=step,
                           tokens=tokens_seen, elapsed_s=elapsed, stopped_by=stopped_by,
                           checkpoint=latest_checkpoint(out_dir) if args.save_every > 0 else None)
    finally:
        if dist.owns_group:
            torch.distributed.destroy_process_group()
