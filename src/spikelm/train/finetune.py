"""Spiking-aware fine-tuning (``spikelm finetune``): a converted RWKV learns back what conversion lost.

Conversion after training (:mod:`spikelm.convert`) calibrates each site's spike scale once and
never revisits the weights; with the paper's codes the loss in perplexity is large at every site.
Fine-tuning trains the *spiking* model end to end, its forward pass exactly the one it will run
at inference (the levels are the spikes, :func:`~spikelm.spiking.encoding.mhse_decode`):

* **gradients through the spikes**: straight through inside each code's range, zero where a value
  is clipped (:class:`~spikelm.spiking.layers.SpikeEncoder` with ``straight_through``);
* **learned scales** (LSQ, Esser et al. ICLR 2020): every encoder's scale is a parameter with
  LSQ's gradient and gradient scale (:func:`~spikelm.spiking.lsq.mhse_learned_step`), kept
  positive by a floor after each step, per tensor or per channel as converted;
* **distillation** (Hinton et al. 2015) from the ANN teacher's logits, computed on the fly for each
  batch (nothing is cached on disk): ``T**2 KL(teacher || student)`` on softened logits
  (:func:`~spikelm.ops.cross_entropy.kl_distill_fp32`), optionally plus the next-token loss;
* an optional **spike-rate penalty** for the energy side of the trade-off (below);
* ``--train scales|norms|lora|all``: what else learns (:class:`FinetuneArgs`).

The run is an ordinary training run of :mod:`.loop` (config file and flags, the out_dir lock,
exact ``--resume``, the divergence guard, a checkpoint on SIGINT/SIGTERM, log.csv, DDP under
``torchrun``, bf16 autocast on CUDA) with :class:`Distillation` as its objective. Its
``final/`` is an ordinary converted folder: low-rank updates merged into the weights, scales back
to buffers, the spike codes unchanged, so ``eval``, ``energy``, ``generate``, ``sweep`` and the
step-by-step simulation read it as any converted model (the simulation equals the closed form bit
for bit: the scales are float32 and positive, as calibrated ones are). Intermediate checkpoints
of a ``lora`` run hold the unmerged adapters: they are for ``--resume``.

The rate penalty. A multi-head code's spike count is the popcount of its level, which has no
useful derivative. The penalty is the mean, over every encoded value of a batch, of
``min(|x| / s, A_max) / A_max``: exactly the firing rate of a rate code (one spike per unit of
level), and for a multi-head code a monotone proxy (a smaller magnitude has a lower level, and
lower levels have fewer spikes on average). Its gradient lowers magnitudes and raises scales.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from pathlib import Path
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from ..checkpoints import describe, load
from ..config import CALIBRATIONS, SITES, WEIGHT_BITS, ConfigError, _require
from ..runargs import RunArgs
from ..convert import PRESETS, attach_encoders, convert, detach_encoders, encoders, preset_config
from ..data.text import calibration_batches
from ..errors import CheckpointError, SpikelmError
from ..models.quantized import quantize_weights
from ..evaluate.sweep import Prepared
from ..markdown import md_table
from ..ops.cross_entropy import cross_entropy_fp32, kl_distill_fp32
from ..progress import ProgressFn
from ..spiking.layers import SpikeEncoder
from .checkpointing import claim_run_folder, fixed_mismatch, read_json
from .loop import Objective, TrainResult, param_groups, train

log = logging.getLogger("spikelm.train")

__all__ = ["FinetuneArgs", "FINETUNE_MODES", "finetune", "with_finetuned", "format_finetuned", "Distillation", "LowRankDelta", "set_trainable", "merge_low_rank", "SCALE_FLOOR"]

SCALE_FLOOR = 1e-8  # scales are kept at or above this (calibration's floor for an all-zero site)


FINETUNE_MODES = ("scales", "norms", "lora", "all")


@dataclass
class FinetuneArgs(RunArgs):
    """Spiking-aware fine-tuning (``spikelm finetune``): :class:`RunArgs` plus what is tuned and how.

    ``checkpoint``: the model to start from: an ANN (then ``preset`` names the encoding, and it is
    calibrated on ``calib_data`` as ``spikelm convert`` does) or an already converted folder (its
    encoding and scales are kept; ``preset`` must be empty or the same). ``teacher``: the ANN whose
    logits the student learns (default: ``checkpoint`` itself, or for a converted folder the ANN it
    is made of, its weights without the encoders). ``sites``: ``time_mix`` or ``all``.
    ``calibration``: how an ANN's scales are first set (``convert --calibration``): ``mse`` by
    default, the clip whose spike code has the least squared error, a far better start than the
    papers' maximum (measured: SpikeRWKV-4L at all sites of a 4x128 RWKV-6, +48.7% perplexity
    converted at the maximum, +4.6% at ``mse``, before any training); ``max`` or ``percentile``
    start where ``spikelm convert`` does by default. ``weight_bits``: the precision ``final/``'s
    weight matrices are stored at (32: float as trained; 16 or 8: quantised after fine-tuning, as
    ``--weight-bits`` of the other commands; its validation gap is measured again at that
    precision and reported as ``val_gap_pct_at_weight_bits``).

    ``train`` chooses what learns, the encoder scales always (LSQ):

    * ``scales``: the encoder scales only;
    * ``norms``: the scales and every LayerNorm / GroupNorm gain and bias;
    * ``lora``: the scales and a low-rank update (rank ``lora_rank``, scaling
      ``lora_alpha / lora_rank``) of every linear layer inside the blocks, merged into the weights
      at the end;
    * ``all``: the scales and every parameter of the model.

    The loss is ``kd_temperature**2 * KL(teacher || student)`` on logits softened by
    ``kd_temperature``, plus ``ce_weight`` times the next-token cross-entropy, plus
    ``rate_penalty`` times the mean normalised input magnitude of the spiking sites (the firing
    rate of a rate code, a monotone proxy of a multi-head code's). ``scale_lr``: the scales' step
    relative to their size: each encoder's learning rate is ``scale_lr`` times its current scale
    (mean over channels), following the same warm-up and cosine as ``lr``.
    ``tokenizer``: ``auto`` takes the checkpoint's.
    """

    kind: ClassVar[str] = "finetune"
    FIXED: ClassVar[tuple[str, ...]] = ("checkpoint", "teacher", "preset", "sites", "calibration", "train", "lora_rank")

    checkpoint: str = ""
    teacher: str = ""
    preset: str = ""
    sites: str = "time_mix"
    calib_data: str = "default"
    calibration: str = "mse"
    weight_bits: int = 32
    calib_batches: int = 8
    calib_ctx: int = 256
    train: str = "all"
    kd_temperature: float = 1.0
    ce_weight: float = 0.0
    rate_penalty: float = 0.0
    scale_lr: float = 0.1
    lora_rank: int = 8
    lora_alpha: float = 16.0
    # run defaults for a short fine-tune (RunArgs' are for training from scratch)
    tokenizer: str = "auto"
    ctx_len: int = 256
    batch_size: int = 8
    max_steps: int = 100
    lr: float = 3e-4
    min_lr: float = 3e-5
    warmup_steps: int = 10
    weight_decay: float = 0.0
    eval_every: int = 25
    eval_batches: int = 4
    save_every: int = 50
    keep_checkpoints: int = 2
    out_dir: str = "runs/finetune"

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(isinstance(self.checkpoint, str) and self.checkpoint.strip() != "", "checkpoint",
                 "name the model to fine-tune (an ANN checkpoint with --preset, or a converted folder)")
        _require(self.sites in SITES, "sites", f"unknown site set {self.sites!r}; choose one of {', '.join(SITES)}")
        _require(self.calibration in CALIBRATIONS, "calibration",
                 f"unknown method {self.calibration!r}; choose one of {', '.join(CALIBRATIONS)}")
        _require(self.weight_bits in WEIGHT_BITS, "weight_bits",
                 f"must be one of {', '.join(map(str, WEIGHT_BITS))}, got {self.weight_bits!r}")
        _require(self.train in FINETUNE_MODES, "train", f"unknown mode {self.train!r}; choose one of {', '.join(FINETUNE_MODES)}")
        for k in ("calib_batches", "calib_ctx", "lora_rank"):
            v = getattr(self, k)
            _require(isinstance(v, int) and v >= 1, k, f"must be an integer >= 1, got {v!r}")
        _require(self.kd_temperature > 0, "kd_temperature", f"must be > 0, got {self.kd_temperature!r}")
        for k in ("ce_weight", "rate_penalty", "scale_lr"):
            _require(getattr(self, k) >= 0, k, f"must be >= 0, got {getattr(self, k)!r}")
        _require(self.lora_alpha > 0, "lora_alpha", f"must be > 0, got {self.lora_alpha!r}")


# ---------------------------------------------------------------------------- low-rank updates
class LowRankDelta(nn.Module):
    """A low-rank update ``W + (B A) * alpha / r`` of a weight (LoRA, Hu et al. 2021), as a
    parametrization of the linear layer's ``weight`` (the layer keeps its type and its forward).
    ``B`` starts at zero, so the update starts at nothing; ``A`` from a seeded generator."""

    def __init__(self, out_features: int, in_features: int, rank: int, alpha: float, generator: torch.Generator,
                 device: torch.device | None = None) -> None:
        super().__init__()
        a = torch.empty(rank, in_features)
        bound = 1.0 / math.sqrt(in_features)  # kaiming_uniform_(a=sqrt(5)), nn.Linear's own init
        a.uniform_(-bound, bound, generator=generator)
        self.lora_A = nn.Parameter(a.to(device))
        self.lora_B = nn.Parameter(torch.zeros(out_features, rank, device=device))
        self.scaling = alpha / rank

    def forward(self, weight: Tensor) -> Tensor:
        return weight + (self.lora_B @ self.lora_A).to(weight.dtype) * self.scaling


def _block_linears(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    """Every linear layer inside the blocks (not the embedding or the head)."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear) and n.startswith("blocks.")]


def add_low_rank(model: nn.Module, rank: int, alpha: float, seed: int) -> int:
    """Give every block linear layer a :class:`LowRankDelta`; freeze its own weight. Returns the count."""
    gen = torch.Generator().manual_seed(seed)
    layers = _block_linears(model)
    for _, m in layers:
        w = m.weight
        rank_here = min(rank, w.shape[0], w.shape[1])
        parametrize.register_parametrization(m, "weight", LowRankDelta(w.shape[0], w.shape[1], rank_here, alpha, gen, w.device))
        m.parametrizations.weight.original.requires_grad_(False)
    return len(layers)


def merge_low_rank(model: nn.Module) -> nn.Module:
    """Fold every :class:`LowRankDelta` into its weight (in place): a plain ``weight`` again."""
    for _, m in list(model.named_modules()):
        if parametrize.is_parametrized(m, "weight"):
            parametrize.remove_parametrizations(m, "weight", leave_parametrized=True)
    return model


# ---------------------------------------------------------------------------- what learns
def _norm_modules(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (nn.LayerNorm, nn.GroupNorm))]


