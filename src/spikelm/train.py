"""Training a language model from scratch: ``spikelm train CONFIG.yaml [--key value ...]``.

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
* **Checkpoints**: every ``save_every`` steps a folder ``checkpoints/step_XXXXXX`` with the weights
  (``model.safetensors`` + ``config.json``: loadable by ``spikelm.load``), the optimizer, the
  gradient scaler, the RNG states and the sampler position. It is written under a temporary name
  and renamed, and only then does the ``latest`` pointer move (``os.replace``), so a crash at any
  moment leaves the previous checkpoint intact and pointed to. ``--resume`` continues bit for bit:
  the batch at step k depends only on (seed, k), and the weights and optimizer state are restored
  exactly.
* **Divergence**: a non-finite loss (or gradient norm) stops the run with an error naming the step,
  before the weights are updated; the last checkpoint stays the last good one.

Only rank 0 writes files, logs and shows the progress bar.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import math
import os
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import ConfigError, TrainArgs
from .errors import CheckpointError, SpikelmError

log = logging.getLogger(__name__)

__all__ = [
    "TrainArgs",
    "TrainResult",
    "TrainingDiverged",
    "train",
    "load_train_args",
    "param_groups",
    "make_optimizer",
    "lr_at",
    "latest_checkpoint",
    "cli_train",
]

CHECKPOINTS = "checkpoints"
LATEST = "latest"
LOG_FIELDS = ("step", "tokens", "loss", "val_loss", "lr", "tokens_per_s", "elapsed_s")


class TrainingDiverged(SpikelmError):
    """The loss (or the gradient norm) became NaN or infinite."""


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


# ---------------------------------------------------------------------------- processes and devices
@dataclass
class _Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # we initialised the process group, so we tear it down

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.active:
            torch.distributed.barrier()

    def mean(self, x: Tensor) -> Tensor:
        """Average a scalar tensor over the processes (identity in a single process)."""
        if self.active:
            x = x.clone()
            torch.distributed.all_reduce(x)
            x /= self.world_size
        return x

    def sum(self, x: Tensor) -> Tensor:
        if self.active:
            x = x.clone()
            torch.distributed.all_reduce(x)
        return x


def _resolve_device(name: str, local_rank: int) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device: {name!r} was asked for, but CUDA is not available; use --device cpu")
        # Under torchrun every process takes the GPU of its local rank.
        return torch.device("cuda", local_rank if name == "cuda" else int(name.split(":")[1]))
    return torch.device(name)


def _setup_distributed(device: torch.device) -> _Dist:
    """Join the process group when launched by ``torchrun`` (RANK / WORLD_SIZE in the environment)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Dist()
    import torch.distributed as tdist

    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    owns = False
    if not tdist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        tdist.init_process_group(backend=backend)
        owns = True
    return _Dist(rank=rank, world_size=world, local_rank=local, owns_group=owns)


def _resolve_precision(precision: str, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """(autocast dtype or None for fp32, whether to use a gradient scaler)."""
    if precision == "auto":
        if device.type != "cuda":
            return None, False
        return (torch.bfloat16, False) if torch.cuda.is_bf16_supported() else (torch.float16, True)
    return {"fp32": (None, False), "bf16": (torch.bfloat16, False), "fp16": (torch.float16, True)}[precision]


def _autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


# ---------------------------------------------------------------------------- optimizer and schedule
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
    from .checkpoint import build_model

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
              device: torch.device, amp: torch.dtype | None, dist: _Dist) -> float:
    """Mean next-token loss (nats) over the fixed windows; each process scores its share."""
    was_training = model.training
    model.eval()
    share = np.array_split(starts, dist.world_size)[dist.rank]
    total = torch.zeros(2, dtype=torch.float64, device=device)  # (sum of NLL, number of tokens)
    for i in range(0, len(share), micro_batch):
        rows = np.stack([np.asarray(tokens[s : s + ctx_len + 1], dtype=np.int64) for s in share[i : i + micro_batch]])
        both = torch.from_numpy(rows).to(device)
        with _autocast(device, amp):
            logits, _ = model(both[:, :-1])
        nll = F.cross_entropy(logits.float().flatten(0, 1), both[:, 1:].flatten(), reduction="sum")
        total[0] += nll.double()
        total[1] += both[:, 1:].numel()
    total = dist.sum(total)
    model.train(was_training)
    return float(total[0] / total[1])


# ---------------------------------------------------------------------------- checkpoints
def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _step_dir_name(step: int) -> str:
    return f"step_{step:06d}"


def _complete(folder: Path) -> bool:
    return (folder / "trainer_state.json").is_file() and (folder / "model.safetensors").is_file()


