"""Multi-head spike encoding: the literal cascade simulation and the closed form agree bit for bit."""

from __future__ import annotations

import itertools

import pytest
import torch

from spikelm.spiking.encoding import (
    SpikeStats,
    decode,
    mhse_a_max,
    mhse_closed_form,
    mhse_simulate,
    mhse_spike_counts,
    mhse_weights,
    rate_closed_form,
    rate_simulate,
    spike_encode,
)


def hard_values(T: int, layers: int, n_int: int = 1, scale: float = 1.0) -> torch.Tensor:
    """Random values plus the ties and edges where a drifting membrane would go wrong."""
    g = torch.Generator().manual_seed(T * 100 + layers)
    w_l = 2.0 ** (n_int - layers)
    a_max = mhse_a_max(layers, n_int=n_int)
    k = torch.arange(0, 2**layers * T + 3, dtype=torch.float64)
    parts = [
        torch.randn(300, generator=g, dtype=torch.float64) * a_max,
        (torch.rand(300, generator=g, dtype=torch.float64) * 2 - 1) * a_max,
        k * w_l / T,  # a = k w_l / T: emission lands exactly on the grid
        -(k[: 2**layers + 1] * w_l),  # a = j w_l, negative
        torch.tensor([0.0, -0.0, a_max, -a_max, a_max * (1 + 2**-20), 2 * a_max, -1e3, float("inf"), float("-inf")], dtype=torch.float64),
        torch.tensor([1e-38, -1e-30, 1e-12, w_l * 1e-9, w_l / (2 * T), w_l / (2 * T) * (1 - 2**-20), w_l / T * (1 - 2**-22)], dtype=torch.float64),
    ]
    return (torch.cat(parts) * scale).to(torch.float32)


@pytest.mark.parametrize("init_half", [False, True])
@pytest.mark.parametrize("layers", [1, 3, 4, 5, 8])
@pytest.mark.parametrize("T", [1, 2, 3, 4, 7])
def test_simulation_equals_closed_form(T, layers, init_half):
    for n_int, scale in [(1, 1.0), (0, 0.37)]:
        x = hard_values(T, layers, n_int, scale)
        sim_hat, sim_stats, sim_spikes, flags = mhse_simulate(x, scale, T, layers, n_int=n_int, init_half=init_half)
        cf_hat, cf_stats, cf_spikes = mhse_closed_form(x, scale, T, layers, n_int=n_int, init_half=init_half, with_spikes=True)

        assert cf_hat.dtype == x.dtype and torch.equal(cf_hat, sim_hat)
        assert torch.equal(cf_spikes, sim_spikes)
        assert torch.equal(cf_stats.spikes_per_layer_step, sim_stats.spikes_per_layer_step)
        assert (cf_stats.flag_spikes, cf_stats.clipped, cf_stats.numel) == (sim_stats.flag_spikes, sim_stats.clipped, sim_stats.numel)
        assert torch.equal(flags, x < 0) and cf_stats.flag_spikes == int((x < 0).sum())
        assert sim_stats.layer_spikes > 0
        # per-element counts without the spike tensor; decode of the spike tensor gives x_hat back
        assert torch.equal(mhse_spike_counts(x, scale, T, layers, n_int=n_int, init_half=init_half), sim_spikes.sum((0, 1)))
        assert torch.equal(decode(cf_spikes, flags, scale, mhse_weights(layers, n_int=n_int), x.dtype), cf_hat)


def test_cascade_by_hand():
    # weights 1, 1/2; a = 1.25, T = 2.
    # step 1: v = 1.25 -> layer 1 fires (v 0.25), layer 2 not.  step 2: v = 1.5 -> both fire (v 0).
    x = torch.tensor([1.25])
    expected = torch.tensor([[[True], [False]], [[True], [True]]])
    for spikes in (mhse_simulate(x, 1.0, 2, 2)[2], mhse_closed_form(x, 1.0, 2, 2, with_spikes=True)[2]):
        assert torch.equal(spikes, expected)
    assert mhse_closed_form(x, 1.0, 2, 2)[0].item() == 1.25  # (1 + 1 + 0.5) / 2


