"""Calibration memory is bounded by a fixed budget, and below it the statistic is the exact one."""

from __future__ import annotations

import dataclasses

import torch

from spikelm.convert import preset_config
from spikelm.convert.calibrate import _keep_rows, _SiteStats, calibrate
from spikelm.convert.sites import _get, site_names
from spikelm.spiking.encoding import calibrated_scale, mhse_a_max
from spikelm.testing import make_rwkv6


def _batches():
    return [torch.randint(0, 257, (2, 16), generator=torch.Generator().manual_seed(i)) for i in range(3)]


def test_percentile_is_exact_on_all_rows_of_a_tiny_model():
    """Every row kept (the budget does not bind): the scale is the percentile of all rows the site saw,
    computed here independently with plain hooks."""
    model = make_rwkv6(n_layer=2, n_embd=32, head_size=16, seed=2)
    enc = preset_config("spikelm-4L", "all")
    rows: dict[str, list[torch.Tensor]] = {}
    names = site_names(model, enc.sites)
    hooks = [_get(model, n).register_forward_pre_hook(
        lambda _m, a, n=n: rows.setdefault(n, []).append(a[0].detach().abs().float().reshape(-1, a[0].shape[-1])))
        for n in names]
    with torch.no_grad():
        for b in _batches():
            model(b)
    for h in hooks:
        h.remove()
    got = calibrate(model, _batches(), enc)
    a_max = mhse_a_max(enc.layers, enc.base, enc.n_int)
    for n in names:
        want = calibrated_scale(torch.quantile(torch.cat(rows[n]), enc.percentile / 100, dim=0), a_max)
        assert torch.equal(got[n], want), n


def test_sample_never_exceeds_its_row_cap():
    st = _SiteStats(samples=[])
    gen = torch.Generator().manual_seed(0)
    for i in range(50):
        _keep_rows(st, torch.rand(64, 8), rows_cap=40, gen=gen)
        assert sum(s.shape[0] for s in st.samples) <= 40 and st.n_rows <= 40


def test_total_budget_split_across_sites():
    """A budget of 16 rows x C per site across all sites still gives finite scales no larger than
    the maximum's (a percentile of a subsample never exceeds the maximum of all rows)."""
    model = make_rwkv6(n_layer=2, n_embd=32, head_size=16, seed=2)
    enc = preset_config("spikelm-4L", "all")
    names = site_names(model, enc.sites)
    small = calibrate(model, _batches(), enc, budget_floats=len(names) * 32 * 16)
    top = calibrate(model, _batches(), dataclasses.replace(enc, calibration="max"))
    full = calibrate(model, _batches(), enc)
    assert any(not torch.equal(small[n], full[n]) for n in names)  # the budget did bind
    for n in names:
        assert torch.isfinite(small[n]).all() and (small[n] <= top[n]).all(), n
