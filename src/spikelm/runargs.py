"""The arguments of an optimisation run: :class:`RunArgs` (what every run needs) and
:class:`TrainArgs` (training a model from scratch). Typed and torch-free like :mod:`spikelm.config`,
whose :class:`~spikelm.config.Config` they extend (validated in ``__post_init__``, saved as JSON
beside the run)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from .config import Config, ConfigError, _require

__all__ = ["RunArgs", "TrainArgs", "PRECISIONS", "DISTRIBUTED", "PARAM_DTYPES"]


PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DISTRIBUTED = ("ddp", "fsdp")
PARAM_DTYPES = ("fp32", "bf16", "fp16")


def _model_config_class(kind: str) -> type[Config] | None:
    """The :class:`Config` subclass whose ``kind`` is ``kind`` (searched among all subclasses).

    Model families add their config class to this module (``RWKV6Config``, ``SpikeGPTConfig``...),
    so a training config's nested ``model`` dict is validated by the same code that builds the
    model, without a registry to keep in sync.
    """
    stack = list(Config.__subclasses__())
    while stack:
        cls = stack.pop()
        if cls.kind == kind:
            return cls
        stack.extend(cls.__subclasses__())
    return None


@dataclass
class RunArgs(Config):
    """What every optimisation run needs (training from scratch, :class:`TrainArgs`, and
    spiking-aware fine-tuning, :class:`FinetuneArgs`); saved as ``train_args.json`` in every
    checkpoint.

    Length of the run: ``max_steps`` optimizer steps, or, when ``max_tokens > 0``, as many steps as
    it takes to see that many tokens (it replaces ``max_steps``). ``max_minutes > 0`` additionally
    stops the run gracefully once that much training time has passed (evaluating and saving the
    final model as usual); the learning-rate cosine then follows the part of the budget spent (or
    of the steps, whichever ends first), so the rate reaches ``min_lr`` at the end of the run.

    ``batch_size`` is the *global* batch in sequences of ``ctx_len`` tokens; it is split over the
    ``grad_accum`` micro-steps and over the processes of a ``torchrun`` launch, so the loss
    trajectory does not depend on how many processes share the work.
    ``eval_every`` / ``save_every`` / ``log_every`` count optimizer steps (0 disables periodic
    evaluation or checkpoints; the end of the run always evaluates). ``keep_checkpoints``: how
    many of the newest checkpoints to keep (0 keeps all). ``grad_clip`` 0 disables clipping.
    ``precision``: ``auto`` (bf16 autocast on a GPU that supports it, else fp16 autocast with a
    gradient scaler; fp32 on CPU) or one of ``fp32``, ``bf16``, ``fp16``. ``device``: ``auto``
    (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``. ``tf32``: with ``precision: fp32`` on
    CUDA, let fp32 matrix products use TF32 tensor cores (10-bit mantissa, several times faster on
    Ampere and newer; about 1e-3 relative error per product, the WKV chunked forms' included);
    ``false`` keeps full fp32. It has no effect on the CPU or under bf16/fp16 autocast
    (:func:`spikelm.devices.tf32`).

    ``distributed`` (several processes under ``torchrun``): ``ddp`` keeps the whole model, its
    gradients and its AdamW state on every process (16 bytes per parameter in fp32); ``fsdp``
    shards all three over the processes with FSDP2 (``torch.distributed.fsdp.fully_shard``, one
    group per block), saves checkpoints sharded (``torch.distributed.checkpoint``) and the final
    model whole. ``fsdp_param_dtype``: the dtype FSDP gathers the parameters in and computes with
    (its mixed-precision policy; gradients are reduced in fp32 and the sharded master weights stay
    fp32 either way). ``fp32`` (default) leaves the casts to autocast, exactly as under DDP; ``bf16``
    or ``fp16`` halves the gathering traffic and the gathered block's memory, and rounds every
    parameter (decays and LayerNorm gains included) to that dtype for the forward and backward, as
    fully-bf16 trainers do. In a single process both are plain training.
    """

    kind: ClassVar[str] = "run"
    FIXED: ClassVar[tuple[str, ...]] = ()  # keys a resume must not change (they define the model)

    data: str = "default"
    tokenizer: str = "bytes"
    ctx_len: int = 128
    batch_size: int = 16
    grad_accum: int = 1
    max_steps: int = 1000
    max_tokens: int = 0
    max_minutes: float = 0.0
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_steps: int = 100
    betas: tuple[float, float] = (0.9, 0.99)
    eps: float = 1e-8
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    eval_every: int = 200
    eval_batches: int = 8
    save_every: int = 0
    keep_checkpoints: int = 3
    out_dir: str = "runs/train"
    seed: int = 0
    precision: str = "auto"
    device: str = "auto"
    compile: bool = False
    log_every: int = 10
    tf32: bool = True
    distributed: str = "ddp"
    fsdp_param_dtype: str = "fp32"

    def __post_init__(self) -> None:
        for k in ("data", "tokenizer", "out_dir"):
            _require(isinstance(getattr(self, k), str) and getattr(self, k).strip() != "", k, "must be a non-empty string")
        for k in ("ctx_len", "batch_size", "grad_accum", "eval_batches", "log_every"):
            v = getattr(self, k)
            _require(isinstance(v, int) and v >= 1, k, f"must be an integer >= 1, got {v!r}")
        for k in ("max_steps", "max_tokens", "warmup_steps", "eval_every", "save_every", "keep_checkpoints", "seed"):
            v = getattr(self, k)
            _require(isinstance(v, int) and v >= 0, k, f"must be an integer >= 0, got {v!r}")
        _require(self.max_steps > 0 or self.max_tokens > 0, "max_steps", "set max_steps or max_tokens to a positive number")
        _require(self.batch_size % self.grad_accum == 0, "batch_size",
                 f"the global batch {self.batch_size} must be divisible by grad_accum {self.grad_accum}")
        _require(self.max_minutes >= 0, "max_minutes", f"must be >= 0 (0: no time limit), got {self.max_minutes!r}")
        _require(self.lr > 0, "lr", f"must be > 0, got {self.lr!r}")
        _require(0 <= self.min_lr <= self.lr, "min_lr", f"must be in [0, lr={self.lr}], got {self.min_lr!r}")
        _require(len(self.betas) == 2 and all(0.0 <= b < 1.0 for b in self.betas), "betas",
                 f"must be two numbers in [0, 1), got {self.betas!r}")
        self.betas = (float(self.betas[0]), float(self.betas[1]))
        _require(self.eps > 0, "eps", f"must be > 0, got {self.eps!r}")
        _require(self.weight_decay >= 0, "weight_decay", f"must be >= 0, got {self.weight_decay!r}")
        _require(self.grad_clip >= 0, "grad_clip", f"must be >= 0 (0: no clipping), got {self.grad_clip!r}")
        _require(self.precision in PRECISIONS, "precision", f"unknown precision {self.precision!r}; choose one of {', '.join(PRECISIONS)}")
        _require(self.distributed in DISTRIBUTED, "distributed",
                 f"unknown {self.distributed!r}; choose one of {', '.join(DISTRIBUTED)}")
        _require(self.fsdp_param_dtype in PARAM_DTYPES, "fsdp_param_dtype",
                 f"unknown {self.fsdp_param_dtype!r}; choose one of {', '.join(PARAM_DTYPES)}")
        dev = self.device if isinstance(self.device, str) else ""
        _require(dev in ("auto", "cpu", "cuda") or (dev.startswith("cuda:") and dev[5:].isdigit()), "device",
                 f"must be auto, cpu, cuda or cuda:N, got {self.device!r}")

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.ctx_len

    @property
    def total_steps(self) -> int:
        """Optimizer steps of the whole run: ``max_steps``, or enough to see ``max_tokens`` tokens."""
        if self.max_tokens > 0:
            return -(-self.max_tokens // self.tokens_per_step)
        return self.max_steps


@dataclass
class TrainArgs(RunArgs):
    """A training run from scratch (``spikelm train``): :class:`RunArgs` plus the model to build.

    ``model`` is the nested model config with its ``kind`` (``{kind: rwkv6, n_layer: 2, ...}``);
    on the command line its keys are set with dotted names (``--model.n_layer 4``). If it has no
    ``tokenizer`` key, ``tokenizer`` is used; ``vocab_size``, if absent, is the tokenizer's.
    """

    kind: ClassVar[str] = "train"
    FIXED: ClassVar[tuple[str, ...]] = ("model",)

    model: dict[str, Any] = field(default_factory=lambda: {"kind": "rwkv6", "n_layer": 2, "n_embd": 64, "head_size": 16})

    def __post_init__(self) -> None:
        super().__post_init__()
        self.model = self._checked_model(self.model)

    def _checked_model(self, m: Any) -> dict[str, Any]:
        """Validate the nested model config with its own class; return it with coerced values.

        Only the keys given are kept (plus ``tokenizer``), so defaults that depend on the data
        (``vocab_size``) can still be filled in from the tokenizer when the model is built.
        """
        _require(isinstance(m, dict), "model", f"must be a mapping of model config keys with a `kind`, got {m!r}")
        m = dict(m)
        kind = m.get("kind")
        _require(isinstance(kind, str) and kind != "", "model.kind", "missing: name the model family, e.g. rwkv6")
        # Every model family's config names its tokenizer (``model.tokenizer_name``): the data's.
        m.setdefault("tokenizer", self.tokenizer)
        _require(m["tokenizer"] == self.tokenizer, "model.tokenizer",
                 f"{m['tokenizer']!r} differs from tokenizer {self.tokenizer!r} (the data's tokenizer)")
        cls = _model_config_class(kind)
        if cls is None:  # a family whose config class is not imported here (torch-free): its builder validates it
            return m
        body = {k: v for k, v in m.items() if k != "kind"}
        try:
            checked = cls.from_dict(body).to_dict()
        except ConfigError as e:
            msg = str(e)
            raise ConfigError(f"model: {msg}" if msg.startswith("unknown") else f"model.{msg}") from None
        return {"kind": kind, **{k: checked[k] for k in body}}


