"""Calibration: per-site spike scales from the inputs the sites see on a few batches of real text.

Scales ``s`` per tensor or per input channel, from either the maximum of ``|x|`` or a percentile of
it; ``s = statistic / A_max``, so that the calibrated statistic lands on the largest value one time
step can emit (``A_max = sum_i w_i``, 1 for rate coding) and the top spike layer is used. Values
beyond are clipped (saturation). ``s`` is rounded to float32 and nudged down by an ulp where that
rounding would leave the statistic one grid step short of the top level
(``spiking.encoding.calibrated_scale``); scales are float32 buffers whatever the model's dtype. The batches come from the caller (:mod:`spikelm.data.text` makes
them from a ``--calib-data`` argument): this module never fetches data.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..config import EncodingConfig
from ..errors import SpikelmError
from ..spiking.encoding import calibrated_scale, mhse_a_max
from .sites import _get, site_names

__all__ = ["calibrate"]


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
        if not bool(torch.isfinite(stat).all()):
            raise SpikelmError(f"calibration saw non-finite activations at {n}; cannot set its spike scale")
        scales[n] = calibrated_scale(stat, a_max)
    return scales
