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
* **Sharding** (``distributed: fsdp``): FSDP2 shards the parameters, gradients and AdamW state
  over the processes (:func:`.distributed.shard_model`, before the optimizer is built); the
  gradients of every micro-batch are reduce-scattered (no unsharded gradient is ever accumulated),
  checkpoints are sharded (:func:`.checkpointing.save_sharded_checkpoint`) and ``final/`` is
  gathered whole on rank 0. The wrapping, saving and restoring live in :class:`_Run`, so every
  loop built on it (training, fine-tuning) speaks both.
* **Precision**: autocast in bf16 (or fp16 with a gradient scaler) on GPUs, fp32 on CPU; the
  cross-entropy is always computed in fp32. ``precision: fp32`` on CUDA uses TF32 matmuls unless
  ``tf32: false`` (:func:`spikelm.devices.tf32`; restored when the run ends).
* **Checkpoints** (:mod:`.checkpointing`): every ``save_every`` steps, atomically. ``--resume`` continues bit for bit:
  the batch at step k depends only on (seed, k), and the weights and optimizer state are restored
  exactly.
* **Divergence**: a non-finite loss (or gradient norm) stops the run with an error naming the step,
  before the weights are updated; the last checkpoint stays the last good one.

Only rank 0 writes files, logs and reports progress (:mod:`.distributed` sets the processes up).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..checkpoints import build_model, save
from ..config import ConfigError
from ..runargs import RunArgs, TrainArgs
from ..data.build import prepare
from ..data.sampler import BatchSampler
from ..devices import tf32
from ..io import atomic_write_json
from ..progress import ProgressFn, report
from .checkpointing import (
    CHECKPOINTS,
    RUN_FILES,
    RunLock,
    TrainingDiverged,
    blow_up,
    check_args_match,
    claim_run_dir,
    diverged_message,
    latest_checkpoint,
    read_json,
    restore,
    rng_state,
    save_checkpoint,
    save_sharded_checkpoint,
)
from .distributed import (PARAM_DTYPES, Dist, MemoryWatch, autocast, average_grads, clip_sharded_grads,
                          local_bytes, meta_copy, resolve_precision, setup_distributed, shard_model, train_device)
from .objective import Objective, lr_at, make_optimizer, param_groups, schedule_description
from .runlog import RunLog as _RunLog
from .runlog import validate as _validate
from .runlog import validation_starts as _validation_starts

log = logging.getLogger("spikelm.train")

__all__ = ["TrainResult", "TrainingInterrupted", "Objective", "train", "param_groups", "make_optimizer", "lr_at",
           "claim_run_dir", "RUN_FILES"]



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
    memory: dict[str, Any] = field(default_factory=dict)  # bytes per process, the largest over processes (_Run.memory)

    @property
    def val_bits(self) -> float | None:
        """Validation loss in bits per token."""
        return None if self.val_loss is None else self.val_loss / math.log(2)


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
    cfg = _model_config(args, vocab_size)  # its errors name their model.* key already
    try:
        model = build_model(cfg)
    except (TypeError, ValueError) as e:  # a builder that validates its own config dict
        msg = str(e)
        if msg.startswith(("model.", "model:")):
            raise ConfigError(msg) from None
        raise ConfigError(f"model.{msg}" if isinstance(e, ConfigError) else f"model: {msg}") from None
    if hasattr(model, "init_weights"):
        model.init_weights(args.seed)
    return model


class TrainingInterrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM stopped the run after it saved a checkpoint; ``exit_code`` is 128 + the signal
    number (130 for Ctrl-C, 143 for SIGTERM), what a shell reports for a process the signal ended."""

    def __init__(self, signum: int, checkpoint: Path | None) -> None:
        self.signum, self.checkpoint = signum, checkpoint
        self.exit_code = 128 + signum
        name = signal.Signals(signum).name
        super().__init__(f"{name} at step {_step_of_name(checkpoint)}; saved {checkpoint}; continue with --resume"
                         if checkpoint else f"{name}; nothing saved")


def _step_of_name(folder: Path | None) -> str:
    return folder.name.split("_", 1)[1].lstrip("0") or "0" if folder else "?"


class _StopSignals:
    """While training: the first SIGINT/SIGTERM only sets ``signum`` (the loop finishes its step,
    saves a checkpoint and raises :class:`TrainingInterrupted`); a second one interrupts at once."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signum = 0
        self._old: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum:
            raise TrainingInterrupted(signum, None)
        self.signum = signum

    def __enter__(self) -> _StopSignals:
        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            for s in self.SIGNALS:
                self._old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for s, old in self._old.items():
            signal.signal(s, old)


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


