"""Aten operations per decode step and per token, counted with a TorchDispatchMode.

Run: ``python benchmarks/aten_ops.py``. Counts (not times) of the ops dispatched:
* one decode step (T = 1, state carried) of a tiny RWKV-6 (2 layers, C = 64), as an ANN and
  converted (SpikeRWKV-4L on the time-mixing sites, spikelm-4L on all sites);
* SpikeGPT (2 layers, C = 64), forward + backward: the marginal ops per token, from T = 16 and
  T = 48 ((ops(48) - ops(16)) / 32), which is what the LIF loops and the WKV chunk loop add;
  and one LIF neuron alone (SpikeGPT has two per layer).
Host syncs (``aten._local_scalar_dense``) are counted separately.
"""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from spikelm.config import SPIKEGPT_PRESETS, RWKV6Config, SpikeGPTConfig
from spikelm.convert import attach_encoders, preset_config
from spikelm.models.rwkv6 import RWKV6
from spikelm.models.spikegpt import SpikeGPT


class Count(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops = 0
        self.syncs = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += 1
        self.syncs += func is torch.ops.aten._local_scalar_dense.default
        return func(*args, **(kwargs or {}))


def rwkv6(sites: str | None, preset: str = "SpikeRWKV-4L") -> RWKV6:
    model = RWKV6(RWKV6Config(n_layer=2, n_embd=64, vocab_size=257, head_size=16, tokenizer="bytes")).init_weights(0)
    if sites:
        attach_encoders(model, preset_config(preset, sites))
    return model.eval()


def decode_step_ops(model) -> tuple[int, int]:
    with torch.no_grad():
        _, state = model(torch.zeros(1, 4, dtype=torch.long))
        mode = Count()
        with mode:
            model(torch.zeros(1, 1, dtype=torch.long), state)
    return mode.ops, mode.syncs


def spikegpt_fwd_bwd_ops(T: int) -> tuple[int, int]:
    model = SpikeGPT(SpikeGPTConfig(**{**SPIKEGPT_PRESETS["tiny"], "n_embd": 64, "n_layer": 2})).init_weights(0).train()
    idx = torch.zeros(1, T, dtype=torch.long)
    mode = Count()
    with mode:
        logits, _ = model(idx)
        logits.sum().backward()
    return mode.ops, mode.syncs


def lif_fwd_bwd_ops(T: int) -> int:
    from spikelm.spiking.neurons import LIFNeuron

    lif = LIFNeuron(beta=0.5, threshold=1.0, reset="zero", time_dim=1)
    x = torch.randn(1, T, 64, generator=torch.Generator().manual_seed(0)).mul(2).requires_grad_()
    mode = Count()
    with mode:
        s, v = lif(x)
        (s.sum() + v.sum()).backward()
    return mode.ops


def main() -> None:
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, threads used: {torch.get_num_threads()}")
    for name, model in [("RWKV-6 ANN", rwkv6(None)), ("converted, time_mix sites", rwkv6("time_mix")),
                        ("converted, all sites", rwkv6("all", "spikelm-4L"))]:
        ops, syncs = decode_step_ops(model)
        print(f"decode step  {name:<28} {ops:5d} aten ops, {syncs} host syncs")
    (a, sa), (b, sb) = spikegpt_fwd_bwd_ops(16), spikegpt_fwd_bwd_ops(48)
    print(f"SpikeGPT 2 layers fwd+bwd: T=16 {a} ops ({sa} syncs), T=48 {b} ops ({sb} syncs), {(b - a) / 32:.1f} ops per token")
    a, b = lif_fwd_bwd_ops(16), lif_fwd_bwd_ops(48)
    print(f"one LIF neuron fwd+bwd (SpikeGPT's, fused): {(b - a) / 32:.1f} ops per token; x4 LIFs of 2 layers = {4 * (b - a) / 32:.1f}")


if __name__ == "__main__":
    main()
