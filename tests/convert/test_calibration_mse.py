"""``calibration: mse``: the clip whose spike code has the least squared error, checked against a
brute-force search with the encoder's own closed form."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from spikelm.convert import preset_config
from spikelm.convert.calibrate import MSE_CANDIDATES, calibrate, least_squares_clip
from spikelm.spiking.encoding import calibrated_scale, mhse_a_max, mhse_closed_form
from spikelm.testing import make_rwkv6


def _error(rows, clip, enc, a_max):
    dec = mhse_closed_form(rows, calibrated_scale(clip, a_max), enc.T, enc.layers, 2.0, enc.n_int, enc.init_half,
                           stats=False)[0]
    return (rows - dec).square().sum(0)


@pytest.mark.parametrize("preset", ["SpikeRWKV-3L", "SNN-RWKV-4"])
def test_heavy_tailed_channels_are_clipped_below_their_maximum(preset):
    """A lone outlier per channel: the maximum wastes the levels on it; the chosen clip is lower and
    has the least error of every candidate (brute force with mhse_closed_form, per channel)."""
    enc = dataclasses.replace(preset_config(preset, "all"), granularity="channel")
    g = torch.Generator().manual_seed(0)
    rows = torch.randn(4096, 6, generator=g).abs()
    rows[7] = 12.0  # one outlier in every channel: clipping it costs less than silencing the rest
    amax = rows.amax(0)
    a_max = 1.0 if enc.encoding == "rate" else mhse_a_max(enc.layers, 2.0, enc.n_int)
    got = least_squares_clip(rows, amax, enc, a_max)
    assert bool((got < amax).all())
    errors = torch.stack([_error(rows, amax * 2.0 ** (-k / 4), enc, a_max) for k in range(MSE_CANDIDATES)])
    assert torch.equal(_error(rows, got, enc, a_max), errors.min(0).values)


def test_mse_beats_max_on_a_tiny_model_and_keeps_zero_sites_floored():
    """Through calibrate(): every site's scale at or below the max-calibrated one, and the squared
    code error of the site inputs no larger (per tensor)."""
    model = make_rwkv6(n_layer=2, n_embd=32, head_size=16, seed=2)
    enc_max = preset_config("SpikeRWKV-3L", "all")
    enc_mse = dataclasses.replace(enc_max, calibration="mse")
    batches = [torch.randint(0, 257, (2, 16), generator=torch.Generator().manual_seed(i)) for i in range(3)]
    s_max, s_mse = calibrate(model, batches, enc_max), calibrate(model, batches, enc_mse)
    assert s_max.keys() == s_mse.keys()
    assert all(bool((s_mse[n] <= s_max[n]).all()) for n in s_max)
    assert any(bool((s_mse[n] < s_max[n]).any()) for n in s_max)


def test_mse_is_a_named_calibration_and_a_bad_one_is_refused():
    from spikelm.config import EncodingConfig
    from spikelm.errors import ConfigError
    EncodingConfig(calibration="mse")
    with pytest.raises(ConfigError, match="mse"):
        EncodingConfig(calibration="least-squares")
