"""Aten operations per decode step and per token, counted with a TorchDispatchMode.

Run: ``python benchmarks/aten_ops.py``. Counts (not times) of the ops dispatched:
* one decode step (T = 1, state carried) of a tiny RWKV-6 (2 layers, C = 64), as an ANN and
  converted (SpikeRWKV-4L on the time-mixing sites, spikelm-4L on all sites);
* SpikeGPT (2 layers, C = 64), forward + backward: the marginal ops per token, from T = 16 and
  T = 48 ((ops(48) - ops(16)) / 32), which is what the LIF loops and the WKV chunk loop add;
  and one LIF neuron alone (SpikeGPT has two per layer).
Host syncs (``aten._local_scalar_dense``) are counted separately.

A call of one of spikelm's compiled CPU kernels (``spikelm_cpu::*``: on the CPU a plain RWKV-6
decodes each block in one such call) is one dispatched op, and hides the block's work from the
count (from the dispatcher, and from anything that traces at that level: torch.compile, CUDA
graphs, a profiler). So each decode-step count is printed twice: with the kernels as a CPU run
takes them (and how many of those ops are compiled calls), and with them switched off
(``SPIKELM_NO_CPP_KERNELS=1``, measured in a child process): the tensor operations of the same
step, which is also what a GPU runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

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
        self.compiled: dict[str, int] = {}  # calls of spikelm's compiled CPU kernels (each one op here), by name

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += 1
        self.syncs += func is torch.ops.aten._local_scalar_dense.default
        if func.namespace == "spikelm_cpu":
            name = func.__name__.split(".")[0]
            self.compiled[name] = self.compiled.get(name, 0) + 1
        return func(*args, **(kwargs or {}))


def rwkv6(sites: str | None, preset: str = "SpikeRWKV-4L") -> RWKV6:
    model = RWKV6(RWKV6Config(n_layer=2, n_embd=64, vocab_size=257, head_size=16, tokenizer="bytes")).init_weights(0)
    if sites:
        attach_encoders(model, preset_config(preset, sites))
    return model.eval()


def decode_step_ops(model) -> tuple[int, int, dict[str, int]]:
    with torch.no_grad():
        _, state = model(torch.zeros(1, 4, dtype=torch.long))
        mode = Count()
        with mode:
            model(torch.zeros(1, 1, dtype=torch.long), state)
    return mode.ops, mode.syncs, mode.compiled


DECODE_MODELS = (("RWKV-6 ANN", None, "SpikeRWKV-4L"), ("converted, time_mix sites", "time_mix", "SpikeRWKV-4L"),
                 ("converted, all sites", "all", "spikelm-4L"))


def decode_counts() -> dict[str, tuple[int, int, dict[str, int]]]:
    return {name: decode_step_ops(rwkv6(sites, preset)) for name, sites, preset in DECODE_MODELS}


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
    if "--decode-counts-json" in sys.argv:  # the child process of the kernels-off column
        print(json.dumps(decode_counts()))
        return
    from spikelm.ops.kernels import library

    built = library() is not None
    child = subprocess.run([sys.executable, __file__, "--decode-counts-json"], capture_output=True, text=True, check=True,
                           env=dict(os.environ, SPIKELM_NO_CPP_KERNELS="1"))
    off = json.loads(child.stdout.splitlines()[-1])
    print(f"torch {torch.__version__}, threads used: {torch.get_num_threads()}, float32, batch 1; "
          f"spikelm's compiled CPU kernels: {'built' if built else 'NOT available (both columns are tensor operations)'}")
    print("decode step (T = 1, state carried), RWKV-6 2 layers C = 64: ops dispatched")
    print(f"  {'model':<28} {'kernels on':>10} {'kernels off':>12} {'host syncs on/off':>18}   compiled calls among 'kernels on'")
    for name, (ops, syncs, compiled) in decode_counts().items():
        o_ops, o_syncs, _ = off[name]
        calls = ", ".join(f"{n} x{c}" for n, c in sorted(compiled.items())) or "-"
        print(f"  {name:<28} {ops:>10} {o_ops:>12} {f'{syncs}/{o_syncs}':>18}   {calls}")
    print("  A compiled call counts as one op, however much work it does (rwkv6_block_step: a whole block); that\n"
          "  work is unseen by the dispatcher, torch.compile and a profiler. 'kernels off' counts the same step in\n"
          "  tensor operations (SPIKELM_NO_CPP_KERNELS=1, a child process), as a GPU or a machine without a compiler runs it.")
    (a, sa), (b, sb) = spikegpt_fwd_bwd_ops(16), spikegpt_fwd_bwd_ops(48)
    print(f"SpikeGPT 2 layers fwd+bwd: T=16 {a} ops ({sa} syncs), T=48 {b} ops ({sb} syncs), {(b - a) / 32:.1f} ops per token")
    a, b = lif_fwd_bwd_ops(16), lif_fwd_bwd_ops(48)
    print(f"one LIF neuron fwd+bwd (SpikeGPT's, fused): {(b - a) / 32:.1f} ops per token; x4 LIFs of 2 layers = {4 * (b - a) / 32:.1f}")


if __name__ == "__main__":
    main()