def test_paper_fig3_example():
    x = torch.tensor([-0.234567])
    # "l = 6: 2 integer bits and 4 fractional bits": n_int = 2, weights 2 .. 1/16 -> 0.0011b
    x_hat, stats, spikes = mhse_closed_form(x, 1.0, T=1, layers=6, n_int=2, with_spikes=True)
    assert spikes[0, :, 0].tolist() == [False, False, False, False, True, True]
    assert x_hat.item() == -0.1875 and stats.flag_spikes == 1
    # "the first l digits of the value", in binary: n_int = 0, weights 1/2 .. 1/64 -> 0.001111b
    x_hat, stats, spikes = mhse_closed_form(x, 1.0, T=1, layers=6, n_int=0, with_spikes=True)
    assert spikes[0, :, 0].tolist() == [False, False, True, True, True, True]
    assert x_hat.item() == -0.234375 and abs(x_hat.item() - x.item()) < 2**-6


@pytest.mark.parametrize("T,layers", [(1, 4), (3, 1), (4, 3), (7, 5)])
def test_error_bounds(T, layers):
    scale = 0.8
    w_l = 2.0 ** (1 - layers)
    g = torch.Generator().manual_seed(1)
    x = (torch.rand(4000, generator=g, dtype=torch.float64) * 2 - 1) * mhse_a_max(layers) * scale
    tol = 1e-6 * scale
    truncated, _, _ = mhse_closed_form(x, scale, T, layers)
    err = x.abs() - truncated.abs()  # truncation: never overshoots, misses by less than one grid step
    assert err.min() >= -tol and err.max() < w_l * scale / T + tol
    assert err.max() > 0.9 * w_l * scale / T  # the bound is tight
    rounded, _, _ = mhse_closed_form(x, scale, T, layers, init_half=True)
    err = (x - rounded).abs()
    assert err.max() <= w_l * scale / (2 * T) + tol and err.max() > 0.45 * w_l * scale / T


def test_error_shrinks_as_T_times_l_grows():
    g = torch.Generator().manual_seed(2)
    x = torch.rand(4096, generator=g) * 1.9 - 0.95
    errors = [
        (x - mhse_closed_form(x, 1.0, T, layers, stats=False)[0]).abs().mean().item()
        for T, layers in [(1, 1), (1, 2), (2, 2), (2, 3), (4, 3), (4, 4), (8, 4), (8, 8)]
    ]
    assert all(a > b for a, b in zip(errors, errors[1:])), errors


def test_rate_coding_is_mhse_with_one_layer():
    g = torch.Generator().manual_seed(3)
    scale = torch.tensor(0.5)
    x = torch.randn(500, generator=g)
    for T, init_half in itertools.product([1, 4, 5], [False, True]):
        rate_hat, rate_stats, rate_spikes = rate_closed_form(x, scale, T, init_half, with_spikes=True)
        mhse_hat, mhse_stats, _ = mhse_closed_form(x, scale, T, 1, n_int=1, init_half=init_half)
        sim_hat, _, sim_spikes, _ = rate_simulate(x, scale, T, init_half)
        assert torch.equal(rate_hat, mhse_hat) and torch.equal(rate_hat, sim_hat) and torch.equal(rate_spikes, sim_spikes)
        assert torch.equal(rate_stats.spikes_per_layer_step, mhse_stats.spikes_per_layer_step)
        # one IF neuron of threshold s: magnitudes clip at s, the grid is s / T
        assert rate_hat.abs().max().item() == 0.5
        assert rate_stats.clipped == int((x.abs() > 0.5).sum())
        assert torch.equal(spike_encode(x, scale, "rate", T, 1, init_half=init_half)[0], rate_hat)
    with pytest.raises(ValueError, match="one spike layer"):
        spike_encode(x, scale, "rate", 2, 4)


