"""The learned step size (LSQ) of the spike encoders: value, input gradient, scale gradient."""

from __future__ import annotations

import math

import pytest
import torch

from spikelm.config import EncodingConfig
from spikelm.spiking.encoding import mhse_a_max, mhse_closed_form, mhse_decode
from spikelm.spiking.lsq import lsq_grad_scale, mhse_learned_step
from spikelm.spiking.layers import SpikeEncoder


def _soft(x: torch.Tensor, s: torch.Tensor, s0: torch.Tensor, T: int, layers: int, n_int: int, init_half: bool) -> torch.Tensor:
    """The soft (pre-floor) form at ``s``: the levels held at their value at ``s0`` while ``|x| / s``
    moves with ``s`` (float64): ``sign * (s w_l q0 / T + min(|x|, s A_max) - s min(|x| / s0, A_max))``."""
    a_max = mhse_a_max(layers, 2.0, n_int)
    x64 = x.double()
    q_over_T = mhse_decode(x, s0.float(), T, layers, n_int, init_half).double().abs() / s0.double()  # w_l q0 / T
    u0 = torch.minimum(x64.abs() / s0.double(), torch.tensor(a_max, dtype=torch.float64))
    mag = s * q_over_T + torch.minimum(x64.abs(), s * a_max) - s * u0
    return torch.where(x64 < 0, -mag, mag)


@pytest.mark.parametrize("T,layers,init_half,granularity", [(1, 4, False, "tensor"), (1, 3, True, "channel"),
                                                             (4, 1, False, "tensor"), (3, 2, True, "channel")])
def test_scale_gradient_is_the_derivative_of_the_soft_form(T, layers, init_half, granularity):
    g = torch.Generator().manual_seed(T * 10 + layers)
    C = 6
    x = torch.randn(5, 7, C, generator=g) * 1.3  # about 1 value in 10 clipped at these scales
    s0 = (torch.rand(C if granularity == "channel" else (), generator=g) * 0.5 + 0.5).float()
    w = torch.randn(x.shape, generator=g, dtype=torch.float64)  # an arbitrary upstream gradient

    scale = s0.clone().requires_grad_(True)
    xr = x.clone().requires_grad_(True)
    out = mhse_learned_step(xr, scale, T, layers, 1, init_half, grad_scale=1.0)
    (out.double() * w).sum().backward()

    # central finite differences of the soft form, one scale entry at a time (float64, exact levels)
    h = 1e-6
    fd = torch.zeros_like(s0, dtype=torch.float64)
    for idx in range(s0.numel()):
        bump = torch.zeros(s0.numel(), dtype=torch.float64)
        bump[idx] = h
        bump = bump.reshape(s0.shape)
        up = (_soft(x, s0.double() + bump, s0, T, layers, 1, init_half) * w).sum()
        down = (_soft(x, s0.double() - bump, s0, T, layers, 1, init_half) * w).sum()
        fd.view(-1)[idx] = (up - down) / (2 * h)
    torch.testing.assert_close(scale.grad.double(), fd, rtol=2e-4, atol=2e-4)
    # the input gradient: straight through inside the range, zero where clipped
    inside = (x.abs() / s0) <= mhse_a_max(layers, 2.0, 1)
    assert not bool(inside.all()) and bool(inside.any())  # both cases are exercised
    torch.testing.assert_close(xr.grad.double(), w * inside.double())


def test_value_is_the_converted_models_value_bit_for_bit():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 9, 8, generator=g)
    for T, layers, half in [(1, 4, False), (1, 4, True), (3, 1, False), (2, 3, True)]:
        s = torch.rand(8, generator=g) + 0.3
        ref, _, _ = mhse_closed_form(x, s, T, layers, init_half=half, stats=False)
        got = mhse_learned_step(x.requires_grad_(False), s.clone().requires_grad_(True), T, layers, 1, half)
        assert torch.equal(got, ref)


def test_gradient_scale_defaults_to_lsq():
    x = torch.randn(2, 3, 16)
    s = torch.tensor(0.7, requires_grad=True)
    mhse_learned_step(x, s, 1, 4).sum().backward()
    plain = s.grad.clone()
    s.grad = None
    mhse_learned_step(x, s, 1, 4, grad_scale=1.0).sum().backward()
    g = lsq_grad_scale(x.shape, s, 1, 4)
    assert g == pytest.approx(1 / math.sqrt(16 * 15))
    torch.testing.assert_close(plain, s.grad * g)
    assert lsq_grad_scale(x.shape, torch.ones(16), 2, 1) == pytest.approx(1 / math.sqrt(2))  # per channel, rate T=2


def test_encoder_learns_its_scale_and_keeps_its_key_and_dtype():
    enc = SpikeEncoder(EncodingConfig(layers=4, granularity="channel"), 8)
    enc.scale.fill_(0.5)
    enc.learn_scale(True)
    assert isinstance(enc.scale, torch.nn.Parameter) and list(enc.state_dict()) == ["scale"]
    enc.straight_through = True
    x = torch.randn(4, 8, requires_grad=True)
    enc(x).sum().backward()
    assert enc.scale.grad is not None and x.grad is not None
    held = enc.scale
    enc.to(torch.bfloat16)
    assert enc.scale is held and enc.scale.dtype == torch.float32  # same Parameter, still float32
    enc.learn_scale(False)
    assert not isinstance(enc.scale, torch.nn.Parameter) and list(enc.state_dict()) == ["scale"]
    assert torch.equal(enc.scale, torch.full((8,), 0.5))
