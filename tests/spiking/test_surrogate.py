"""Surrogate spikes: exact step forward; backward = derivative of the named primitive."""

from __future__ import annotations

import math

import pytest
import torch

from spikelm.spiking.surrogate import ArcTan, Sigmoid, heaviside, make_surrogate


def test_forward_is_exact_step_with_one_at_zero():
    x = torch.tensor([-2.0, -(2.0**-14), -0.0, 0.0, 2.0**-14, 3.0])  # representable in every dtype
    assert torch.equal(heaviside(x), torch.tensor([0.0, 0.0, 1.0, 1.0, 1.0, 1.0]))
    for dtype in (torch.float16, torch.bfloat16, torch.float64):
        y = ArcTan()(x.to(dtype))
        assert y.dtype == dtype and torch.equal(y, heaviside(x).to(dtype))


@pytest.mark.parametrize("surrogate", [ArcTan(), ArcTan(alpha=0.5), ArcTan(alpha=5.0), Sigmoid(), Sigmoid(alpha=1.5)], ids=repr)
def test_gradient_is_derivative_of_primitive(surrogate):
    x = torch.linspace(-3.0, 3.0, 241, dtype=torch.float64).requires_grad_(True)
    upstream = torch.linspace(0.5, 2.0, 241, dtype=torch.float64)
    (surrogate(x) * upstream).sum().backward()

    h = 1e-5
    with torch.no_grad():
        finite_difference = (surrogate.primitive(x + h) - surrogate.primitive(x - h)) / (2 * h)
    torch.testing.assert_close(x.grad, upstream * finite_difference, rtol=1e-8, atol=1e-9)


def test_arctan_alpha_2_is_spikegpt_eq_1():
    # SpikeGPT eq. (1): (1/pi) arctan(pi x) + 1/2; its derivative 1 / (1 + (pi x)^2) peaks at 1.
    x = torch.linspace(-2, 2, 101, dtype=torch.float64)
    atan = ArcTan()
    torch.testing.assert_close(atan.primitive(x), torch.atan(math.pi * x) / math.pi + 0.5, rtol=0, atol=1e-15)
    torch.testing.assert_close(atan.derivative(x), 1 / (1 + (math.pi * x) ** 2), rtol=1e-15, atol=0)
    assert atan.derivative(torch.zeros(1, dtype=torch.float64)).item() == 1.0


def test_heaviside_by_name_and_bad_arguments():
    x = torch.tensor([0.25], requires_grad=True)
    heaviside(x, "sigmoid", alpha=4.0).sum().backward()
    g = torch.sigmoid(torch.tensor(1.0))
    assert torch.allclose(x.grad, 4.0 * g * (1 - g))
    with pytest.raises(ValueError, match="unknown surrogate"):
        make_surrogate("relu")
    with pytest.raises(ValueError, match="alpha"):
        ArcTan(alpha=0.0)
