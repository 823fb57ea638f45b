"""Convert a pretrained RWKV-6 into a spiking network (SpikeRWKV, sections 3.2-3.5).

What changes: the *input* of chosen linear layers is spike-encoded, i.e. replaced by the value
its spikes decode to (multi-head spike encoding, or rate coding for the SNN-RWKV baseline). A
linear layer driven by binary spikes with layer weights ``w_i`` and a sign flag computes exactly
``W @ x_hat`` (accumulates of ``w_i``-weighted, sign-flipped synaptic weights), so running the
dense layer on the decoded value is the same arithmetic; the spike counts, which set the energy,
are measured from outside by ``spikelm.energy`` hooks.

Sites (``EncodingConfig.sites``):

* ``time_mix`` (the paper's Fig. 1): the ddlerp outputs feeding ``receptance``, ``key``, ``value``
  and ``gate`` of every TimeMix;
* ``all``: those, plus the TimeMix ``output`` projection, the three ChannelMix projections and the
  inputs of the two LoRA projections (``maa_in`` feeds ``time_maa_w1``, ``decay_in`` feeds
  ``time_decay_w1``). The LM head stays dense in both (it is not in any block; a reading the
  paper does not contradict, since its spiking sites are the time-mixing inputs).

Each token is encoded independently over its own ``T`` time steps, membranes starting afresh
(``v = 0`` or ``w_l / 2``), so recurrent decoding of a converted model equals its parallel
forward exactly as for the ANN.

Calibration: scales ``s`` from a few batches of real text, per tensor or per input channel,
either the maximum of ``|x|`` or a percentile of it; ``s = statistic / A_max``, so that the
calibrated statistic lands on the largest value one time step can emit (``A_max = sum_i w_i``,
1 for rate coding) and the top spike layer is used. Values beyond are clipped (saturation).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import ConfigError, EncodingConfig
from ..errors import SpikelmError
from ..spiking.encoding import mhse_a_max, mhse_closed_form, mhse_decode, mhse_simulate

log = logging.getLogger(__name__)

__all__ = [
    "PRESETS",
    "SpikeEncoder",
    "SpikingLinear",
    "site_names",
    "calibrate",
    "convert",
    "attach_encoders",
    "set_method",
    "encoders",
    "preset_config",
    "apply_preset",
]

# The paper's configurations (Tables 1-3) and spikelm's own recommended setting.
PRESETS: dict[str, dict] = {
    "SNN-RWKV-3": dict(encoding="rate", T=3, layers=1),
    "SNN-RWKV-4": dict(encoding="rate", T=4, layers=1),
    "SpikeRWKV-3L": dict(encoding="mhse", T=1, layers=3),
    "SpikeRWKV-4L": dict(encoding="mhse", T=1, layers=4),
    "SpikeRWKV-5L": dict(encoding="mhse", T=1, layers=5),
    # spikelm's own: 4 spike layers like SpikeRWKV-4L, with rounding (init_half) and per-channel
    # scales at the 99.99th percentile, so outliers in one channel do not coarsen the others.
    "spikelm-4L": dict(encoding="mhse", T=1, layers=4, init_half=True, granularity="channel",
                       calibration="percentile", percentile=99.99),
}

_TIME_MIX_LINEARS = ("receptance", "key", "value", "gate")


def site_names(model: nn.Module, sites: str) -> list[str]:
    """Qualified names of the modules whose input gets spike-encoded."""
    if sites not in ("time_mix", "all"):
        raise ConfigError(f"sites: unknown site set {sites!r}; choose time_mix or all")
    if hasattr(model, "spike_sites"):  # a model that declares its own sites (RWKV-7)
        return model.spike_sites(sites)
    names = []
    for i, _ in enumerate(model.blocks):
        names += [f"blocks.{i}.att.{n}" for n in _TIME_MIX_LINEARS]
        if sites == "all":
            names += [f"blocks.{i}.att.output", f"blocks.{i}.att.maa_in", f"blocks.{i}.att.decay_in",
                      f"blocks.{i}.ffn.key", f"blocks.{i}.ffn.receptance", f"blocks.{i}.ffn.value"]
    return names


class SpikeEncoder(nn.Module):
    """Encode a tensor into spikes and return the value the spikes decode to.

    ``scale`` is a buffer (saved with the checkpoint): shape () per tensor or (C,) per channel.
    ``method``: ``closed`` (fast, exact closed form) or ``sim`` (step-by-step IF cascade; slow,
    the reference). Both give bit-identical outputs. ``straight_through`` passes gradients.
    """

    def __init__(self, enc: EncodingConfig, channels: int):
        super().__init__()
        self.encoding = enc.encoding
        self.T, self.layers, self.base, self.n_int, self.init_half = enc.T, enc.layers, enc.base, enc.n_int, enc.init_half
        self.register_buffer("scale", torch.ones(channels if enc.granularity == "channel" else ()))
        self.method = "closed"
        self.straight_through = False

    @property
    def a_max(self) -> float:
        return 1.0 if self.encoding == "rate" else mhse_a_max(self.layers, self.base, self.n_int)

    def encode_args(self) -> dict:
        """Keyword arguments of the encoding functions for this site (rate = one layer of weight 1)."""
        if self.encoding == "rate":
            return dict(T=self.T, layers=1, base=2.0, n_int=1, init_half=self.init_half)
        return dict(T=self.T, layers=self.layers, base=self.base, n_int=self.n_int, init_half=self.init_half)

    def forward(self, x: Tensor) -> Tensor:
        if self.method == "sim":
            x_hat, _, _, _ = mhse_simulate(x, self.scale, **self.encode_args())
            return x_hat
        if self.straight_through and torch.is_grad_enabled():
            x_hat, _, _ = mhse_closed_form(x, self.scale, **self.encode_args(), stats=False, straight_through=True)
            return x_hat
        args = self.encode_args()
        del args["base"]
        return mhse_decode(x, self.scale, **args)

    def extra_repr(self) -> str:
        return f"{self.encoding}, T={self.T}, layers={self.layers}, method={self.method}, scale={tuple(self.scale.shape)}"


class SpikingLinear(nn.Linear):
    """``nn.Linear`` whose input is spike-encoded first; same ``weight`` name, plus ``encoder.scale``."""

    def __init__(self, in_features: int, out_features: int, enc: EncodingConfig):
        super().__init__(in_features, out_features, bias=False)
        self.encoder = SpikeEncoder(enc, in_features)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(self.encoder(x), self.weight, self.bias)


def _get(model: nn.Module, name: str) -> nn.Module:
    return model.get_submodule(name)


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, module)


def _in_features(model: nn.Module, name: str) -> int:
    mod = _get(model, name)
    if isinstance(mod, nn.Linear):
        return mod.in_features
    return model.cfg.n_embd  # maa_in / decay_in read the (B, T, C) stream


def attach_encoders(model: nn.Module, enc: EncodingConfig) -> nn.Module:
    """Swap the sites for spiking modules with unit scales (the structure of a converted model)."""
    for name in site_names(model, enc.sites):
        mod = _get(model, name)
        if isinstance(mod, (SpikingLinear, SpikeEncoder)):
            raise SpikelmError(f"{name} is already spike-encoded; convert the original ANN instead")
        if isinstance(mod, nn.Linear):
            new = SpikingLinear(mod.in_features, mod.out_features, enc).to(mod.weight.device, mod.weight.dtype)
            new.weight = mod.weight
            _set(model, name, new)
        else:
            _set(model, name, SpikeEncoder(enc, _in_features(model, name)).to(model.emb.weight.device))
    model.encoding = enc
    return model


def encoders(model: nn.Module) -> Iterator[tuple[str, SpikeEncoder]]:
    """(site name, encoder) pairs of a converted model; site name = the module whose input it encodes."""
    for name, mod in model.named_modules():
        if isinstance(mod, SpikeEncoder):
            yield (name[: -len(".encoder")] if name.endswith(".encoder") else name), mod


def set_method(model: nn.Module, method: str) -> nn.Module:
    """Switch every encoder between the closed form (``closed``) and the simulation (``sim``)."""
    if method not in ("closed", "sim"):
        raise ConfigError(f"method: unknown {method!r}; choose closed or sim")
    for _, e in encoders(model):
        e.method = method
    return model


@dataclass
class _SiteStats:
    max: Tensor | None = None
    samples: list[Tensor] | None = None
    n_rows: int = 0


@torch.no_grad()
def calibrate(model: nn.Module, batches: Iterable[Tensor], enc: EncodingConfig, max_rows: int = 8192) -> dict[str, Tensor]:
    """Per-site scale from the inputs the sites see on ``batches`` (each (B, T) token ids).

    ``max``: the largest ``|x|`` (per tensor or per channel). ``percentile``: that percentile of
    ``|x|``, computed on up to ``max_rows`` token rows kept per site (uniformly subsampled).
    """
    names = site_names(model, enc.sites)
    stats = {n: _SiteStats(samples=[]) for n in names}
    gen = torch.Generator().manual_seed(0)

    def hook(name):
        def fn(_mod, args):
            x = args[0].detach().abs().float().reshape(-1, args[0].shape[-1])  # (rows, C)
            st = stats[name]
            m = x.amax(0) if enc.granularity == "channel" else x.amax()
            st.max = m if st.max is None else torch.maximum(st.max, m)
            if enc.calibration == "percentile":
                keep = min(x.shape[0], max(1, max_rows // 4))
                idx = torch.randperm(x.shape[0], generator=gen)[:keep]
                st.samples.append(x[idx.to(x.device)].cpu())
                st.n_rows += keep
        return fn

    handles = [_get(model, n).register_forward_pre_hook(hook(n)) for n in names]
    was_training = model.training
    model.eval()
    n_batches = 0
    try:
        for b in batches:
            model(b.to(model.emb.weight.device))
            n_batches += 1
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    if n_batches == 0:
        raise SpikelmError("calibration needs at least one batch of text (--calib-data)")

    a_max = 1.0 if enc.encoding == "rate" else mhse_a_max(enc.layers, enc.base, enc.n_int)
    scales = {}
    for n, st in stats.items():
        if enc.calibration == "percentile":
            rows = torch.cat(st.samples)[-max_rows:]
            q = enc.percentile / 100.0
            stat = torch.quantile(rows, q, dim=0) if enc.granularity == "channel" else torch.quantile(rows.flatten()[: 2**24], q)
        else:
            stat = st.max
        scales[n] = (stat / a_max).clamp(min=1e-8)
    return scales


def convert(model: nn.Module, enc: EncodingConfig, calib_batches: Iterable[Tensor] | None) -> nn.Module:
    """Calibrate on ``calib_batches`` then swap the sites for spiking modules (in place)."""
    if enc.encoding == "none":
        return model
    if calib_batches is None:
        raise SpikelmError("conversion needs calibration data: pass --calib-data (a corpus name such as 'default', or a text file)")
    scales = calibrate(model, calib_batches, enc)
    attach_encoders(model, enc)
    for name, e in encoders(model):
        e.scale.copy_(scales[name].to(e.scale.device).reshape(e.scale.shape))
    return model


def preset_config(name: str, sites: str = "time_mix") -> EncodingConfig:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}")
    return EncodingConfig.from_dict({**PRESETS[name], "sites": sites})


def calibration_batches(source: str, tokenizer: str, n_batches: int = 8, batch_size: int = 4, ctx_len: int = 256,
                        seed: int = 0) -> list[Tensor]:
    """Token batches from a corpus name (``default``...) or a text file, for calibration.

    Windows are taken from the corpus's *train* split, never from the split evaluated later.
    """
    import numpy as np
    from pathlib import Path

    from ..data.tokenizers import get_tokenizer

    p = Path(source)
    if p.is_file():
        ids = np.asarray(get_tokenizer(tokenizer).encode(p.read_text(encoding="utf-8")), dtype=np.int64)
    else:
        from ..data.corpora import prepare

        ids = prepare(source, tokenizer=tokenizer).tokens("train")
    if len(ids) < ctx_len + 1:
        raise SpikelmError(f"calibration data {source!r} has {len(ids)} tokens; need at least {ctx_len + 1}")
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_batches):
        starts = rng.integers(0, len(ids) - ctx_len, size=batch_size)
        out.append(torch.from_numpy(np.stack([np.asarray(ids[s : s + ctx_len], dtype=np.int64) for s in starts])))
    return out


def apply_preset(model: nn.Module, name: str, calib_data: str = "default", sites: str = "time_mix",
                 calib_batches: list[Tensor] | None = None) -> nn.Module:
    """Convert ``model`` with a named preset (``SpikeRWKV-4L`` ...), calibrating on ``calib_data``."""
    enc = preset_config(name, sites)
    if calib_batches is None:
        calib_batches = calibration_batches(calib_data, model.tokenizer_name)
    return convert(model, enc, calib_batches)


def cli_convert(checkpoint: str, *, out: str, calib_data: str = "", preset: str = "", encoding: str = "mhse",
                T: int = 1, layers: int | None = None, sites: str = "time_mix", calibration: str = "max",
                percentile: float = 99.99, granularity: str = "tensor", init_half: bool = False,
                n_int: int = 1, calib_batches: int = 8, calib_ctx: int = 256, device: str = "cpu") -> int:
    """Convert a pretrained RWKV-6 into a spiking network and save it as a spikelm folder.

    Args:
        checkpoint: the ANN: official RWKV-6 .pth/.safetensors, Hugging Face folder, or spikelm folder.
        out: output folder (model.safetensors + config.json, with the calibrated scales).
        calib_data: text for calibration: a corpus name (default = the embedded Brown corpus) or a text file. Required.
        preset: a named configuration (SNN-RWKV-3, SNN-RWKV-4, SpikeRWKV-3L, SpikeRWKV-4L, SpikeRWKV-5L, spikelm-4L); overrides --encoding/--T/--layers.
        encoding: mhse (multi-head spike encoding) or rate (SNN-RWKV repetition coding).
        T: time steps per token (>= 1).
        layers: spike layers l of the multi-head encoding (>= 1; default 4 for mhse, 1 for rate).
        sites: time_mix (receptance/key/value/gate inputs, as in the paper) or all (also output, channel mix, LoRA).
        calibration: max or percentile of |x| per site.
        percentile: the percentile used with --calibration percentile.
        granularity: tensor (one scale per site) or channel (one per input channel).
        init_half: start membranes at half the smallest weight (rounding instead of truncation).
        n_int: integer bits: the largest layer weight is 2**(n_int-1).
        calib_batches: number of calibration batches (4 sequences each).
        calib_ctx: tokens per calibration sequence.
        device: torch device.
    """
    from ..checkpoint import load, save

    if preset:
        enc = preset_config(preset, sites)
    else:
        if layers is None:
            layers = 1 if encoding == "rate" else 4
        enc = EncodingConfig(encoding=encoding, T=T, layers=layers, sites=sites, calibration=calibration,
                             percentile=percentile, granularity=granularity, init_half=init_half, n_int=n_int)
    if not calib_data:
        raise SpikelmError("--calib-data is required: a corpus name (e.g. default) or a text file to calibrate the spike scales on")
    model = load(checkpoint, device=device)
    batches = calibration_batches(calib_data, model.tokenizer_name, calib_batches, 4, calib_ctx)
    convert(model, enc, batches)
    path = save(model, out)
    n_sites = sum(1 for _ in encoders(model))
    print(f"converted {checkpoint} -> {path}: {enc.encoding}, T={enc.T}, l={enc.layers}, {n_sites} encoded sites ({enc.sites})")
    return 0
