"""Memory-lean loading: no second copy of the model while loading, in any dtype; low-precision
forwards stay close to fp32; a converted model loaded in bf16 keeps float32 scales and spikes."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from spikelm.checkpoints.loading import load, save, save_official
from spikelm.convert import convert, preset_config
from spikelm.convert.sites import encoders
from spikelm.spiking.encoding import mhse_closed_form
from spikelm.testing import make_rwkv6


class FreshStorageBytes(TorchDispatchMode):
    """Bytes of every new (non-meta) storage an aten op creates: views, in-place ops and tensors
    that wrap an existing storage (mmap) create none. A second model shows up as its full size."""

    def __init__(self):
        super().__init__()
        self.bytes = 0
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        seen = set()
        for a in torch.utils._pytree.tree_leaves((args, kwargs)):
            if isinstance(a, torch.Tensor) and a.device.type != "meta":
                seen.add(a.untyped_storage().data_ptr())
            elif isinstance(a, torch.UntypedStorage):
                seen.add(a.data_ptr())
        for t in torch.utils._pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.device.type != "meta":
                st = t.untyped_storage()
                if st.data_ptr() not in seen and st.nbytes() > 0:
                    seen.add(st.data_ptr())
                    self.bytes += st.nbytes()
                    self.largest = max(self.largest, st.nbytes())
        return out


def _model_bytes(m):
    return sum(t.numel() * t.element_size() for t in m.state_dict().values())


def _model():
    return make_rwkv6(n_layer=2, n_embd=64, vocab_size=512, head_size=16, seed=3)


@pytest.mark.parametrize("file_dtype,dtype", [(torch.float32, None), (torch.bfloat16, torch.bfloat16),
                                              (torch.bfloat16, None), (torch.float32, torch.float16)])
def test_load_builds_no_second_model(tmp_path, file_dtype, dtype):
    m = _model()
    p = save_official(m, tmp_path / "m.pth", dtype=file_dtype)
    with FreshStorageBytes() as count:
        loaded = load(p, dtype=dtype)
    target = dtype or torch.float32
    assert loaded.head.weight.dtype == target and not any(t.is_meta for t in loaded.state_dict().values())
    weights = _model_bytes(loaded)
    # an fp32 head is re-laid out (C, V)-major for decoding (RWKV6.lay_out_head): one head's copy
    head = loaded.head.weight.numel() * loaded.head.weight.element_size() if target == torch.float32 else 0
    if file_dtype == target:  # nothing to cast: the file's (memory-mapped) tensors are the weights
        assert count.bytes <= 0.01 * weights + head, count.bytes
    else:  # each tensor cast once: at most one model's worth, never a second fp32 model on top
        assert count.bytes <= 1.01 * weights + head, (count.bytes, weights)
    torch.testing.assert_close(loaded.head.weight, m.head.weight.to(file_dtype).to(target))


def test_counter_sees_a_second_model():
    """The counter is not blind: building a model the way load() used to (fp32, then cast) is counted."""
    with FreshStorageBytes() as count:
        m = _model().to(torch.bfloat16)
    assert count.bytes >= _model_bytes(m) * 2


@pytest.mark.parametrize("dtype,tol", [(torch.bfloat16, 0.08), (torch.float16, 0.02)])
def test_low_precision_forward_close_to_fp32(tmp_path, dtype, tol):
    """Logits of the model loaded in bf16/fp16 against fp32, relative to the logits' spread (the
    WKV recurrence runs in fp32 in both; the rest rounds to 8 / 11 mantissa bits)."""
    m = _model()
    p = save_official(m, tmp_path / "m.pth")
    m32, mlo = load(p), load(p, dtype=dtype)
    idx = torch.randint(0, 512, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y32, _ = m32(idx)
        ylo, _ = mlo(idx)
    assert ylo.dtype == dtype
    err = (ylo.float() - y32).abs().max() / y32.std()
    assert err < tol, float(err)


def test_converted_model_in_bf16_keeps_fp32_scales_and_spikes(tmp_path):
    calib = [torch.randint(0, 512, (2, 16), generator=torch.Generator().manual_seed(i)) for i in range(2)]
    m = convert(_model(), preset_config("SpikeRWKV-4L", "all"), calib)
    out = save(m, tmp_path / "conv")
    m32, m16 = load(out), load(out, dtype=torch.bfloat16)
    assert m16.head.weight.dtype == torch.bfloat16
    g = torch.Generator().manual_seed(1)
    n = 0
    for (n32, e32), (n16, e16) in zip(encoders(m32), encoders(m16)):
        assert n32 == n16 and e16.scale.dtype == torch.float32 and torch.equal(e16.scale, e32.scale)
        width = e32.scale.numel() if e32.scale.dim() else 32
        x16 = (torch.randn(3, 5, width, generator=g) * e32.scale.max() * 2).to(torch.bfloat16)  # exactly representable
        args = e32.encode_args()
        _, _, sp32 = mhse_closed_form(x16.float(), e32.scale, **args, stats=False, with_spikes=True)
        _, _, sp16 = mhse_closed_form(x16, e16.scale, **args, stats=False, with_spikes=True)
        assert torch.equal(sp32, sp16)
        n += 1
    assert n > 0
