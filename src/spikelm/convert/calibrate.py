"""Calibration: per-site spike scales from the inputs the sites see on a few batches of real text.

Scales ``s`` per tensor or per input channel, from the maximum of ``|x|``, a percentile of it, or
the clip that minimises the squared error of the spike code (``mse``); ``s = statistic / A_max``, so that the calibrated statistic lands on the largest value one time
step can emit (``A_max = sum_i w_i``, 1 for rate coding) and the top spike layer is used. Values
beyond are clipped (saturation). ``s`` is rounded to float32 and nudged down by an ulp where that
rounding would leave the statistic one grid step short of the top level
(``spiking.encoding.calibrated_scale``); scales are float32 buffers whatever the model's dtype. The batches come from the caller (:mod:`spikelm.data.text` makes
them from a ``--calib-data`` argument): this module never fetches data.

Memory is bounded by a fixed budget, whatever the number of sites: the percentile statistic is
computed on a sample of at most ``budget_floats / (sites x channels)`` rows per site (and at most
``max_rows``), trimmed after every batch, so 96 sites x 2048 channels hold ``budget_floats``
floats (256 MiB by default), not rows x C x sites. Below the budget the sample is exactly the one
a budget-free run keeps. With ``n`` rows kept, the empirical quantile is an order statistic of the
sample: for ``q`` above ``1 - 1/n`` it is the sample maximum, i.e. a percentile between
``100 (1 - 1/n)`` and 100 of the subsampled rows (e.g. n = 341 rows at 96 x 2048: between the
99.7th percentile and the maximum). The ``max`` statistic is a running maximum: C floats per site.

``mse`` (a reading of "calibration" that the papers leave open, kept beside theirs): among the
clips ``c_k = max * 2**(-k/4)``, ``k = 0..MSE_CANDIDATES-1`` (the maximum down to 2**-7.75 of it),
the one whose spike code (the site's own encoding, decoded by its closed form) has the least
squared error on the same kept rows as ``percentile``; per tensor or per channel. A max-calibrated
site whose activations are heavy-tailed spends its few levels on outliers and leaves most inputs
below the smallest level (silent); clipping trades a few saturated outliers for them. It matters
most with few levels (SpikeRWKV-3L) and as the start of fine-tuning (``spikelm finetune``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..config import EncodingConfig
from ..errors import SpikelmError
from ..spiking.encoding import calibrated_scale, mhse_a_max, mhse_decode
from .sites import _get, site_names

__all__ = ["calibrate", "least_squares_clip"]

MSE_CANDIDATES = 32  # clips max * 2**(-k/4), k < 32


@dataclass
class _SiteStats:
    max: Tensor | None = None
    samples: list[Tensor] | None = None
    n_rows: int = 0


def _keep_rows(st: _SiteStats, x: Tensor, rows_cap: int, gen: torch.Generator) -> None:
    """Add a uniform subsample of ``x`` (rows, C) to the site's sample; hold at most ``rows_cap`` rows."""
    keep = min(x.shape[0], max(1, rows_cap // 4))
    idx = torch.randperm(x.shape[0], generator=gen)[:keep]
    st.samples.append(x[idx.to(x.device)].cpu())
    st.n_rows += keep
    if st.n_rows > rows_cap:  # keep only what the final statistic reads: the last rows_cap rows
        st.samples = [torch.cat(st.samples)[-rows_cap:]]
        st.n_rows = rows_cap


@torch.no_grad()
def calibrate(model: nn.Module, batches: Iterable[Tensor], enc: EncodingConfig, max_rows: int = 8192,
              budget_floats: int = 2**26) -> dict[str, Tensor]:
    """Per-site scale from the inputs the sites see on ``batches`` (each (B, T) token ids).

    ``max``: the largest ``|x|`` (per tensor or per channel). ``percentile``: that percentile of
    ``|x|``, computed on the last ``rows_cap`` token rows kept per site (each batch contributes a
    uniform subsample of ``rows_cap // 4`` rows), where ``rows_cap = min(max_rows,
    budget_floats // (sites x C))``: all sites together never hold more than ``budget_floats``
    floats of samples (see the module docstring for what that costs in precision).
    """
    names = site_names(model, enc.sites)
    stats = {n: _SiteStats(samples=[]) for n in names}
    gen = torch.Generator().manual_seed(0)
    caps: dict[str, int] = {}

    def cap(name: str, channels: int) -> int:
        if name not in caps:
            caps[name] = max(1, min(max_rows, budget_floats // max(1, len(names) * channels)))
        return caps[name]

    def hook(name):
        def fn(_mod, args):
            x = args[0].detach().abs().float().reshape(-1, args[0].shape[-1])  # (rows, C)
            st = stats[name]
            m = x.amax(0) if enc.granularity == "channel" else x.amax()
            st.max = m if st.max is None else torch.maximum(st.max, m)
            if enc.calibration in ("percentile", "mse"):
                _keep_rows(st, x, cap(name, x.shape[1]), gen)
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
            rows = torch.cat(st.samples)[-caps[n]:]
            q = enc.percentile / 100.0
            stat = torch.quantile(rows, q, dim=0) if enc.granularity == "channel" else torch.quantile(rows.flatten()[: 2**24], q)
        elif enc.calibration == "mse":
            stat = least_squares_clip(torch.cat(st.samples)[-caps[n]:], st.max, enc, a_max)
        else:
            stat = st.max
        if not bool(torch.isfinite(stat).all()):
            raise SpikelmError(f"calibration saw non-finite activations at {n}; cannot set its spike scale")
        scales[n] = calibrated_scale(stat, a_max)
    return scales


def least_squares_clip(rows: Tensor, amax: Tensor, enc: EncodingConfig, a_max: float) -> Tensor:
    """The clip among ``amax * 2**(-k/4)`` (``k < MSE_CANDIDATES``) whose spike code of ``rows``
    ((n, C) magnitudes) has the least squared error, per channel where ``amax`` has C entries,
    else over the whole tensor. The code is the site's own (``enc``: rate or multi-head, ``T``,
    ``layers``, ``init_half``), decoded by :func:`~spikelm.spiking.encoding.mhse_decode`; ties go
    to the larger clip (fewer saturated values). A zero maximum stays zero."""
    rows = rows.float()
    layers = 1 if enc.encoding == "rate" else enc.layers
    n_int = 1 if enc.encoding == "rate" else enc.n_int
    best_err, best = None, amax.clone()
    for k in range(MSE_CANDIDATES):
        clip = amax * 2.0 ** (-k / 4)
        s = calibrated_scale(clip, a_max)
        dec = mhse_decode(rows, s if s.dim() == 0 else s.expand(rows.shape[1]), enc.T, layers, n_int, enc.init_half)
        err = (rows - dec).square()
        err = err.sum(0) if amax.dim() > 0 else err.sum()
        if best_err is None:
            best_err = err
            continue
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best = torch.where(better, clip, best)
    return best
