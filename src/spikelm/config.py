"""Typed, torch-free configuration dataclasses.

Every config validates itself in ``__post_init__`` and fails with a :class:`ConfigError` that
names the offending key, so that a typo in a YAML file or a ``--key value`` override is caught
before any work starts.  Configs are saved as JSON (or YAML) beside the weights they describe.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar


from .errors import ConfigError

__all__ = [
    "ConfigError",
    "Config",
    "RWKV4Config",
    "RWKV6Config",
    "RWKV7Config",
    "EncodingConfig",
    "WeightQuantConfig",
    "WEIGHT_BITS",
    "SpikeGPTConfig",
    "SPIKEGPT_PRESETS",
]

C = TypeVar("C", bound="Config")


def _coerce(name: str, value: Any, tp: Any) -> Any:
    """Convert ``value`` (e.g. a string from the command line or YAML) to the annotated type."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):  # Optional[X] and X | None
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(name, value, inner[0])
    if origin in (tuple, list):
        if isinstance(value, str):
            value = [v for v in value.replace("(", "").replace(")", "").replace("[", "").replace("]", "").split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name}: expected a list, got {value!r}")
        elem = args[0] if args else str
        items = [_coerce(name, v, elem) for v in value]
        return tuple(items) if origin is tuple else items
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
            return False
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise ConfigError(f"{name}: expected true/false, got {value!r}")
    if tp in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"{name}: expected {tp.__name__}, got {value!r}")
        try:
            out = tp(value) if not isinstance(value, str) else tp(float(value)) if tp is int and "e" in value.lower() else tp(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{name}: expected {tp.__name__}, got {value!r}") from None
        if tp is int and isinstance(value, float) and value != int(value):
            raise ConfigError(f"{name}: expected an integer, got {value!r}")
        return out
    if tp is str:
        if not isinstance(value, (str, int, float)):
            raise ConfigError(f"{name}: expected a string, got {value!r}")
        return str(value)
    return value


@dataclass
class Config:
    """Base class: dict/JSON/YAML round trip, unknown-key detection, type coercion."""

    kind: ClassVar[str] = "config"

    @classmethod
    def fields(cls) -> dict[str, dataclasses.Field]:
        return {f.name: f for f in dataclasses.fields(cls) if f.init}

    @classmethod
    def from_dict(cls: type[C], d: dict[str, Any]) -> C:
        d = dict(d)
        d.pop("kind", None)
        known = cls.fields()
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise ConfigError(
                f"unknown {cls.kind} key(s) {', '.join(unknown)}; valid keys: {', '.join(sorted(known))}"
            )
        hints = typing.get_type_hints(cls)
        return cls(**{k: _coerce(k, v, hints[k]) for k, v in d.items()})

    def to_dict(self) -> dict[str, Any]:
        out = {"kind": self.kind}
        for k in self.fields():
            v = getattr(self, k)
            out[k] = list(v) if isinstance(v, tuple) else v
        return out

    def replace(self: C, **overrides: Any) -> C:
        d = self.to_dict()
        d.update(overrides)
        return type(self).from_dict(d)

    def save(self, path: str | Path) -> None:
        path = Path(path)
        text = json.dumps(self.to_dict(), indent=2) + "\n"
        if path.suffix in (".yaml", ".yml"):
            import yaml

            text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        path.write_text(text)

    @classmethod
    def load(cls: type[C], path: str | Path) -> C:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: config file not found")
        text = path.read_text()
        if path.suffix in (".yaml", ".yml"):
            import yaml

            d = yaml.safe_load(text) or {}
        else:
            d = json.loads(text)
        if not isinstance(d, dict):
            raise ConfigError(f"{path}: expected a mapping of keys to values")
        return cls.from_dict(d)


def _require(cond: bool, key: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"{key}: {msg}")


@dataclass
class RWKV6Config(Config):
    """Shape of an RWKV-6 ("Finch", x060) model, in the official names.

    ``head_size`` is N (64 in every released model); ``n_head = dim_att // head_size`` is H.
    ``dim_ffn`` defaults to the official ``int(3.5 * C) // 32 * 32``. The LoRA ranks are
    ``time_mix_extra_dim`` (Dm: 32, or 64 for C >= 4096) and ``time_decay_extra_dim``
    (Dd: 64, or 128 for C >= 4096), as in RWKV-LM's ``v6/src/model.py``.
    """

    kind: ClassVar[str] = "rwkv6"

    vocab_size: int = 65536
    n_layer: int = 12
    n_embd: int = 768
    head_size: int = 64
    dim_att: int = 0  # 0 -> n_embd
    dim_ffn: int = 0  # 0 -> int(3.5 * n_embd) // 32 * 32
    time_mix_extra_dim: int = 0  # 0 -> 32 (64 when n_embd >= 4096)
    time_decay_extra_dim: int = 0  # 0 -> 64 (128 when n_embd >= 4096)
    has_time_state: bool = False  # checkpoint carries a trained initial WKV state (att.time_state)
    tokenizer: str = "world"  # "world", "bytes", or a path to a tokenizer.json (GPT-NeoX BPE)

    def __post_init__(self) -> None:
        for k in ("vocab_size", "n_layer", "n_embd", "head_size"):
            _require(isinstance(getattr(self, k), int) and getattr(self, k) > 0, k, f"must be a positive integer, got {getattr(self, k)!r}")
        if self.dim_att == 0:
            self.dim_att = self.n_embd
        if self.dim_ffn == 0:
            self.dim_ffn = int(self.n_embd * 3.5) // 32 * 32
        if self.time_mix_extra_dim == 0:
            self.time_mix_extra_dim = 64 if self.n_embd >= 4096 else 32
        if self.time_decay_extra_dim == 0:
            self.time_decay_extra_dim = 128 if self.n_embd >= 4096 else 64
        _require(self.dim_att % self.head_size == 0, "dim_att", f"{self.dim_att} is not a multiple of head_size {self.head_size}")
        for k in ("dim_ffn", "time_mix_extra_dim", "time_decay_extra_dim"):
            _require(getattr(self, k) > 0, k, "must be positive")

    @property
    def n_head(self) -> int:
        return self.dim_att // self.head_size


def _rwkv7_lora_dim(n_embd: int, factor: float, power: float = 0.5) -> int:
    """RWKV-LM v7's suggested low-rank size: ``factor * C**power`` rounded to a multiple of 32, >= 32."""
    return max(32, int(round(factor * n_embd**power / 32)) * 32)


@dataclass
class RWKV7Config(Config):
    """Shape of an RWKV-7 ("Goose", x070) model, in the official names.

    ``head_size`` is N (64 in every released model); ``n_head = n_embd // head_size`` is H (the
    attention width is always ``n_embd`` in x070). ``dim_ffn`` defaults to ``4 * n_embd``. The
    low-rank sizes are the second dimension of ``att.w1`` (decay), ``att.a1`` (in-context learning
    rate), ``att.v1`` (value residual) and ``att.g1`` (output gate); they differ between released
    sizes, so a checkpoint's are always read from its shapes. Their defaults are RWKV-LM's
    ``RWKV-v7/train_temp`` suggestions, ``round(f * sqrt(C) / 32) * 32`` (at least 32) with f =
    2.5, 2.5, 1.7, 5: 64, 64, 32, 128 for C = 768.
    """

    kind: ClassVar[str] = "rwkv7"

    vocab_size: int = 65536
    n_layer: int = 12
    n_embd: int = 768
    head_size: int = 64
    dim_ffn: int = 0  # 0 -> 4 * n_embd
    decay_lora_dim: int = 0  # att.w1 [C, D]; 0 -> RWKV-LM's suggestion
    a_lora_dim: int = 0  # att.a1
    v_lora_dim: int = 0  # att.v1 (layers >= 1: layer 0's value is the residual v_first)
    gate_lora_dim: int = 0  # att.g1
    tokenizer: str = "world"  # "world", "bytes", or a path to a tokenizer.json (GPT-NeoX BPE)

    def __post_init__(self) -> None:
        for k in ("vocab_size", "n_layer", "n_embd", "head_size"):
            _require(isinstance(getattr(self, k), int) and getattr(self, k) > 0, k, f"must be a positive integer, got {getattr(self, k)!r}")
        _require(self.n_embd % self.head_size == 0, "head_size", f"n_embd {self.n_embd} is not a multiple of head_size {self.head_size}")
        if self.dim_ffn == 0:
            self.dim_ffn = 4 * self.n_embd
        suggested = {"decay_lora_dim": 2.5, "a_lora_dim": 2.5, "v_lora_dim": 1.7, "gate_lora_dim": 5.0}
        for k, f in suggested.items():
            if getattr(self, k) == 0:
                setattr(self, k, _rwkv7_lora_dim(self.n_embd, f))
        for k in ("dim_ffn", *suggested):
            v = getattr(self, k)
            _require(isinstance(v, int) and v > 0, k, f"must be a positive integer, got {v!r}")
        _require(isinstance(self.tokenizer, str) and self.tokenizer.strip() != "", "tokenizer", "must be a non-empty string")

    @property
    def n_head(self) -> int:
        return self.n_embd // self.head_size



@dataclass
class RWKV4Config(Config):
    """Shape of an RWKV-4 model (BlinkDL's ``RWKV-4-Pile-*`` / ``RWKV-4-World-*`` releases), in the
    official names; SpikeGPT's architecture without spikes (:mod:`spikelm.models.rwkv4`).

    ``dim_att`` (the width of key/value/receptance, n_att in the ``rwkv`` package) defaults to
    ``n_embd``; ``dim_ffn`` to ``4 * n_embd``, as in every release. ``tokenizer``: a GPT-NeoX
    ``tokenizer.json`` path (``20B_tokenizer.json``: the Pile models, 50277 ids), ``world`` (the
    World models, 65536 ids) or ``bytes``.
    """

    kind: ClassVar[str] = "rwkv4"

    vocab_size: int = 50277
    n_layer: int = 12
    n_embd: int = 768
    dim_att: int = 0  # 0 -> n_embd
    dim_ffn: int = 0  # 0 -> 4 * n_embd
    tokenizer: str = "20B_tokenizer.json"

    def __post_init__(self) -> None:
        for k in ("vocab_size", "n_layer", "n_embd"):
            _require(isinstance(getattr(self, k), int) and getattr(self, k) > 0, k, f"must be a positive integer, got {getattr(self, k)!r}")
        for k in ("dim_att", "dim_ffn"):
            _require(isinstance(getattr(self, k), int) and getattr(self, k) >= 0, k, f"must be 0 (default) or a positive integer, got {getattr(self, k)!r}")
        if self.dim_att == 0:
            self.dim_att = self.n_embd
        if self.dim_ffn == 0:
            self.dim_ffn = 4 * self.n_embd
        _require(isinstance(self.tokenizer, str) and self.tokenizer.strip() != "", "tokenizer", "must be a non-empty string")


ENCODINGS = ("mhse", "rate", "none")
SITES = ("time_mix", "all")
SATURATIONS = ("clip",)
CALIBRATIONS = ("max", "percentile", "mse")
GRANULARITIES = ("tensor", "channel")


@dataclass
class EncodingConfig(Config):
    """How activations feeding linear layers are turned into spikes (SpikeRWKV, section 3.4).

    ``encoding``: ``mhse`` (multi-head spike encoding: ``layers`` spike layers with weights
    ``base ** (n_int - i)``, ``i = 1..layers``) or ``rate`` (SNN-RWKV repetition coding: one IF
    neuron per value, ``layers`` must be 1). ``T`` time steps. ``sites``: ``time_mix`` (the
    paper: inputs of receptance, key, value, gate) or ``all`` (also output, channel mix and the
    LoRA projections). ``n_int`` is the number of integer bits of the magnitude after scaling by
    the calibrated scale ``s`` (so with ``n_int = 1`` the largest weight is 1 and ``|x| / s`` up to
    ``2 - 2**-(layers-1)`` is representable). ``init_half``: start the membrane at half the
    smallest weight (rounding instead of truncation; off in the paper-faithful presets).
    """

    kind: ClassVar[str] = "encoding"

    encoding: str = "mhse"
    T: int = 1
    layers: int = 4
    base: float = 2.0
    n_int: int = 1
    sites: str = "time_mix"
    saturation: str = "clip"
    init_half: bool = False
    calibration: str = "max"
    percentile: float = 99.99
    granularity: str = "tensor"

    def __post_init__(self) -> None:
        _require(self.encoding in ENCODINGS, "encoding", f"unknown encoding {self.encoding!r}; choose one of {', '.join(ENCODINGS)}")
        _require(isinstance(self.T, int) and self.T >= 1, "T", f"the number of time steps must be an integer >= 1, got {self.T!r}")
        _require(isinstance(self.layers, int) and self.layers >= 1, "layers", f"the number of spike layers must be an integer >= 1, got {self.layers!r}")
        _require(self.base == 2.0, "base", f"converted models use base 2 (the exact closed form needs it), got {self.base!r}; "
                 "other bases can be explored with spikelm.spiking.encoding.mhse_simulate")
        _require(self.sites in SITES, "sites", f"unknown site set {self.sites!r}; choose one of {', '.join(SITES)}")
        _require(self.saturation in SATURATIONS, "saturation", f"unknown policy {self.saturation!r}; choose one of {', '.join(SATURATIONS)}")
        _require(self.calibration in CALIBRATIONS, "calibration", f"unknown method {self.calibration!r}; choose one of {', '.join(CALIBRATIONS)}")
        _require(0.0 < self.percentile <= 100.0, "percentile", f"must be in (0, 100], got {self.percentile!r}")
        _require(self.granularity in GRANULARITIES, "granularity", f"unknown granularity {self.granularity!r}; choose one of {', '.join(GRANULARITIES)}")
        if self.encoding == "rate":
            _require(self.layers == 1, "layers", "rate coding (SNN-RWKV) uses a single IF neuron per value: set layers=1")


WEIGHT_BITS = (32, 16, 8)


@dataclass
class WeightQuantConfig(Config):
    """How a model's weight matrices are stored (``spikelm.models.quantized.quantize_weights``).

    ``bits``: 8 (symmetric int8, one float32 scale per output channel) or 16 (fp16); a float32
    model has no such config. ``head`` / ``embedding``: whether the LM head and the embedding are
    stored at ``bits`` too (the default: every weight the energy tables price at that width is
    stored at it) or kept float32.
    """

    kind: ClassVar[str] = "weight_quantization"

    bits: int = 8
    head: bool = True
    embedding: bool = True

    def __post_init__(self) -> None:
        _require(self.bits in (8, 16), "bits", f"quantised weights have 8 or 16 bits (32 is float32, no quantisation), got {self.bits!r}")


TOKEN_SHIFT_INITS = ("paper", "official")
LIF_SITES = ("residual", "pre_proj")


# ---------------------------------------------------------------------------------------- config
@dataclass
class SpikeGPTConfig(Config):
    """Shape and spiking constants of a SpikeGPT model.

    ``ffn_mult``: SRFFN hidden size is ``ffn_mult * n_embd`` (4, sec. 3.5). ``lif_beta``: the LIF
    decay of eq. 13 (0.5, the code's ``tau = 2``); ``lif_threshold``: U_threshold (1); the reset
    potential is 0. ``surrogate_alpha``: sharpness of the ArcTan surrogate (2 is eq. 1).
    ``token_shift_init`` / ``learnable_shift``: see the module docstring. ``binary_embedding``:
    Heaviside on the embedding output (sec. 3.2; off gives a real-valued embedding). True for
    models spikelm trains (the paper); a released checkpoint gets the public run code's rule
    (on for the 77-character vocabulary only, see :mod:`spikelm.checkpoints.spikegpt`).
    ``rescale_every``: 0 (the training model) or k > 0, the public run code's
    ``RWKV_RESCALE_LAYER`` (6): block i's LIF inputs are scaled by ``2 ** -(i // k)`` and the
    residual stream is halved after every k-th block. Harmless for an ANN (LayerNorm is scale
    invariant), not for SpikeGPT: the LIF threshold sees smaller inputs. Released checkpoints get 6.
    ``lif``: True (the paper). False replaces both LIF neurons of every block by the identity, so
    each sub-layer adds its real-valued output to the residual stream: an *ablation* (with
    ``binary_embedding`` it isolates the cost of the binary embedding alone), not SpikeGPT.
    ``lif_site``: where the two LIF neurons of a block sit. ``"residual"`` (the paper and the code):
    on each sub-layer's output, so the residual stream adds spikes. ``"pre_proj"`` (an alternative
    recipe, not the paper): on the input of the last projection of each sub-layer, i.e. on
    ``sigmoid(r) * wkv`` before ``att.output`` and on ``relu(k)^2`` (the 4C hidden layer) before
    ``ffn.value``; spikes then drive the weight matrices (synaptic ACs) and the residual stream
    stays real-valued. Same parameters and state-dict keys either way.
    ``ctx_len`` is the training context (the recurrent model itself accepts any length).
    ``tokenizer``: ``bytes``, a GPT-NeoX ``tokenizer.json`` path (the 50277-token releases), or
    ``char:<path to vocab.json>`` for the character-vocabulary models.
    """

    kind: ClassVar[str] = "spikegpt"

    vocab_size: int = 257
    n_layer: int = 12
    n_embd: int = 512
    ctx_len: int = 1024
    ffn_mult: int = 4
    lif_beta: float = 0.5
    lif_threshold: float = 1.0
    surrogate_alpha: float = 2.0
    token_shift_init: str = "paper"
    learnable_shift: bool = False
    binary_embedding: bool = True
    rescale_every: int = 0
    lif: bool = True
    lif_site: str = "residual"
    dropout: float = 0.0
    tokenizer: str = "bytes"

    def __post_init__(self) -> None:
        for k in ("vocab_size", "n_layer", "n_embd", "ctx_len", "ffn_mult"):
            v = getattr(self, k)
            _require(isinstance(v, int) and v > 0, k, f"must be a positive integer, got {v!r}")
        _require(0.0 < self.lif_beta <= 1.0, "lif_beta", f"the LIF decay must be in (0, 1], got {self.lif_beta!r}")
        _require(self.lif_threshold > 0.0, "lif_threshold", f"must be > 0, got {self.lif_threshold!r}")
        _require(self.surrogate_alpha > 0.0, "surrogate_alpha", f"must be > 0, got {self.surrogate_alpha!r}")
        _require(self.token_shift_init in TOKEN_SHIFT_INITS, "token_shift_init",
                 f"unknown init {self.token_shift_init!r}; choose one of {', '.join(TOKEN_SHIFT_INITS)}")
        _require(0.0 <= self.dropout < 1.0, "dropout", f"must be in [0, 1), got {self.dropout!r}")
        _require(isinstance(self.lif, bool), "lif", f"must be true or false, got {self.lif!r}")
        _require(self.lif_site in LIF_SITES, "lif_site", f"unknown site {self.lif_site!r}; choose one of {', '.join(LIF_SITES)}")
        _require(isinstance(self.rescale_every, int) and self.rescale_every >= 0, "rescale_every",
                 f"must be 0 (off) or a positive block count, got {self.rescale_every!r}")
        _require(isinstance(self.tokenizer, str) and self.tokenizer.strip() != "", "tokenizer", "must be a non-empty string")

    @property
    def dim_ffn(self) -> int:
        return self.ffn_mult * self.n_embd

    @property
    def dim_att(self) -> int:
        """The width of key, value and receptance: n_embd (the RWKV-4 block SpikeGPT builds on)."""
        return self.n_embd


# Named shapes. Parameter counts (emb + head untied, 13 C^2 per block) are in the comments.
#   45M: the paper's enwik8 model (Table 1: L = 12, d = 512, T = 1024 or 3072). The code builds the
#        character vocabulary from the unique characters of the training text; we use bytes
#        (257 ids), the enwik8 bits-per-byte convention: 41.2M parameters (a few million more with
#        the code's vocabulary, enwik8 read as UTF-8 text having thousands of distinct characters).
#  125M: the paper's BookCorpus model ("125M", also "120M"). The paper gives no shape; we take the
#        GPT-style "125M" shape 12 x 768 with the NeoX vocabulary: 169M parameters counted
#        SpikeGPT's way (92M without embedding and head).
#  216M: the released OpenWebText model (ridger/SpikeGPT-OpenWebText-216M): 18 x 768, NeoX
#        vocabulary of 50277: 215.4M parameters.
SPIKEGPT_PRESETS: dict[str, dict] = {
    "tiny": dict(vocab_size=257, n_layer=2, n_embd=64, ctx_len=128, tokenizer="bytes"),
    "small": dict(vocab_size=257, n_layer=4, n_embd=256, ctx_len=256, tokenizer="bytes"),
    "45M": dict(vocab_size=257, n_layer=12, n_embd=512, ctx_len=1024, tokenizer="bytes"),
    "45M-3072": dict(vocab_size=257, n_layer=12, n_embd=512, ctx_len=3072, tokenizer="bytes"),
    "125M": dict(vocab_size=50277, n_layer=12, n_embd=768, ctx_len=1024, tokenizer="20B_tokenizer.json"),
    "216M": dict(vocab_size=50277, n_layer=18, n_embd=768, ctx_len=1024, tokenizer="20B_tokenizer.json"),
}
