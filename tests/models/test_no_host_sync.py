"""Forward + backward of every model family without host syncs or mixed devices.

Runs on the ``meta`` device: no data, so any read-back of a value (``.item()``, ``bool(t)``,
``.tolist()``, which all dispatch ``aten._local_scalar_dense``) fails, and the dispatch mode
below also names it. On a GPU each such read stalls the stream; in a model's forward it is
paid per layer and token.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from conftest import make_rwkv6
from spikelm.config import SPIKEGPT_PRESETS, SpikeGPTConfig
from spikelm.convert import attach_encoders, preset_config
from spikelm.models.spikegpt import SpikeGPT

SYNC_OPS = {torch.ops.aten._local_scalar_dense.default, torch.ops.aten.item.default}


class NoSyncSameDevice(TorchDispatchMode):
    """Records host syncs and ops whose tensor arguments live on more than one device."""

    def __init__(self) -> None:
        super().__init__()
        self.syncs: list[str] = []
        self.mixed: list[str] = []
        self.n_ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        self.n_ops += 1
        if func in SYNC_OPS:
            self.syncs.append(str(func))
        devices = set()
        for a in torch.utils._pytree.tree_leaves((args, kwargs)):
            if isinstance(a, torch.Tensor):
                devices.add(a.device.type)
        if len(devices) > 1:
            self.mixed.append(f"{func} on {sorted(devices)}")
        return func(*args, **kwargs)


def _rwkv6():
    return make_rwkv6(n_layer=2, n_embd=32, head_size=16)


def _spikegpt():
    model = SpikeGPT(SpikeGPTConfig(**{**SPIKEGPT_PRESETS["tiny"], "n_embd": 32, "n_layer": 2}))
    return model.init_weights(seed=0)


def _converted(sites: str, preset: str):
    model = attach_encoders(_rwkv6(), preset_config(preset, sites))
    for mod in model.modules():  # straight-through: the encoders' training path runs too
        if hasattr(mod, "straight_through"):
            mod.straight_through = True
    return model


FAMILIES = {
    "rwkv6": _rwkv6,
    "spikegpt": _spikegpt,
    "converted-time_mix": lambda: _converted("time_mix", "SpikeRWKV-4L"),
    "converted-all": lambda: _converted("all", "spikelm-4L"),
    "converted-all-rate": lambda: _converted("all", "SNN-RWKV-3"),
}


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("T", [1, 9])
def test_forward_backward_on_meta_without_host_sync(family, T):
    model = FAMILIES[family]().train().to("meta")
    idx = torch.zeros(2, T, dtype=torch.long, device="meta")
    mode = NoSyncSameDevice()
    with mode:
        logits, state = model(idx)
        logits, _ = model(idx[:, :1], state)  # continue from a carried state (decoding)
        logits.float().sum().backward()
    assert not mode.syncs, mode.syncs
    assert not mode.mixed, mode.mixed[:5]
    assert mode.n_ops > 0
