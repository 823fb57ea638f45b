"""IF (SpikeRWKV eq. 1-2) and LIF (SpikeGPT eq. 13) neurons on hand-computed inputs."""

from __future__ import annotations

import pytest
import torch

from spikelm.spiking.neurons import IFNeuron, LIFNeuron
from spikelm.spiking.surrogate import ArcTan

# Binary fractions throughout, so every membrane value below is exact in float32.


def run_steps(neuron, inputs):
    v = None
    spikes, membranes = [], []
    for x in inputs:
        s, v = neuron.step(torch.tensor([x]), v)
        spikes.append(s.item())
        membranes.append(v.item())
    return spikes, membranes


def test_if_soft_reset_by_hand():
    # u = v + x; s = [u >= 1]; v = u - s
    #   x: 0.625 0.625 0.625 0.25  1.5   0.5  0.5
    #   u: 0.625 1.25  0.875 1.125 1.625 1.125 0.625
    neuron = IFNeuron(threshold=1.0)
    spikes, membranes = run_steps(neuron, [0.625, 0.625, 0.625, 0.25, 1.5, 0.5, 0.5])
    assert spikes == [0, 1, 0, 1, 1, 1, 0]
    assert membranes == [0.625, 0.25, 0.875, 0.125, 0.625, 0.125, 0.625]


def test_if_fires_exactly_at_threshold_and_keeps_excess():
    neuron = IFNeuron(threshold=0.5)
    spikes, membranes = run_steps(neuron, [0.25, 0.25, 1.25])
    # u: 0.25, 0.5 (== threshold: fires, v = 0), 1.25 (fires once, keeps 0.75)
    assert spikes == [0, 1, 1]
    assert membranes == [0.25, 0.0, 0.75]


def test_lif_hard_reset_by_hand():
    # beta = 1/2: u = v + (x - v)/2 = (v + x)/2; s = [u >= 1]; v = u (1 - s)
    #   x: 1.5  0.0   2.0    1.0  3.0  0.0
    #   u: 0.75 0.375 1.1875 0.5  1.75 0.0
    neuron = LIFNeuron(beta=0.5)
    spikes, membranes = run_steps(neuron, [1.5, 0.0, 2.0, 1.0, 3.0, 0.0])
    assert spikes == [0, 0, 1, 0, 1, 0]
    assert membranes == [0.75, 0.375, 0.0, 0.5, 0.0, 0.0]


def test_lif_subtract_reset_and_other_beta_by_hand():
    # beta = 1/4: u = v + (x - v)/4; soft reset v = u - s
    #   x: 4.0  4.0   0.0
    #   u: 1.0  1.0   0.0   -> fire, fire (v = 0 each time), rest
    neuron = LIFNeuron(beta=0.25, reset="subtract")
    assert run_steps(neuron, [4.0, 4.0, 0.0]) == ([1, 1, 0], [0.0, 0.0, 0.0])
    # beta = 1/2, subtract: x 2.5 -> u 1.25, v 0.25; x 2.0 -> u 1.125, v 0.125; x 0 -> u 0.0625
    neuron = LIFNeuron(beta=0.5, reset="subtract")
    assert run_steps(neuron, [2.5, 2.0, 0.0]) == ([1, 1, 0], [0.25, 0.125, 0.0625])


def test_lif_leaks_towards_v_reset():
    # v_reset = -1: a fresh membrane starts at -1; u = v + (x - (v - v_reset))/2
    # x = 0: u = -1 + (0 - 0)/2 = -1 (stays at rest); x = 1: u = -1 + (1 - 0)/2 = -0.5
    neuron = LIFNeuron(beta=0.5, v_reset=-1.0)
    s, v = neuron.step(torch.tensor([0.0, 1.0]))
    assert torch.equal(s, torch.zeros(2)) and torch.equal(v, torch.tensor([-1.0, -0.5]))


@pytest.mark.parametrize(
    "neuron",
    [IFNeuron(threshold=0.75), LIFNeuron(beta=0.5), LIFNeuron(beta=0.3, reset="subtract", detach_reset=True)],
    ids=["if", "lif-zero", "lif-subtract"],
)
def test_multi_step_carried_state_equals_one_run(neuron):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 10, 5, generator=g) + 0.8  # (B, T, C), time along dim 1 as in SpikeGPT
    spikes, v = neuron.multi_step(x, dim=1)
    s1, v1 = neuron.multi_step(x[:, :4], dim=1)
    s2, v2 = neuron.multi_step(x[:, 4:], v1, dim=1)
    assert spikes.shape == x.shape and v.shape == (3, 5)
    assert 0 < spikes.sum() < spikes.numel()
    assert torch.equal(torch.cat([s1, s2], dim=1), spikes) and torch.equal(v2, v)

    # the same as stepping by hand, and forward dispatches on time_dim
    v_hand = None
    for t in range(10):
        s_t, v_hand = neuron.step(x[:, t], v_hand)
        assert torch.equal(s_t, spikes[:, t])
    assert torch.equal(v_hand, v)
    neuron.time_dim = 1
    s_fwd, v_fwd = neuron(x)
    neuron.time_dim = None
    assert torch.equal(s_fwd, spikes) and torch.equal(v_fwd, v)