@dataclass
class _Counters:
    """What the loop counts; saved in every checkpoint's trainer_state.json and restored on resume."""

    step: int = 0
    tokens: int = 0
    elapsed_before: float = 0.0  # training seconds of earlier sessions of this run
    val_loss: float | None = None  # the latest validation loss
    best_val_loss: float | None = None
    pending_losses: list[float] = field(default_factory=list)  # step losses not yet in a log row


class _Run:
    """One training session: the model, its optimizer and data, and the small steps ``train`` takes.

    Every process builds one. The methods are the units of the loop: :meth:`step` (one optimizer
    step over ``grad_accum`` micro-batches), :meth:`validate`, :meth:`check_health` (the divergence
    guard), :meth:`log_row` and :meth:`save`.

    ``args.distributed`` is honoured here and only here: with ``fsdp`` (several processes) ``raw``
    is sharded in place before the optimizer is built on it, :meth:`save` writes sharded
    checkpoints, :meth:`restore` reads either kind and :meth:`final_state_dict` gathers the weights
    whole; with ``ddp`` :meth:`wrap` wraps it after any restore.
    """

    def __init__(self, args: RunArgs, raw: nn.Module, dist: Dist, device: torch.device, amp: torch.dtype | None,
                 use_scaler: bool, corpus: Any, vocab: int, out_dir: Path, objective: Objective) -> None:
        self.args, self.raw, self.dist, self.device, self.amp = args, raw, dist, device, amp
        self.out_dir, self.vocab, self.objective = out_dir, vocab, objective
        self.sharded = dist.active and args.distributed == "fsdp"
        self.whole_params: list[nn.Parameter] = []
        if self.sharded:
            param_dtype = args.fsdp_param_dtype
            if PARAM_DTYPES[param_dtype] not in (None, amp):
                raise ConfigError(f"fsdp_param_dtype: {param_dtype} needs autocast in the same dtype (precision: "
                                  f"{param_dtype}); this run's precision is {args.precision} ({amp or 'fp32'}); "
                                  "use fsdp_param_dtype: fp32")
            self._skeleton = meta_copy(raw)  # the structure final/ is rebuilt in (final_model)
            self.whole_params = shard_model(raw, device, dist.world_size, param_dtype)
        self.optimizer = make_optimizer(raw, args, objective.param_groups(raw, args))
        if self.sharded and self.whole_params:  # torch's foreach kernels refuse a mix of DTensors and tensors
            whole = {id(p) for p in self.whole_params}
            for g in self.optimizer.param_groups:
                if len({id(p) in whole for p in g["params"]}) > 1:
                    g["foreach"] = False
        if self.sharded and use_scaler:  # the inf checks of the shards agreed on by every process
            from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

            self.scaler = ShardedGradScaler(device.type, enabled=True)
        else:
            self.scaler = torch.amp.GradScaler(device.type, enabled=use_scaler)
        self.sampler = BatchSampler(corpus.tokens("train"), args.batch_size, args.ctx_len, args.seed, dist.rank, dist.world_size)
        self.val_tokens = corpus.tokens("valid")
        self.val_starts = _validation_starts(len(self.val_tokens), args.ctx_len, args.eval_batches * args.batch_size)
        # Training and validation micro-batches are the same size: validation needs no more memory.
        self.micro = args.batch_size // dist.world_size // args.grad_accum
        self.c = _Counters()
        self.model: nn.Module = raw
        self.ddp: nn.parallel.DistributedDataParallel | None = None
        self.t_start = time.perf_counter()
        self.state_bytes: dict[str, int] | None = None  # this process's parameters, gradients, optimizer state

    def wrap(self) -> None:
        """DDP (several processes, unless sharded) and torch.compile, after any restore into the raw model."""
        if self.dist.active and not self.sharded:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = self.ddp = nn.parallel.DistributedDataParallel(self.raw, device_ids=ids)
        if self.args.compile:
            self.model = torch.compile(self.model)

    def elapsed(self) -> float:
        return self.c.elapsed_before + (time.perf_counter() - self.t_start)

    # ------------------------------------------------------------ resume
    def restore(self, folder: Path) -> None:
        check_args_match(read_json(folder / "train_args.json"), self.args, folder)
        state = restore(folder, self.raw, self.optimizer, self.scaler, self.device, self.dist.rank, self.args.seed)
        self.sampler.load_state_dict(state["sampler"])
        self.c = _Counters(step=int(state["step"]), tokens=int(state["tokens"]), elapsed_before=float(state["elapsed_s"]),
                           val_loss=state.get("val_loss"), best_val_loss=state.get("best_val_loss"),
                           pending_losses=[float(x) for x in state.get("pending_losses", [])])

    # ------------------------------------------------------------ one optimizer step
    def step(self, lr: float) -> float:
        """Forward and backward over this process's rows in ``grad_accum`` micro-batches, then the
        optimizer step; returns the loss averaged over the global batch. A non-finite loss or
        gradient norm raises :class:`TrainingDiverged` before the weights change."""
        args, c = self.args, self.c
        groups = self.optimizer.param_groups
        relative = [g for g in groups if g.get("lr_relative")]
        # a relative group's step follows its parameter's current size (one host read for all of them)
        sizes = torch.stack([g["params"][0].detach().abs().mean().float() for g in relative]).tolist() if relative else []
        size_of = {id(g): v for g, v in zip(relative, sizes)}
        for group in groups:
            group["lr"] = lr * group.get("lr_scale", 1.0) * size_of.get(id(group), 1.0)
        assert self.sampler.step == c.step, "sampler and optimizer steps disagree"
        xs, ys = next(self.sampler)
        loss_sum = torch.zeros((), device=self.device)
        for i, (x, y) in enumerate(zip(xs.split(self.micro), ys.split(self.micro))):
            x, y = x.to(self.device), y.to(self.device)
            sync = contextlib.nullcontext()
            if self.ddp is not None and i < args.grad_accum - 1:
                sync = self.ddp.no_sync()  # accumulate locally; all-reduce on the last micro-batch
            with sync:
                with autocast(self.device, self.amp):
                    loss = self.objective.loss(self.model, x, y)
                self.scaler.scale(loss / args.grad_accum).backward()
            loss_sum += loss.detach()
        loss_t = self.dist.mean(loss_sum / args.grad_accum)
        if self.sharded:
            average_grads(self.whole_params, self.dist.world_size)  # what FSDP left whole (shard_model)
        self.scaler.unscale_(self.optimizer)
        # grad_clip 0 clips nothing, but the guard still needs the norm (max_norm inf scales by 1)
        max_norm = args.grad_clip if args.grad_clip > 0 else math.inf
        if self.sharded:
            gnorm_t = clip_sharded_grads(list(self.raw.parameters()), max_norm)
        else:
            gnorm_t = torch.nn.utils.clip_grad_norm_(self.raw.parameters(), max_norm)
        # One host sync per step for the divergence guard: the loss and the gradient norm come to the
        # host together (both are needed before the weights may change; the values are the same floats).
        step_loss, gnorm = torch.stack([loss_t.float(), gnorm_t.float()]).tolist()
        if not math.isfinite(step_loss):
            self.optimizer.zero_grad(set_to_none=True)
            self.diverged(f"the training loss is {step_loss}", c.step + 1)
        if not math.isfinite(gnorm) and not self.scaler.is_enabled():  # the fp16 scaler skips such steps itself
            self.optimizer.zero_grad(set_to_none=True)
            self.diverged(f"the gradient norm is {gnorm}", c.step + 1)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.state_bytes is None:  # once, while the gradients and the optimizer state both exist
            self.state_bytes = local_bytes(self.raw, self.optimizer)
        self.optimizer.zero_grad(set_to_none=True)
        self.objective.after_step(self.raw)
        c.step += 1
        c.tokens += args.tokens_per_step
        c.pending_losses.append(step_loss)
        return step_loss

    # ------------------------------------------------------------ validation and the guard
    def validate(self, model: nn.Module | None = None) -> float:
        """Mean next-token loss of ``model`` (default: the model being trained) on the fixed windows."""
        return _validate(self.raw if model is None else model, self.val_tokens, self.val_starts, self.args.ctx_len,
                         self.micro, self.device, self.amp, self.dist, lockstep=self.sharded)

    def diverged(self, what: str, step: int) -> None:
        raise TrainingDiverged(diverged_message(what, step, self.out_dir, self.vocab, self.args.save_every))

    def check_health(self, val: float) -> None:
        """The divergence guard on a fresh validation loss (the same value on every process, so
        every process stops together); a healthy one becomes the latest and maybe the best."""
        why = blow_up(val, self.vocab, self.c.best_val_loss)
        if why is not None:
            self.diverged(why, self.c.step)
        self.c.val_loss = val
        self.c.best_val_loss = val if self.c.best_val_loss is None else min(self.c.best_val_loss, val)

    # ------------------------------------------------------------ log rows and checkpoints
    def log_row(self, lr: float, val: float | None, tokens_per_s: float) -> dict[str, Any]:
        """The log row of this step: the mean training loss since the previous row (carried across
        resumes in the checkpoint, so the row is the same whether or not the run was resumed)."""
        c = self.c
        row = {"step": c.step, "tokens": c.tokens, "loss": sum(c.pending_losses) / len(c.pending_losses),
               "val_loss": val, "lr": lr, "tokens_per_s": round(tokens_per_s, 1), "elapsed_s": round(self.elapsed(), 3),
               **self.objective.row_extra(val)}
        c.pending_losses = []
        return row

    def save(self) -> Path | None:
        """A checkpoint of this step: rank 0 writes it, with every rank's RNG states; all wait for it."""
        c = self.c
        rngs = self.dist.gather(rng_state(self.device))
        state = {"step": c.step, "tokens": c.tokens, "elapsed_s": self.elapsed(), "val_loss": c.val_loss,
                 "best_val_loss": c.best_val_loss, "pending_losses": c.pending_losses,
                 "sampler": self.sampler.state_dict(), "world_size": self.dist.world_size}
        path = None
        if self.sharded:  # every process writes its shards
            path = save_sharded_checkpoint(self.out_dir, c.step, self.raw, self.optimizer, self.scaler, state, self.args,
                                           rngs, self.dist)
        elif self.dist.is_main:
            path = save_checkpoint(self.out_dir, c.step, self.raw, self.optimizer, self.scaler, state, self.args, rngs)
        self.dist.barrier()
        return path

    def final_model(self) -> nn.Module | None:
        """The model ``out_dir/final`` holds, on rank 0 (None on the others): the objective's
        :meth:`~.objective.Objective.final_model` of the trained model. A sharded model is first
        gathered whole into rank 0's CPU memory, into a plain twin of its structure (a collective:
        every process calls this)."""
        if not self.sharded:
            return self.objective.final_model(self.raw) if self.dist.is_main else None
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        whole = get_model_state_dict(self.raw, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if not self.dist.is_main:
            return None
        twin = self._skeleton.to_empty(device="cpu")
        twin.load_state_dict(whole, strict=True)
        return self.objective.final_model(twin.train(self.raw.training))

    def memory(self, peak: int | None) -> dict[str, Any]:
        """Bytes per process, the largest over the processes: ``peak`` (this process's, from a
        :class:`.distributed.MemoryWatch`) and the parameters, gradients and optimizer state held
        (a collective)."""
        held = self.state_bytes or {"params": 0, "grads": 0, "optimizer": 0}
        keys = ("params", "grads", "optimizer")
        values = torch.tensor([float(held[k]) for k in keys] + [float(-1 if peak is None else peak)], dtype=torch.float64)
        values = [float(v) for v in self.dist.max(values.to(self.device)).cpu()]
        out: dict[str, Any] = {k: int(v) for k, v in zip(keys, values)}
        out["peak"] = None if values[-1] < 0 else int(values[-1])
        out["mode"] = "fsdp" if self.sharded else ("ddp" if self.dist.active else "single")
        return out


def train(args: RunArgs, model: nn.Module | None = None, *, resume: bool = False,
          resume_from: str | os.PathLike | None = None, progress: ProgressFn | None = None,
          build: Callable[[bool], nn.Module] | None = None, objective: Objective | None = None,
          overwrite: bool = False, command: str = "train", owns: tuple[str, ...] = RUN_FILES) -> TrainResult:
    """Train ``model`` (or a new one built from ``args.model``, initialised with ``args.seed``).

    ``build(resuming)``, when given, makes the model instead, after ``out_dir`` has been claimed
    (so an out_dir that is refused costs no work; ``resuming`` says a checkpoint's weights will
    replace what it builds). ``objective`` is what the run optimises (default :class:`Objective`:
    next-token training); spiking-aware fine-tuning passes its own (:mod:`.finetune`).

    Under ``torchrun`` every process calls this; the result's ``final_path`` is set on rank 0.
    With ``resume`` the run continues from ``out_dir``'s latest checkpoint (or starts fresh if
    there is none); ``resume_from`` (a step number, a checkpoint folder name or path) continues
    from that checkpoint instead. Raises :class:`TrainingDiverged` if the loss becomes NaN/inf or
    the validation loss blows up (:func:`.checkpointing.blow_up`), :class:`RunLocked` if another
    run holds ``out_dir``, and :class:`TrainingInterrupted` after SIGINT/SIGTERM (once the
    checkpoint of the step in progress is saved). ``out_dir`` must be empty, hold an earlier run
    of ``command`` (spikelm's own files only: ``owns``, what that command writes there), or
    ``overwrite`` is given (:func:`claim_run_dir`).
    """
    out_dir = Path(args.out_dir)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = train_device(args.device, int(os.environ.get("LOCAL_RANK", "0")), world)
    dist = setup_distributed(device)
    lock = RunLock(out_dir)
    settings = contextlib.ExitStack()  # process-wide torch settings of this run, restored at its end
    try:
        if dist.world_size > 1 and args.batch_size % (dist.world_size * args.grad_accum):
            raise ConfigError(f"batch_size: the global batch {args.batch_size} must be divisible by "
                              f"processes x grad_accum = {dist.world_size} x {args.grad_accum}")
        amp, use_scaler = resolve_precision(args.precision, device)
        tf32_on = settings.enter_context(tf32(device, amp, args.tf32))
        start_from = dist.on_main(lambda: claim_run_dir(out_dir, lock, resume=resume, resume_from=resume_from,
                                                        overwrite=overwrite, command=command, owns=owns))

        # Seed before building the model (init_weights has its own generator, but other model
        # families may draw from the global one): every process builds the same model.
        _seed_everything(args.seed)
        corpus = prepare(args.data, args.tokenizer)
        watch = MemoryWatch(device).start()
        if model is None and build is not None:
            model = build(start_from is not None)  # every rank knows start_from (on_main)
        if model is None:
            model = _build_model(args, int(corpus.meta["vocab_size"]))
        raw = model.to(device)
        # Then each process draws its own random numbers (dropout masks differ across processes);
        # the data order depends only on (seed, step), never on these.
        _seed_everything(args.seed + dist.rank)
        vocab = int(getattr(getattr(raw, "cfg", None), "vocab_size", corpus.meta["vocab_size"]))
        objective = objective if objective is not None else Objective()
        run = _Run(args, raw, dist, device, amp, use_scaler, corpus, vocab, out_dir, objective)
        if start_from is None and (resume or resume_from is not None):
            log.info("--resume: no checkpoint in %s, starting from scratch", out_dir / CHECKPOINTS)
        if start_from is not None:
            run.restore(start_from)
            if dist.is_main:
                log.info("resumed from %s (step %d, %s tokens)", start_from, run.c.step, f"{run.c.tokens:,}")
        runlog = _RunLog(out_dir, dist.is_main, run.c.step if start_from is not None else None, objective.log_fields)
        if dist.is_main:
            atomic_write_json(out_dir / "train_args.json", args.to_dict())
        run.wrap()
        objective.start(run)

        total = args.total_steps
        n_params = sum(p.numel() for p in raw.parameters())
        if dist.is_main:
            log.info("training %s (%s parameters) on %s x %d%s, %s, %d steps of %s tokens (micro-batch %d x %d, accumulation %d)",
                     type(raw).__name__.removeprefix("FSDP"), f"{n_params:,}", device, dist.world_size,
                     " sharded (FSDP2)" if run.sharded else "",
                     ("fp32 (TF32 matmuls)" if tf32_on else "fp32") if amp is None else str(amp).split(".")[-1],
                     total, f"{args.tokens_per_step:,}", run.micro, args.ctx_len, args.grad_accum)
            log.info("data: %s; unigram entropy of train %.4f bits/token", corpus.path, corpus.meta["unigram_entropy_bits_per_token"])
            log.info("learning rate: %s", schedule_description(args, total))
            if args.warmup_steps >= total:
                log.warning("warmup_steps=%d >= the run's %d steps: the learning rate only warms up and never decays; "
                            "lower warmup_steps (about 10%% of the steps)", args.warmup_steps, total)
        stopped_by = _loop(run, runlog, total, progress if dist.is_main else None)
        if dist.is_main and stopped_by == "max_minutes" and run.c.step <= args.warmup_steps:
            log.warning("the time budget ended at step %d, within the warm-up of %d steps: the learning rate never "
                        "reached lr; lower warmup_steps or give more time", run.c.step, args.warmup_steps)

        c = run.c
        if c.val_loss is None:  # no step was taken (a resumed run that had already finished)
            run.check_health(run.validate())
        val_loss, elapsed = c.val_loss, run.elapsed()
        raw.eval()
        final_path = None
        memory = run.memory(watch.peak())
        final = run.final_model()  # every process takes part (a sharded model is gathered)
        if dist.is_main:
            final_path = save(final, out_dir / "final", extra=objective.final_extra())
            summary = {"final": str(final_path), "steps": c.step, "tokens": c.tokens, "val_loss": val_loss,
                       "val_bits_per_token": None if val_loss is None else val_loss / math.log(2),
                       "unigram_entropy_bits_per_token": corpus.meta["unigram_entropy_bits_per_token"],
                       "elapsed_s": round(elapsed, 3), "stopped_by": stopped_by, "parameters": n_params,
                       "world_size": dist.world_size, "device": str(device), "memory_bytes_per_process": memory,
                       "lr_schedule": schedule_description(args, total),
                       "final_lr": runlog.history[-1]["lr"] if runlog.history else None, **objective.summary()}
            atomic_write_json(out_dir / "summary.json", summary)
            log.info("done: %d steps, val loss %.4f nats (%.4f bits/token), model saved to %s",
                     c.step, val_loss, val_loss / math.log(2), final_path)
            held = memory["params"] + memory["grads"] + memory["optimizer"]
            log.info("memory per process (%s): parameters, gradients and optimizer state %.1f MiB; peak %s above the start",
                     memory["mode"], held / 2**20, "unknown" if memory["peak"] is None else f"{memory['peak'] / 2**20:.1f} MiB")
        dist.barrier()
        return TrainResult(final_path=final_path, val_loss=val_loss, history=runlog.history, steps=c.step,
                           tokens=c.tokens, elapsed_s=elapsed, stopped_by=stopped_by,
                           checkpoint=latest_checkpoint(out_dir) if args.save_every > 0 else None, memory=memory)
    finally:
        settings.close()
        lock.release()
        if dist.owns_group:
            torch.distributed.destroy_process_group()


def _loop(run: _Run, runlog: _RunLog, total: int, progress: ProgressFn | None) -> str:
    """Steps until ``total`` (or the time budget, or a signal); returns what stopped the run."""
    args, dist, c = run.args, run.dist, run.c
    budget_s = args.max_minutes * 60 if args.max_minutes > 0 else None
    run.model.train()
    run.t_start = time.perf_counter()
    t_mark, tokens_mark, paused = run.t_start, c.tokens, 0.0  # paused: eval/save time, not counted in tokens/s
    postfix: dict[str, str] = {}
    # A time budget: the schedule follows the part of the budget spent at the end of each step,
    # foreseen from the time before it plus the typical step time (both agreed on by all processes,
    # so that every process sets the same rate). The step foreseen to end the budget is the last
    # one, taken at min_lr; a step slower than foreseen makes the next one the last.
    step_s = 0.0

    def agreed(*values: float) -> list[float]:  # the max over processes, the same on every process
        if not dist.active:
            return list(values)
        return dist.max(torch.tensor(values, dtype=torch.float64, device=run.device)).cpu().tolist()

    try:
        with _StopSignals() as signals:
            while c.step < total:
                fraction = None if budget_s is None else min(1.0, (agreed(run.elapsed())[0] + step_s) / budget_s)
                lr = lr_at(c.step, args, total, fraction)
                t_step = time.perf_counter()
                run.step(lr)
                # Every process stops at the same step: the flags are agreed on (max over processes).
                signum, took = agreed(float(signals.signum), time.perf_counter() - t_step)
                signum = int(signum)
                step_s = took if step_s == 0.0 else 0.8 * step_s + 0.2 * took
                out_of_time = fraction is not None and fraction >= 1.0
                last = c.step >= total or out_of_time
                scheduled_save = args.save_every > 0 and (c.step % args.save_every == 0 or last)
                scheduled_eval = last or (args.eval_every > 0 and c.step % args.eval_every == 0) or scheduled_save

                t0 = time.perf_counter()
                row_val = None
                if scheduled_eval or signum:  # every checkpoint records its validation loss
                    val = run.validate()
                    run.check_health(val)
                    row_val = val if scheduled_eval else None  # an interrupt leaves the log rows as they would be
                paused += time.perf_counter() - t0
                if scheduled_eval or last or c.step % args.log_every == 0:
                    now = time.perf_counter()
                    tps = (c.tokens - tokens_mark) / max(1e-9, now - t_mark - paused)
                    runlog.append(run.log_row(lr, row_val, tps))
                    postfix = {"loss": f"{runlog.history[-1]['loss']:.4f}", "tok_s": f"{tps:,.0f}",
                               "val": f"{c.val_loss:.4f}" if c.val_loss is not None else "-"}
                    t_mark, tokens_mark, paused = now, c.tokens, 0.0
                t0 = time.perf_counter()
                saved = run.save() if scheduled_save or signum else None
                paused += time.perf_counter() - t0
                # A time-budgeted run reports seconds against its budget (it may stop far before max_steps).
                if budget_s is not None:
                    report(progress, "train", min(run.elapsed(), budget_s), budget_s, unit="s", step=c.step, **postfix)
                else:
                    report(progress, "train", c.step, total, unit="step", **postfix)
                if signum:
                    if dist.is_main:
                        log.warning("%s: saved %s at step %d; continue with --resume", signal.Signals(signum).name, saved, c.step)
                    raise TrainingInterrupted(signum, saved if dist.is_main else latest_checkpoint(run.out_dir))
                if out_of_time:
                    if dist.is_main:
                        log.info("stopping at step %d: the time budget of %g minutes is spent", c.step, args.max_minutes)
                    return "max_minutes"
    finally:  # the last event keeps the unit and total of the others
        if budget_s is not None:
            report(progress, "train", min(run.elapsed(), budget_s), budget_s, unit="s", step=c.step, finished=True)
        else:
            report(progress, "train", c.step, c.step, unit="step", finished=True)
    return "max_steps"