def set_trainable(model: nn.Module, mode: str, lora_rank: int = 8, lora_alpha: float = 16.0, seed: int = 0) -> nn.Module:
    """Make a converted model's encoder scales learnable (always) and choose what else learns:
    ``scales`` nothing else, ``norms`` the LayerNorm/GroupNorm parameters, ``lora`` a low-rank
    update of every block linear layer, ``all`` every parameter. Sets the encoders'
    straight-through mode (used only where gradients are enabled)."""
    if mode not in FINETUNE_MODES:
        raise ConfigError(f"train: unknown mode {mode!r}; choose scales, norms, lora or all")
    sites = list(encoders(model))
    if not sites:
        raise SpikelmError("fine-tuning needs a converted model (spike encoders); convert it first or pass --preset")
    for p in model.parameters():
        p.requires_grad_(mode == "all")
    if mode == "norms":
        for m in _norm_modules(model):
            for p in m.parameters():
                p.requires_grad_(True)
    if mode == "lora":
        add_low_rank(model, lora_rank, lora_alpha, seed)
    for _, e in sites:
        e.learn_scale(True)
        e.straight_through = True
    return model


def _freeze_scales(model: nn.Module) -> None:
    """Scales back to buffers and encoders back to inference mode: an ordinary converted model."""
    for _, e in encoders(model):
        e.straight_through = False
        e.learn_scale(False)