def test_one_step_gradient_is_surrogate_derivative():
    x = torch.tensor([-1.0, 0.5, 1.9, 2.0, 2.1, 4.0], dtype=torch.float64, requires_grad=True)
    atan = ArcTan()
    s, _ = LIFNeuron(beta=0.5).step(x)
    s.sum().backward()
    # ds/dx = beta * g'(beta x - threshold)
    with torch.no_grad():
        expected = 0.5 * atan.derivative(0.5 * x - 1.0)
    torch.testing.assert_close(x.grad, expected, rtol=1e-15, atol=0)

    x.grad = None
    s, _ = IFNeuron(threshold=0.5).step(x)
    s.sum().backward()
    with torch.no_grad():
        expected = atan.derivative(x - 0.5)
    torch.testing.assert_close(x.grad, expected, rtol=1e-15, atol=0)


def test_detach_reset_cuts_the_reset_path():
    # Step 1 fires (u1 = 1.5). With hard reset v1 = u1 (1 - s1): its derivative through s1 is
    # -u1 * ds1/dx1, which detach_reset removes; through u1 it is (1 - s1) = 0. So the second
    # spike depends on x1 only through the reset path.
    def grad_of_second_spike(detach_reset):
        x = torch.tensor([3.0, 1.0], dtype=torch.float64, requires_grad=True)
        spikes, _ = LIFNeuron(beta=0.5, detach_reset=detach_reset).multi_step(x)
        spikes[1].backward()
        return x.grad[0].item()

    assert grad_of_second_spike(True) == 0.0
    atan = ArcTan()
    u1, u2 = 1.5, 0.5  # u2 = (0 + 1) / 2
    dv1 = -u1 * 0.5 * atan.derivative(torch.tensor(u1 - 1.0, dtype=torch.float64)).item()
    expected = atan.derivative(torch.tensor(u2 - 1.0, dtype=torch.float64)).item() * 0.5 * dv1
    assert grad_of_second_spike(False) == pytest.approx(expected, rel=1e-12)


def test_bad_arguments():
    with pytest.raises(ValueError, match="reset"):
        LIFNeuron(reset="hard")
    with pytest.raises(ValueError, match="beta"):
        LIFNeuron(beta=1.5)
    with pytest.raises(ValueError, match="time step"):
        IFNeuron().multi_step(torch.zeros(0, 3))


@pytest.mark.parametrize(
    "neuron",
    [
        IFNeuron(threshold=0.75),
        IFNeuron(threshold=1.0, detach_reset=True),
        LIFNeuron(beta=0.5),
        LIFNeuron(beta=0.5, detach_reset=True),
        LIFNeuron(beta=0.3, reset="subtract"),
        LIFNeuron(beta=0.7, v_reset=-0.5),
    ],
    ids=["if", "if-detach", "lif-zero", "lif-zero-detach", "lif-subtract", "lif-vreset"],
)
def test_fused_multi_step_equals_reference(neuron):
    """The fast path (no per-step graph, hand-written backward) against the plain autograd loop:
    the same spikes and membranes bit for bit, the same gradients for the input, the initial
    membrane and through both outputs."""
    g = torch.Generator().manual_seed(1)
    x = (torch.randn(3, 17, 6, generator=g, dtype=torch.float64) * 1.5 + 0.6).requires_grad_()
    v0 = (torch.randn(3, 6, generator=g, dtype=torch.float64) * 0.3).requires_grad_()
    w_s = torch.randn(3, 17, 6, generator=g, dtype=torch.float64)
    w_v = torch.randn(3, 6, generator=g, dtype=torch.float64)
    results = []
    for fused in (True, False):
        neuron.fused = fused
        s, v = neuron.multi_step(x, v0, dim=1)
        ((s * w_s).sum() + (v * w_v).sum()).backward()
        results.append((s.detach(), v.detach(), x.grad.clone(), v0.grad.clone()))
        x.grad, v0.grad = None, None
    neuron.fused = True
    (s_f, v_f, gx_f, gv_f), (s_r, v_r, gx_r, gv_r) = results
    assert 0 < s_r.mean() < 1  # some spikes, not all
    assert torch.equal(s_f, s_r) and torch.equal(v_f, v_r)
    torch.testing.assert_close(gx_f, gx_r, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(gv_f, gv_r, rtol=1e-12, atol=1e-14)
    with torch.no_grad():  # the no-graph path gives the same values too
        s_n, v_n = neuron.multi_step(x, v0, dim=1)
    assert torch.equal(s_n, s_r) and torch.equal(v_n, v_r)