def test_saturation_clips_and_counts():
    layers, T, scale = 3, 2, 2.0
    a_max = mhse_a_max(layers)  # 1.75
    x = torch.tensor([0.0, 1.0, 3.5, 3.5001, -4.0, 100.0, float("-inf")])  # |x| / s: ..., 1.75, 1.75005, 2, 50, inf
    x_hat, stats, _ = mhse_closed_form(x, scale, T, layers)
    assert stats.clipped == 4 and stats.flag_spikes == 2 and stats.numel == 7
    assert x_hat.tolist() == [0.0, 1.0, 3.5, 3.5, -3.5, 3.5, -3.5]
    # at A_max every layer fires at every step
    assert torch.equal(mhse_closed_form(x[2:3], scale, T, layers)[1].spikes_per_layer_step, torch.ones(T, layers, dtype=torch.int64))
    assert mhse_weights(layers) == [1.0, 0.5, 0.25] and a_max == 1.75


def test_per_channel_scales_broadcast():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(5, 3, 6, generator=g)
    scale = torch.tensor([0.1, 0.5, 1.0, 2.0, 3.0, 0.75])
    x_hat, stats, spikes = mhse_closed_form(x, scale, 3, 4, with_spikes=True)
    assert torch.equal(x_hat, mhse_simulate(x, scale, 3, 4)[0])
    for c in range(6):
        column, col_stats, col_spikes = mhse_closed_form(x[..., c], scale[c].item(), 3, 4, with_spikes=True)
        assert torch.equal(x_hat[..., c], column) and torch.equal(spikes[..., c], col_spikes)
    with pytest.raises(ValueError, match="broadcast"):
        mhse_closed_form(x, torch.ones(5), 3, 4)
    with pytest.raises(ValueError, match="> 0"):
        mhse_closed_form(x, torch.tensor([1.0, 0.0, 1.0, 1.0, 1.0, 1.0]), 3, 4)


def test_many_layers_count_bit_by_bit():
    # above 16 layers the counts come from bit extraction instead of a histogram
    g = torch.Generator().manual_seed(5)
    x = torch.randn(64, generator=g)
    for layers in (16, 17):
        sim_hat, sim_stats, sim_spikes, _ = mhse_simulate(x, 1.0, 3, layers)
        cf_hat, cf_stats, cf_spikes = mhse_closed_form(x, 1.0, 3, layers, with_spikes=True)
        assert torch.equal(sim_hat, cf_hat) and torch.equal(sim_spikes, cf_spikes)
        assert torch.equal(sim_stats.spikes_per_layer_step, cf_stats.spikes_per_layer_step)
        assert torch.equal(mhse_spike_counts(x, 1.0, 3, layers), sim_spikes.sum((0, 1)))


def test_low_precision_inputs_and_stats_arithmetic():
    g = torch.Generator().manual_seed(6)
    x = torch.randn(200, generator=g)
    for dtype in (torch.bfloat16, torch.float16, torch.float64):
        xd = x.to(dtype)
        cf_hat, cf_stats, _ = mhse_closed_form(xd, 0.7, 4, 4, init_half=True)
        assert cf_hat.dtype == dtype and torch.equal(cf_hat, mhse_simulate(xd, 0.7, 4, 4, init_half=True)[0])
    s1 = mhse_closed_form(x[:120], 1.0, 2, 3)[1]
    s2 = mhse_closed_form(x[120:], 1.0, 2, 3)[1]
    total = s1 + s2
    whole = mhse_closed_form(x, 1.0, 2, 3)[1]
    assert isinstance(total, SpikeStats) and torch.equal(total.spikes_per_layer_step, whole.spikes_per_layer_step)
    assert (total.flag_spikes, total.clipped, total.numel) == (whole.flag_spikes, whole.clipped, whole.numel)
    assert whole.firing_rate == whole.layer_spikes / (200 * 2 * 3) and 0 < whole.firing_rate < 1
    assert mhse_closed_form(x, 1.0, 2, 3, stats=False)[1] is None


