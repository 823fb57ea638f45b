"""torch.compile graph breaks per model family (``torch._dynamo.explain``), forward and decode step.

Run: ``python benchmarks/compile_budget.py``. Tiny random models (2 layers, C = 64) on the CPU;
graph breaks do not depend on the size. A graph break splits a compiled region (each one costs a
Python round trip per call), so the budget is 0 for every family; the reasons are printed. The ops
run as the backend (``SPIKELM_BACKEND``, default auto) picks them: with the C++ kernels built,
they appear in the graphs as custom ops (each has a fake implementation).

Two tables: with spikelm's compiled CPU kernels as a CPU run takes them, and with them switched
off (``SPIKELM_NO_CPP_KERNELS=1``, a child process: the tensor operations, which is what a GPU runs).
"""

from __future__ import annotations

import os
import subprocess
import sys

import torch

from spikelm.config import SpikeGPTConfig
from spikelm.convert import attach_encoders, preset_config
from spikelm.models.spikegpt import SpikeGPT
from spikelm.ops.backend import default_backend
from spikelm.ops.kernels import library
from spikelm.testing import make_rwkv6


def explain(name: str, model: torch.nn.Module, T: int) -> None:
    torch._dynamo.reset()
    x = torch.randint(0, 257, (1, T))
    with torch.no_grad():
        _, state = model(x)
        out = torch._dynamo.explain(model)(x[:, :1], state) if T == 1 else torch._dynamo.explain(model)(x)
    reasons = sorted({str(b.reason).splitlines()[0][:100] for b in out.break_reasons})
    print(f"| {name} | {'decode step' if T == 1 else f'forward T={T}'} | {out.graph_break_count} | {out.graph_count} | "
          f"{'; '.join(reasons) or '-'} |")


def main() -> None:
    torch.manual_seed(0)
    child = "--kernels-off-child" in sys.argv
    if not child:
        print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, dtype float32, CPU")
        print(f"backend: {default_backend()} (spikelm.ops.backend)")
    state = ("off (SPIKELM_NO_CPP_KERNELS=1)" if child else
             "on, traced as custom ops through their fake implementations" if library() is not None
             else "on, but NOT available here (tensor operations)")
    print(f"\nspikelm's compiled CPU kernels {state}:\n")
    print("| model | call | graph breaks | graphs | reasons |")
    print("|---|---|---:|---:|---|")
    ann = make_rwkv6(n_layer=2, n_embd=64, head_size=16)
    for T in (16, 1):
        explain("RWKV-6 ANN", ann, T)
    for preset, sites in (("SpikeRWKV-4L", "time_mix"), ("spikelm-4L", "all"), ("SNN-RWKV-4", "all")):
        conv = attach_encoders(make_rwkv6(n_layer=2, n_embd=64, head_size=16), preset_config(preset, sites)).eval()
        for T in (16, 1):
            explain(f"converted {preset} ({sites})", conv, T)
    sg = SpikeGPT(SpikeGPTConfig(vocab_size=257, n_layer=2, n_embd=64, ctx_len=64)).eval()
    explain("SpikeGPT", sg, 16)
    if not child:
        sys.stdout.flush()
        subprocess.run([sys.executable, __file__, "--kernels-off-child"], check=True,
                       env=dict(os.environ, SPIKELM_NO_CPP_KERNELS="1"))


if __name__ == "__main__":
    main()
