"""Encoder edge cases found by an independent check of the math: saturation in other bases, and
the calibrated maximum landing on the top level."""

from __future__ import annotations

from fractions import Fraction

import pytest
import torch

from spikelm.spiking.encoding import mhse_a_max, mhse_closed_form, mhse_decode, mhse_simulate, mhse_weights


def _exact_cascade(a: Fraction, T: int, weights: list[Fraction], c: Fraction) -> list[list[int]]:
    """The IF cascade in exact rational arithmetic: spikes[j][i]."""
    v, out = c, []
    for _ in range(T):
        v += a
        row = []
        for w in weights:
            fired = v >= w
            v -= w if fired else 0
            row.append(int(fired))
        out.append(row)
    return out


@pytest.mark.parametrize("base", [2.0, 3.0, 1.5, 10.0])
@pytest.mark.parametrize("T,layers,n_int,init_half", [(1, 3, 1, False), (3, 4, 1, False), (2, 3, 0, True), (1, 1, 1, False)])
def test_simulation_saturates_to_the_top_level_in_any_base(base, T, layers, n_int, init_half):
    """Saturated values (|x| / s >= A_max) emit every layer at every step and decode to A_max * s.
    With base 3 the float64 cascade used to lose the lowest layer's spike (1.333.. - 1 < 1/3)."""
    a_max = mhse_a_max(layers, base, n_int)
    s = 0.75
    x = torch.tensor([a_max * s, -a_max * s, 2 * a_max * s, -1e6, float("inf")], dtype=torch.float32)
    x_hat, stats, spikes, flags = mhse_simulate(x, s, T, layers, base, n_int, init_half)
    sat = (x.abs().double() / s).float().double() >= a_max  # the encoder's own magnitude
    assert bool(spikes[:, :, sat].all()), "a saturated value must fire every layer at every step"
    expected = torch.where(flags, -1.0, 1.0) * torch.tensor(a_max * s, dtype=torch.float64)
    torch.testing.assert_close(x_hat[sat].double(), expected[sat].to(torch.float32).double(), rtol=0, atol=0)
    if base == 2.0:
        ref, _, ref_spikes = mhse_closed_form(x, s, T, layers, base, n_int, init_half, with_spikes=True)
        assert torch.equal(x_hat, ref) and torch.equal(spikes, ref_spikes)


@pytest.mark.parametrize("base", [3.0, 1.5])
def test_simulation_matches_exact_rational_cascade(base):
    """Inside the range, other bases against the cascade in exact rational arithmetic (random
    values: no ties, so float64 rounding cannot flip a spike), plus saturated values."""
    T, layers, n_int = 3, 3, 1
    weights = [Fraction(base) ** (n_int - i) for i in range(1, layers + 1)]
    a_max = mhse_a_max(layers, base, n_int)
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.rand(40, generator=g) * a_max, torch.tensor([a_max, 1.5 * a_max])]).to(torch.float32)
    _, _, spikes, _ = mhse_simulate(x, 1.0, T, layers, base, n_int)
    for idx, value in enumerate(x.tolist()):
        a = min(Fraction(value), sum(weights))
        assert spikes[:, :, idx].int().tolist() == _exact_cascade(a, T, weights, Fraction(0)), value


def test_simulation_weights_sum_is_the_saturation_level():
    assert mhse_a_max(3, 3.0, 1) == sum(mhse_weights(3, 3.0, 1))


def test_decode_hot_path_propagates_nan_without_a_host_sync():
    """mhse_decode (the converted model's hot path) no longer checks for NaN with a host sync:
    NaN in, NaN out, like any layer. The inspection paths still refuse NaN."""
    x = torch.tensor([0.5, float("nan"), -0.25])
    out = mhse_decode(x, torch.tensor(1.0), 1, 4)
    assert torch.isnan(out[1]) and out[0] == 0.5 and out[2] == -0.25
    out64 = mhse_decode(x.double(), torch.tensor(1.0), 2, 4)
    assert torch.isnan(out64[1])
    with pytest.raises(ValueError, match="NaN"):
        mhse_closed_form(x, 1.0, 1, 4)
