"""Calibrated scales: the calibrated maximum lands on the top level; scales stay float32 whatever
the model's dtype."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from conftest import make_rwkv6
from spikelm.config import EncodingConfig
from spikelm.convert import PRESETS, calibrate, convert, encoders, preset_config, site_names
from spikelm.spiking.layers import SpikeEncoder
from spikelm.spiking.encoding import mhse_closed_form, mhse_decode


def _batches(n=2, B=2, T=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 257, (B, T), generator=g) for _ in range(n)]


def _top_level(enc: EncodingConfig, scale: torch.Tensor) -> torch.Tensor:
    a_max = SpikeEncoder(enc, 1).a_max
    return (scale.double() * a_max).float()


@pytest.mark.parametrize("preset", list(PRESETS))
@pytest.mark.parametrize("granularity", ["tensor", "channel"])
def test_calibrated_maximum_decodes_to_the_top_level(preset, granularity):
    """The largest |x| seen in calibration must decode to A_max * s (the top level), not one grid
    step lower. s = max / A_max rounded to float32, and |x| / s rounded again, used to land just
    under A_max in 9-14% of draws. Each model seed is a fresh random draw of activations."""
    enc = dataclasses.replace(preset_config(preset, "all"), calibration="max", granularity=granularity)
    for seed in range(3):
        model = make_rwkv6(n_layer=1, n_embd=32, head_size=16, seed=seed)
        maxima: dict[str, torch.Tensor] = {}

        def hook(name):
            def fn(_m, args):
                x = args[0].detach().abs().float().reshape(-1, args[0].shape[-1])
                m = x.amax(0) if granularity == "channel" else x.amax()
                maxima[name] = m if name not in maxima else torch.maximum(maxima[name], m)
            return fn

        handles = [model.get_submodule(n).register_forward_pre_hook(hook(n)) for n in site_names(model, "all")]
        scales = calibrate(model, _batches(seed=seed), enc)
        for h in handles:
            h.remove()
        args = SpikeEncoder(enc, 1).encode_args()
        del args["base"]
        for name, stat in maxima.items():
            s = scales[name]
            assert s.dtype == torch.float32
            decoded = mhse_decode(stat, s, **args)
            assert torch.equal(decoded, _top_level(enc, s)), f"{preset} {name}: the calibrated maximum decodes below the top level"


def _converted(preset="spikelm-4L", sites="all"):
    return convert(make_rwkv6(n_layer=2, n_embd=32, head_size=16, seed=5), preset_config(preset, sites), _batches())


@pytest.mark.parametrize("cast", [lambda m: m.to(torch.bfloat16), lambda m: m.half(), lambda m: m.bfloat16()])
def test_scales_stay_float32_when_the_model_is_cast(cast):
    m32 = _converted()
    mlo = cast(_converted())
    assert mlo.head.weight.dtype != torch.float32
    for (n32, e32), (nlo, elo) in zip(encoders(m32), encoders(mlo)):
        assert n32 == nlo
        assert elo.scale.dtype == torch.float32
        assert torch.equal(elo.scale, e32.scale)


def test_bf16_model_encodes_like_fp32_on_bf16_representable_inputs():
    """Inputs exactly representable in bfloat16: the bf16 model's encoders emit the same spikes as
    the fp32 model's, and decode to the same value up to the final rounding to bfloat16."""
    m32 = _converted("SpikeRWKV-4L")
    m16 = _converted("SpikeRWKV-4L").to(torch.bfloat16)
    g = torch.Generator().manual_seed(1)
    for (_, e32), (_, e16) in zip(encoders(m32), encoders(m16)):
        x16 = (torch.randn(3, 5, e32.scale.numel() if e32.scale.dim() else 32, generator=g) * e32.scale.max() * 2).to(torch.bfloat16)
        args = e32.encode_args()
        _, _, sp32 = mhse_closed_form(x16.float(), e32.scale, **args, stats=False, with_spikes=True)
        _, _, sp16 = mhse_closed_form(x16, e16.scale, **args, stats=False, with_spikes=True)
        assert torch.equal(sp32, sp16)
        with torch.no_grad():
            y16, y32 = e16(x16), e32(x16.float())
        assert y16.dtype == torch.bfloat16 and y32.dtype == torch.float32
        assert torch.equal(y16, y32.to(torch.bfloat16))


def test_bad_scales_are_refused_at_load():
    m = _converted("SpikeRWKV-4L", "time_mix")
    sd = m.state_dict()
    key = next(k for k in sd if k.endswith("encoder.scale"))
    sd[key] = torch.full_like(sd[key], float("nan"))
    with pytest.raises(ValueError, match="scale"):
        m.load_state_dict(sd)