def latest_checkpoint(out_dir: str | os.PathLike) -> Path | None:
    """The checkpoint ``latest`` points to; if the pointer is missing or dangling, the newest complete one."""
    root = Path(out_dir) / CHECKPOINTS
    pointer = root / LATEST
    if pointer.is_file():
        target = root / pointer.read_text().strip()
        if _complete(target):
            return target
        log.warning("%s points to %s, which is not a complete checkpoint; using the newest complete one", pointer, target)
    candidates = sorted((p for p in root.glob("step_*") if _complete(p)), reverse=True) if root.is_dir() else []
    return candidates[0] if candidates else None


def _write_training_state(folder: Path, optimizer: torch.optim.Optimizer, scaler: Any, state: dict[str, Any],
                          args: TrainArgs) -> None:
    """Everything besides the weights that an exact resume needs."""
    torch.save(optimizer.state_dict(), folder / "optimizer.pt")
    rng: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    torch.save(rng, folder / "rng.pt")
    np_state = np.random.get_state()
    py_state = random.getstate()
    state = dict(
        state,
        scaler=scaler.state_dict() if scaler.is_enabled() else None,
        numpy_rng=[np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        python_rng=[py_state[0], list(py_state[1]), py_state[2]],
    )
    (folder / "train_args.json").write_text(json.dumps(args.to_dict(), indent=2) + "\n")
    # trainer_state.json last: _complete() looks for it (the rename below is what makes it atomic).
    (folder / "trainer_state.json").write_text(json.dumps(state, indent=2) + "\n")


def _save_checkpoint(out_dir: Path, step: int, model: nn.Module, optimizer: torch.optim.Optimizer, scaler: Any,
                     state: dict[str, Any], args: TrainArgs) -> Path:
    """Write ``checkpoints/step_XXXXXX`` atomically, move ``latest`` to it, prune old ones."""
    from .checkpoint import save

    root = out_dir / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    final = root / _step_dir_name(step)
    tmp = root / f".{final.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        save(model, tmp)  # model.safetensors + config.json, itself written atomically
        _write_training_state(tmp, optimizer, scaler, state, args)
        if final.exists():  # left by a run that crashed before moving `latest`; never the one it points to
            shutil.rmtree(final)
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _atomic_write_text(root / LATEST, final.name + "\n")
    if args.keep_checkpoints > 0:
        for old in sorted(root.glob("step_*"))[: -args.keep_checkpoints]:
            if old != final:
                shutil.rmtree(old, ignore_errors=True)
    log.debug("saved checkpoint %s", final)
    return final


def _remove_stale_temps(out_dir: Path) -> None:
    """Temporary folders of a save that was killed half-way (never pointed to, safe to delete)."""
    root = out_dir / CHECKPOINTS
    if root.is_dir():
        for stale in root.glob(".*.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)


def _restore(folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scaler: Any,
             device: torch.device) -> dict[str, Any]:
    """Load weights, optimizer, scaler and RNG states from a checkpoint; return trainer_state."""
    from .checkpoint import load_state_dict

    sd, _ = load_state_dict(folder)
    try:
        model.load_state_dict({k: v.to(device) for k, v in sd.items()}, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{folder}: the weights do not fit this run's model ({str(e).splitlines()[0]}); "
                              "resume with the model config the checkpoint was trained with") from None
    try:
        optimizer.load_state_dict(torch.load(folder / "optimizer.pt", map_location=device, weights_only=True))
        rng = torch.load(folder / "rng.pt", map_location="cpu", weights_only=True)
        state = json.loads((folder / "trainer_state.json").read_text())
    except (OSError, RuntimeError, ValueError) as e:
        raise CheckpointError(f"{folder}: cannot read the training state ({e}); resume from an earlier checkpoint") from None
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    n = state["numpy_rng"]
    np.random.set_state((n[0], np.asarray(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    p = state["python_rng"]
    random.setstate((p[0], tuple(p[1]), p[2]))
    if state.get("scaler") and scaler.is_enabled():
        scaler.load_state_dict(state["scaler"])
    return state


# ---------------------------------------------------------------------------- logs
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
        _atomic_write_text(self.jsonl_path, "".join(json.dumps(r) + "\n" for r in self.history))
        tmp = self.csv_path.with_name(f".{self.csv_path.name}.tmp-{os.getpid()}")
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, LOG_FIELDS, extrasaction="ignore")
            w.writeheader()
            w.writerows(self.history)
        os.replace(tmp, self.csv_path)

    def append(self, row: dict[str, Any]) -> None:
        self.history.append(row)
        if not self.enabled:
            return
        with open(self.jsonl_path, "a") as f:
            f.write(json.dumps(row) + "\n")
        with open(self.csv_path, "a", newline="") as f:
            csv.DictWriter(f, LOG_FIELDS, extrasaction="ignore").writerow(row)


# ---------------------------------------------------------------------------- the loop
def _check_args_match(saved: dict[str, Any], args: TrainArgs, folder: Path) -> None:
    """Resuming with a different model is an error; other changes (longer runs) are allowed but noted."""
    if saved.get("model") != args.model:
        raise ConfigError(f"model: the checkpoint {folder} was trained with {saved.get('model')}, this run asks for {args.model}")
    changed = sorted(k for k, v in args.to_dict().items() if k != "model" and saved.get(k) != v)
    if changed:
        log.warning("resuming with changed settings: %s", ", ".join(f"{k}={saved.get(k)!r} -> {getattr(args, k)!r}" for k in changed))


def train(args: TrainArgs, model: nn.Module | None = None, *, resume: bool = False, progress: bool = True) -> TrainResult:
    """Train ``model`` (or a new one built from ``args.model``, initialised with ``args.seed``).

    Under ``torchrun`` every process calls this; the result's ``final_path`` is set on rank 0.
    With ``resume`` the run continues from ``out_dir``'s latest checkpoint (or starts fresh if
    there is none). Raises :class:`TrainingDiverged` if the loss becomes NaN/inf.
    """
    from tqdm import tqdm

    from .checkpoint import save
    from .data.corpora import prepare
    from .data.sampler import BatchSampler

    out_dir = Path(args.out_dir)
    device = _resolve_device(args.device, int(os.environ.get("LOCAL_RANK", "0")))
    dist = _setup_distributed(device)
    try:
        if dist.world_size > 1 and args.batch_size % (dist.world_size * args.grad_accum):
            raise ConfigError(f"batch_size: the global batch {args.batch_size} must be divisible by "
                              f"processes x grad_accum = {dist.world_size} x {args.grad_accum}")
        amp, use_scaler = _resolve_precision(args.precision, device)
        if dist.is_main:
            if not resume and ((out_dir / "log.jsonl").exists() or (out_dir / CHECKPOINTS / LATEST).exists()):
                raise SpikelmError(f"{out_dir} holds an earlier run; pass --resume to continue it, or choose another --out-dir")
            out_dir.mkdir(parents=True, exist_ok=True)
            _remove_stale_temps(out_dir)
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
            _check_args_match(json.loads((last_ckpt / "train_args.json").read_text()), args, last_ckpt)
            state = _restore(last_ckpt, raw, optimizer, scaler, device)
            sampler.load_state_dict(state["sampler"])
            step, tokens_seen, elapsed_before = int(state["step"]), int(state["tokens"]), float(state["elapsed_s"])
            val_loss = state.get("val_loss")
            if dist.is_main:
                log.info("resumed from %s (step %d, %s tokens)", last_ckpt, step, f"{tokens_seen:,}")
        runlog = _RunLog(out_dir, dist.is_main, step if last_ckpt is not None else None)
        if dist.is_main:
            _atomic_write_text(out_dir / "train_args.json", json.dumps(args.to_dict(), indent=2) + "\n")

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
                _save_checkpoint(out_dir, step, raw, optimizer, scaler, checkpoint_state(), args)
            dist.barrier()

        bar = tqdm(total=total, initial=step, unit="step", dynamic_ncols=True, disable=not (progress and dist.is_main),
                   desc="train")
        model.train()
        t_start = time.perf_counter()
        t_mark, tokens_mark, paused = t_start, tokens_seen, 0.0  # paused: eval/save time, not counted in tokens/s
        losses_since: list[float] = []
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
                        with _autocast(device, amp):
                            logits, _ = model(x)
                        loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
                        scaler.scale(loss / args.grad_accum).backward()
                    loss_sum += loss.detach()
                step_loss = float(dist.mean(loss_sum / args.grad_accum))
                if not math.isfinite(step_loss):
                    optimizer.zero_grad(set_to_none=True)
                    raise TrainingDiverged(_diverged_message("loss", step_loss, step + 1, out_dir))
                scaler.unscale_(optimizer)
                if args.grad_clip > 0:
                    gnorm = float(torch.nn.utils.clip_grad_norm_(raw.parameters(), args.grad_clip))
                    if not math.isfinite(gnorm) and not scaler.is_enabled():  # the fp16 scaler skips such steps itself
                        optimizer.zero_grad(set_to_none=True)
                        raise TrainingDiverged(_diverged_message("gradient norm", gnorm, step + 1, out_dir))
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                tokens_seen += args.tokens_per_step
                losses_since.append(step_loss)
                bar.update(1)

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
                    bar.set_postfix(loss=f"{row['loss']:.4f}", val=f"{val_loss:.4f}" if val_loss is not None else "-",
                                    tok_s=f"{tps:,.0f}", refresh=False)
                    t_mark, tokens_mark, paused, losses_since = now, tokens_seen, 0.0, []
                if args.save_every > 0 and (step % args.save_every == 0 or last):
                    t0 = time.perf_counter()
                    save_ckpt()
                    paused += time.perf_counter() - t0
                if out_of_time:
                    stopped_by = "max_minutes"
                    if dist.is_main:
                        log.info("stopping at step %d: the time budget of %g minutes is spent", step, args.max_minutes)
                    break
        finally:
            bar.close()
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
            _atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
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


def _diverged_message(what: str, value: float, step: int, out_dir: Path) -> str:
    good = latest_checkpoint(out_dir)
    where = f"the last good checkpoint is {good}" if good else "no checkpoint was saved (set save_every to keep one)"
    return (f"the training {what} is {value} at step {step}; stopped before updating the weights. {where}; "
            "lower lr, raise warmup_steps or grad_clip, and resume with --resume")


# ---------------------------------------------------------------------------- command line
def _parse_value(text: Any) -> Any:
    """A command-line value as YAML reads it (so `--model.n_layer 4` gives an int)."""
    if not isinstance(text, str):
        return text
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def load_train_args(config: str | os.PathLike | None, overrides: dict[str, Any] | None = None) -> TrainArgs:
    """Read a YAML/JSON training config and apply ``key: value`` overrides.

    Dotted keys address the nested model config (``model.n_layer``); unknown keys and bad values
    fail with a :class:`ConfigError` naming the key.
    """
    d: dict[str, Any] = {}
    if config is not None:
        path = Path(config)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: config file not found")
        import yaml

        try:
            d = yaml.safe_load(path.read_text()) if path.suffix in (".yaml", ".yml") else json.loads(path.read_text())
        except (yaml.YAMLError, json.JSONDecodeError) as e:
            raise ConfigError(f"{path}: not valid YAML/JSON ({e})") from None
        d = d or {}
        if not isinstance(d, dict):
            raise ConfigError(f"{path}: expected a mapping of keys to values")
        d.pop("kind", None)
    d = dict(d)
    model = dict(d.get("model") or {}) if isinstance(d.get("model", {}), dict) else d.get("model")
    for key, value in (overrides or {}).items():
        if key.startswith("model."):
            if not isinstance(model, dict):
                raise ConfigError("model: must be a mapping to set model.* keys")
            sub = key[len("model."):]
            if not sub or "." in sub:
                raise ConfigError(f"{key}: model keys are one level deep (model.n_layer)")
            model[sub] = _parse_value(value)
        elif "." in key:
            raise ConfigError(f"{key}: unknown key; only model.* keys are nested")
        else:
            d[key] = value
    if model is not None and (model or "model" in d):
        d["model"] = model
    return TrainArgs.from_dict(d)


def cli_train(config: str, resume: bool = False, progress: bool = True, **overrides: Any) -> int:
    """Train a language model on a corpus, e.g. `spikelm train configs/rwkv6-tiny.yaml --max-steps 200`.

    Any other --key value pair overrides a TrainArgs key (--lr 3e-4, --out-dir runs/x); nested model
    keys are dotted (--model.n_layer 4). For several processes or GPUs launch it with
    `torchrun --nproc-per-node N -m spikelm train CONFIG ...`. Writes out_dir/log.csv,
    out_dir/log.jsonl, out_dir/summary.json, checkpoints under out_dir/checkpoints (save_every),
    and the final model in out_dir/final (loadable by `spikelm eval` and spikelm.load).

    Keys (TrainArgs): model.* (kind, n_layer, n_embd, ...), data, tokenizer, ctx_len, batch_size (global),
    grad_accum, max_steps, max_tokens, max_minutes, lr, min_lr, warmup_steps, betas, eps, weight_decay,
    grad_clip, eval_every, eval_batches, save_every, keep_checkpoints, out_dir, seed, precision
    (auto, fp32, bf16, fp16), device (auto, cpu, cuda, cuda:N), compile, log_every.

    Args:
        config: a YAML or JSON file of TrainArgs keys (see configs/*.yaml).
        resume: continue from the latest checkpoint in out_dir (starts fresh if there is none).
        progress: show a progress bar.
    """
    args = load_train_args(config, overrides)
    result = train(args, resume=resume, progress=progress)
    if result.final_path is not None:
        bits = result.val_bits
        print(f"{result.steps} steps, {result.tokens:,} tokens in {result.elapsed_s:.1f} s; "
              f"validation loss {result.val_loss:.4f} nats/token ({bits:.4f} bits/token); "
              f"model: {result.final_path}")
    return 0
