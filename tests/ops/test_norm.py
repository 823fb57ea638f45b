"""spikelm.ops.norm against the float64 normalisations (its naive twins) and torch's own modules."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from spikelm.ops.norm import GroupNorm, LayerNorm


def _pair(cls, ref_cls, *args, seed=0):
    g = torch.Generator().manual_seed(seed)
    ours, ref = cls(*args), ref_cls(*args)
    with torch.no_grad():
        for p in ours.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    ref.load_state_dict(ours.state_dict())
    return ours, ref


def test_float32_is_torch_bit_for_bit():
    ln, ln_ref = _pair(LayerNorm, nn.LayerNorm, 32)
    gn, gn_ref = _pair(GroupNorm, nn.GroupNorm, 4, 32)
    x = torch.randn(3, 5, 32)
    assert torch.equal(ln(x), ln_ref(x))
    assert torch.equal(gn(x.view(15, 32)), gn_ref(x.view(15, 32)))
    assert isinstance(ln, nn.LayerNorm) and isinstance(gn, nn.GroupNorm)
    assert ln.state_dict().keys() == ln_ref.state_dict().keys()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_rounds_once(dtype):
    """bf16/fp16 parameters and input: the float64 normalisation of the same values, rounded once to
    the input's dtype (half an ulp, plus float32 noise)."""
    ln, _ = _pair(LayerNorm, nn.LayerNorm, 64, seed=1)
    gn, _ = _pair(GroupNorm, nn.GroupNorm, 4, 64, seed=2)
    ln.to(dtype), gn.to(dtype)
    x = (torch.randn(6, 64, generator=torch.Generator().manual_seed(3)) * 3 + 1).to(dtype)
    eps = torch.finfo(dtype).eps
    for mod, ref in ((ln, F.layer_norm(x.double(), (64,), ln.weight.double(), ln.bias.double(), ln.eps)),
                     (gn, F.group_norm(x.double(), 4, gn.weight.double(), gn.bias.double(), gn.eps))):
        y = mod(x)
        assert y.dtype == dtype
        assert ((y.double() - ref).abs() <= eps / 2 * ref.abs() + 1e-5).all()


def test_float32_input_with_low_precision_parameters_stays_float32():
    """A bf16 model's GroupNorm takes the float32 WKV output and returns it unrounded (torch's own
    module refuses the mix)."""
    gn, gn_ref = _pair(GroupNorm, nn.GroupNorm, 2, 16, seed=4)
    gn.bfloat16()
    x = torch.randn(5, 16)
    y = gn(x)
    assert y.dtype == torch.float32
    ref = F.group_norm(x.double(), 2, gn.weight.double(), gn.bias.double(), gn.eps)
    torch.testing.assert_close(y.double(), ref, rtol=1e-5, atol=1e-5)
    with pytest.raises(RuntimeError):
        gn_ref.bfloat16()(x)