def test_straight_through_gradient():
    x = torch.tensor([0.3, -1.2, 1.9, -2.5, 0.0], requires_grad=True)  # A_max = 1.75 with 3 layers
    x_hat, _, _ = mhse_closed_form(x, 1.0, 2, 3, straight_through=True)
    assert torch.equal(x_hat, mhse_closed_form(x, 1.0, 2, 3)[0])
    (x_hat * torch.arange(1.0, 6.0)).sum().backward()
    assert x.grad.tolist() == [1.0, 2.0, 0.0, 0.0, 5.0]  # identity inside the range, 0 where clipped
    assert not mhse_closed_form(x, 1.0, 2, 3)[0].requires_grad


def test_other_bases_and_bad_input():
    x = torch.tensor([0.8, -0.3])
    with pytest.raises(ValueError, match="base 2"):
        mhse_closed_form(x, 1.0, 2, 3, base=3.0)
    # the simulation runs any base; its decoded value never exceeds the input (soft reset keeps residue)
    x_hat, _, spikes, _ = mhse_simulate(x, 1.0, 4, 3, base=3.0)
    assert spikes.shape == (4, 3, 2) and bool((x_hat.abs() <= x.abs()).all())
    with pytest.raises(ValueError, match="NaN"):
        mhse_closed_form(torch.tensor([float("nan")]), 1.0, 1, 2)
    with pytest.raises(TypeError):
        mhse_closed_form(torch.tensor([1, 2]), 1.0, 1, 2)
    with pytest.raises(ValueError, match="T"):
        mhse_closed_form(x, 1.0, 0, 2)
    with pytest.raises(ValueError, match="unknown encoding"):
        spike_encode(x, 1.0, "ttfs")


@pytest.mark.parametrize("T,layers,init_half,n_int", [(1, 4, False, 1), (1, 3, False, 1), (1, 12, False, 0), (1, 5, True, 1), (3, 5, True, 1), (4, 1, False, 1), (7, 8, True, 0), (2, 24, False, 2)])
@pytest.mark.parametrize("compiled", [True, False], ids=["compiled-if-built", "tensor-ops"])
def test_decode_fast_path_is_bit_identical(T, layers, init_half, n_int, compiled, monkeypatch):
    """Both paths of the general case (T > 1): what ``auto`` takes (torch.compile's fused pass where
    it compiles), and the tensor operations on their own (backend ``torch``, the path of a machine
    without a compiler), each against the closed form."""
    from spikelm.ops import backend
    from spikelm.spiking.encoding import mhse_decode

    monkeypatch.setattr(backend, "_default", "auto" if compiled else "torch")

    g = torch.Generator().manual_seed(T * 100 + layers)
    x = torch.cat([torch.randn(4000, generator=g) * 3, torch.tensor([0.0, -0.0, 1.0, -1.0, 1e-30, 1e30, float("inf")]),
                   torch.arange(-64, 65, dtype=torch.float32) / (T * 2 ** (layers - n_int))])
    # values at, just above and just below every rounding point (k + 1/2) w_l s and grid point k w_l s
    pts = (torch.arange(0, 2 * min(2**layers, 64) + 2, dtype=torch.float64) / 2 * 0.7 * 2.0 ** (n_int - layers)).float()
    pts = torch.cat([pts, torch.nextafter(pts, torch.tensor(1e9)), torch.nextafter(pts, torch.tensor(-1e9))])
    x = torch.cat([x, pts, -pts])
    for scale in (torch.tensor(0.7), torch.rand(x.shape, generator=g) + 0.1):
        for xx in (x, x.bfloat16(), x.half()):
            ref = mhse_closed_form(xx, scale, T, layers, n_int=n_int, init_half=init_half, stats=False)[0]
            got = mhse_decode(xx, scale, T, layers, n_int=n_int, init_half=init_half)
            assert got.dtype == xx.dtype and torch.equal(got, ref), xx.dtype
            assert torch.equal(got.signbit(), ref.signbit() | (xx.signbit() & (ref == 0)))  # only -0.0 keeps its sign