# ---------------------------------------------------------------------------- the objective
class Distillation(Objective):
    """Distillation from a frozen ANN teacher, learned scales, an optional rate penalty (module
    docstring). ``attach`` gives it the student and teacher once they are built."""

    log_fields = ("val_gap_pct",)

    def __init__(self, args: FinetuneArgs) -> None:
        self.args = args
        self.teacher: nn.Module | None = None
        self.teacher_val: float | None = None
        self.start_val: float | None = None  # the converted student's, before fine-tuning (a fresh run)
        self.quant_val: float | None = None  # final/'s, at weight_bits < 32 (one process)
        self.run: Any = None
        self.last_val: float | None = None
        self._rate_sum: Tensor | None = None
        self._rate_n = 0
        self._hooks: list[Any] = []

    def attach(self, student: nn.Module, teacher: nn.Module) -> None:
        self.teacher = teacher.eval().requires_grad_(False)
        if self.args.rate_penalty > 0:
            self._hooks = [e.register_forward_hook(self._count_rate) for _, e in encoders(student)]

    def _count_rate(self, mod: SpikeEncoder, inputs: tuple[Tensor, ...], _out: Tensor) -> None:
        if not torch.is_grad_enabled():  # validation and inference pay nothing
            return
        x = inputs[0]
        u = (x.float().abs() / mod.scale).clamp(max=mod.a_max).sum() / mod.a_max
        self._rate_sum = u if self._rate_sum is None else self._rate_sum + u
        self._rate_n += x.numel()

    # -- the loop's hooks
    def param_groups(self, model: nn.Module, args: FinetuneArgs) -> list[dict[str, Any]]:  # type: ignore[override]
        """The scales one group per encoder (no weight decay; learning rate ``scale_lr`` times the
        scale's current size, following the schedule of ``lr``: a relative step, so a scale can
        neither overshoot to zero nor crawl), then the other trainable parameters."""
        groups = []
        scale_ids = set()
        for _, e in encoders(model):
            groups.append({"params": [e.scale], "weight_decay": 0.0, "lr_scale": args.scale_lr / args.lr, "lr_relative": True})
            scale_ids.add(id(e.scale))
        for g in param_groups(model, args.weight_decay):
            rest = [p for p in g["params"] if id(p) not in scale_ids]
            if rest:
                groups.append({**g, "params": rest})
        return groups

    def start(self, run: Any) -> None:
        self.run = run
        self.teacher.to(run.device)
        self.teacher_val = run.validate(self.teacher)
        if run.c.step == 0:
            self.start_val = run.validate()
        else:  # a resume: the latest validation, and the converted model's from a finished run's summary
            self.last_val = run.c.val_loss
            earlier = _read_json(run.out_dir / "summary.json")
            self.start_val = earlier.get("converted_val_loss") if earlier else None
        if run.dist.is_main:
            log.info("teacher (the ANN): validation loss %.4f nats/token (%.4f bits/token)", self.teacher_val,
                     self.teacher_val / math.log(2))
            if self.start_val is not None:
                log.info("converted, before fine-tuning: validation loss %.4f nats/token, gap %+.2f%% perplexity",
                         self.start_val, self.gap_pct(self.start_val))

    def loss(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        with torch.no_grad():
            t_logits, _ = self.teacher(x)
        self._rate_sum, self._rate_n = None, 0
        logits, _ = model(x)
        flat = logits.flatten(0, 1)
        loss = kl_distill_fp32(flat, t_logits.flatten(0, 1), self.args.kd_temperature)
        if self.args.ce_weight > 0:
            loss = loss + self.args.ce_weight * cross_entropy_fp32(flat, y.flatten())
        if self.args.rate_penalty > 0 and self._rate_sum is not None:
            loss = loss + self.args.rate_penalty * (self._rate_sum / max(1, self._rate_n))
        self._rate_sum = None
        return loss

    def after_step(self, model: nn.Module) -> None:
        with torch.no_grad():
            for _, e in encoders(model):
                e.scale.clamp_(min=SCALE_FLOOR)

    def gap_pct(self, val_loss: float | None) -> float | None:
        """Perplexity gap to the teacher on the validation windows, in percent."""
        if val_loss is None or self.teacher_val is None:
            return None
        return 100.0 * (math.exp(val_loss - self.teacher_val) - 1.0)

    def row_extra(self, val_loss: float | None) -> dict[str, Any]:
        if val_loss is not None:
            self.last_val = val_loss
        gap = self.gap_pct(val_loss)
        return {"val_gap_pct": None if gap is None else round(gap, 4)}

    def final_model(self, model: nn.Module) -> nn.Module:
        for h in self._hooks:
            h.remove()
        self._hooks = []
        merge_low_rank(model)
        _freeze_scales(model)
        for p in model.parameters():
            p.requires_grad_(True)
        if self.args.weight_bits != 32:
            quantize_weights(model, self.args.weight_bits)
            if self.run is not None and self.run.dist.world_size == 1:  # one process: validate here
                self.quant_val = self.run.validate(model)
                log.info("final weights at %d bits: validation loss %.4f nats/token, gap %+.2f%% perplexity",
                         self.args.weight_bits, self.quant_val, self.gap_pct(self.quant_val))
            else:
                log.info("final weights at %d bits; measure them with `spikelm eval` (not validated under torchrun)",
                         self.args.weight_bits)
        return model

    def final_extra(self) -> dict[str, Any]:
        a = self.args
        return {"finetune": {"checkpoint": os.path.abspath(a.checkpoint), "teacher": os.path.abspath(a.teacher or a.checkpoint),
                             "train": a.train, "kd_temperature": a.kd_temperature, "ce_weight": a.ce_weight,
                             "rate_penalty": a.rate_penalty, "teacher_val_loss": self.teacher_val}}

    def summary(self) -> dict[str, Any]:
        out = {"teacher_val_loss": self.teacher_val, "val_gap_pct": self.gap_pct(self.last_val),
               "weight_bits": self.args.weight_bits}
        if self.quant_val is not None:
            out.update(val_loss_at_weight_bits=self.quant_val, val_gap_pct_at_weight_bits=self.gap_pct(self.quant_val))
        if self.start_val is not None:
            out.update(converted_val_loss=self.start_val, converted_gap_pct=self.gap_pct(self.start_val))
        return out


# ---------------------------------------------------------------------------- student and teacher
def _recorded_finetune(path: str) -> dict[str, Any] | None:
    try:
        cfg = describe(path)["config"]
    except (CheckpointError, OSError):
        return None
    return cfg.get("finetune") if isinstance(cfg, dict) else None


def _models(args: FinetuneArgs, resuming: bool, progress: ProgressFn | None) -> tuple[nn.Module, nn.Module]:
    """(student, teacher) on the CPU: the student converted (calibrated, unless a resume is about
    to restore its scales) with its trainable parts set up; the teacher the frozen ANN."""
    student = load(args.checkpoint)
    is_converted = getattr(student, "encoding", None) is not None
    if is_converted:
        enc = student.encoding
        if args.preset and _code(preset_config(args.preset, args.sites)) != _code(enc):
            raise ConfigError(f"preset: {args.checkpoint} is already converted ({enc.encoding}, T={enc.T}, l={enc.layers}, "
                              f"sites {enc.sites}); leave --preset out to fine-tune it as it is")
        earlier = _recorded_finetune(args.checkpoint)
        if earlier is not None and not args.teacher:
            raise ConfigError(f"teacher: {args.checkpoint} was fine-tuned already, so its weights are no longer its ANN's; "
                              f"pass --teacher (it was distilled from {earlier.get('teacher')})")
    else:
        if not args.preset:
            raise ConfigError(f"preset: {args.checkpoint} is an ANN; name the spike encoding with --preset "
                              "(SNN-RWKV-3, SNN-RWKV-4, SpikeRWKV-3L, SpikeRWKV-4L, SpikeRWKV-5L, spikelm-4L)")
        enc = preset_config(args.preset, args.sites).replace(calibration=args.calibration)
        if resuming:
            attach_encoders(student, enc)  # the structure; the checkpoint restores the scales
        else:
            batches = calibration_batches(args.calib_data, student.tokenizer_name, args.calib_batches, 4,
                                          args.calib_ctx, progress=progress)
            convert(student, enc, batches)
    if args.teacher:
        teacher = load(args.teacher)
        if getattr(teacher, "encoding", None) is not None:
            raise ConfigError(f"teacher: {args.teacher} is a converted (spiking) model; the teacher is the ANN")
    else:
        teacher = load(args.checkpoint)
        if is_converted:
            detach_encoders(teacher)  # the same weights without the encoders: the ANN it was made of
    for what in ("vocab_size", "tokenizer"):
        a, b = getattr(student.cfg, what, None), getattr(teacher.cfg, what, None)
        if a != b:
            raise ConfigError(f"teacher: its {what} {b!r} differs from the student's {a!r}; distillation needs the same vocabulary")
    set_trainable(student, args.train, args.lora_rank, args.lora_alpha, args.seed)
    return student, teacher


def resolve_tokenizer(args: FinetuneArgs) -> FinetuneArgs:
    """``tokenizer: auto`` becomes the checkpoint's; another value must be the same. A checkpoint of
    another family (SpikeGPT, RWKV-4) is refused here, before anything is written."""
    cfg = describe(args.checkpoint)["config"]
    if cfg.get("kind") not in (None, "rwkv6", "rwkv7"):  # before the out_dir is claimed
        raise ConfigError(f"checkpoint: spiking-aware fine-tuning converts RWKV-6 and RWKV-7 models; {args.checkpoint} is a "
                          f"{cfg['kind']} model (SpikeGPT is spiking already: train it with `spikelm train`)")
    own = cfg.get("tokenizer") or "world"
    if args.tokenizer == "auto":
        return args.replace(tokenizer=own)
    if args.tokenizer != own:
        raise ConfigError(f"tokenizer: {args.checkpoint} uses the {own!r} tokenizer, not {args.tokenizer!r}; leave it at auto")
    return args


def finetune(args: FinetuneArgs, *, resume: bool = False, resume_from: str | os.PathLike | None = None,
             progress: ProgressFn | None = None, overwrite: bool = False) -> TrainResult:
    """Fine-tune ``args.checkpoint``'s spiking conversion (see the module docstring); ``final/`` is
    a converted folder. Its out_dir follows the one output rule (:func:`.loop.claim_run_dir`, as
    ``finetune``'s: a folder of an earlier fine-tuning is resumed, a training's is not).
    Raises what :func:`.loop.train` raises."""
    args = resolve_tokenizer(args)
    objective = Distillation(args)

    def build(resuming: bool) -> nn.Module:
        student, teacher = _models(args, resuming, progress)
        objective.attach(student, teacher)
        n_train = sum(p.numel() for p in student.parameters() if p.requires_grad)
        log.info("fine-tuning %s: %s sites, mode %s, %s trainable parameters (%d encoder scales tensors)",
                 args.checkpoint, student.encoding.sites, args.train, f"{n_train:,}", sum(1 for _ in encoders(student)))
        return student

    return train(args, resume=resume, resume_from=resume_from, progress=progress, build=build, objective=objective,
                 overwrite=overwrite, command="finetune")


def _code(enc: Any) -> dict[str, Any]:
    """An encoding without how its scales were calibrated: the spike code itself."""
    return {k: v for k, v in enc.to_dict().items() if k not in ("calibration", "percentile", "granularity")}


# ---------------------------------------------------------------------------- fine-tuned sweep rows
def _preset_of(enc: Any) -> str | None:
    """The preset whose spike code ``enc`` is, however calibrated (None for an MHSE grid setting)."""
    from_presets = [name for name in PRESETS if _code(preset_config(name, enc.sites)) == _code(enc)]
    return from_presets[0] if from_presets else None


def with_finetuned(settings: list[tuple[str, Any]], checkpoint: str, folder: Path, data: str, calib_data: str, steps: int,
                   mode: str, device: str, loader: Callable[[Path], nn.Module],
                   progress: ProgressFn | None = None) -> list[tuple[str, Any]]:
    """``settings`` of a sweep with a fine-tuned row (``NAME +FT``, a :class:`~spikelm.evaluate.sweep.Prepared`)
    after each preset's row: ``checkpoint`` converted with that preset and fine-tuned for ``steps``
    steps on ``data`` (train split), into ``folder/<row>``. A folder holding that fine-tune already
    is resumed (or, if finished, reused). ``loader`` reads the result (the sweep's device and dtype).
    Every row's folder is checked here, before the sweep's work (the one output rule): a folder
    holding a file of the user's stops the sweep now, not after its first rows."""
    out: list[tuple[str, Any]] = []
    seen: set[tuple[str, str]] = set()
    for name, enc in settings:
        out.append((name, enc))
        preset = _preset_of(enc)
        if preset is None or (preset, enc.sites) in seen:
            continue
        seen.add((preset, enc.sites))
        name = name.removesuffix(f" [{enc.calibration}]")
        args = FinetuneArgs(checkpoint=str(checkpoint), preset=preset, sites=enc.sites, data=data, calib_data=calib_data,
                            max_steps=steps, train=mode, device=device, out_dir=str(folder / f"{preset}-{enc.sites}"))
        claim_run_folder(args.out_dir, command="finetune")
        out.append((f"{name} +FT", Prepared(enc, *_finetuned_row(args, loader, progress))))
    return out


def _finetuned_row(args: FinetuneArgs, loader: Callable[[Path], nn.Module],
                   progress: ProgressFn | None) -> tuple[Callable[[], nn.Module], Callable[[], dict[str, Any]]]:
    """(make, info) of one fine-tuned sweep row: fine-tune once, on first use; load the result each time."""
    done: dict[str, Any] = {}

    def make() -> nn.Module:
        if "summary" not in done:
            finished = _finished(args)
            if finished is None:  # resume a stopped run, or start one
                finetune(args, resume=True, progress=progress)
                finished = _read_json(Path(args.out_dir) / "summary.json")
            done["summary"] = finished
        return loader(Path(args.out_dir) / "final")

    def info() -> dict[str, Any]:
        s = done["summary"]
        return {"finetune_steps": s["steps"], "finetune_tokens": s["tokens"], "finetune_s": round(s["elapsed_s"], 1),
                "finetune_val_gap_before_pct": s.get("converted_gap_pct"), "finetune_val_gap_pct": s.get("val_gap_pct"),
                "finetune_train": args.train}

    return make, info


def format_finetuned(rows: list[dict[str, Any]]) -> str:
    """What each fine-tuned sweep row cost and gained (Markdown)."""
    def pct(x: float | None) -> str:
        return "-" if x is None else f"{x:+.2f}%"

    body = [[r["model"], r["finetune_train"], f"{r['finetune_steps']}", f"{r['finetune_tokens']:,}", f"{r['finetune_s']:.0f}",
             pct(r["finetune_val_gap_before_pct"]), pct(r["finetune_val_gap_pct"]), pct(r["ppl_gap_pct"])] for r in rows]
    return md_table(["Model", "trained", "steps", "tokens", "wall s", "valid gap converted", "valid gap fine-tuned",
                     "test PPL gap"], body, "llrrrrrr")


def _read_json(path: Path) -> dict[str, Any] | None:
    """:func:`.checkpointing.read_json`, or None where the file is missing or not a JSON object."""
    try:
        return read_json(path)
    except CheckpointError:
        return None


def _finished(args: FinetuneArgs) -> dict[str, Any] | None:
    """The summary of a fine-tune already finished in ``args.out_dir`` with the same fixed keys and
    at least ``max_steps`` steps (reused as it is: nothing in the folder is touched), else None."""
    out = Path(args.out_dir)
    summary, saved = _read_json(out / "summary.json"), _read_json(out / "train_args.json")
    if summary is None or saved is None or not (out / "final" / "config.json").is_file():
        return None
    if fixed_mismatch(saved, args) is not None:
        return None  # finetune() names the difference
    return summary if int(summary.get("steps", 0)) >= args.max_steps else None
