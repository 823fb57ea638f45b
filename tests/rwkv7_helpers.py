"""Random RWKV-7 weights in the official x070 layout, written from the key list (not from our
module), and the `rwkv` package as an outside reference run in a subprocess.

The package picks its RWKV generation when it is imported (``RWKV_V7_ON=1`` must be set before),
and other tests import it in-process in RWKV-6 mode, so the RWKV-7 reference always runs in a
fresh interpreter: :func:`run_reference` writes a job file, runs ``rwkv7_reference.py`` on it and
reads the logits back.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

REFERENCE_SCRIPT = Path(__file__).with_name("rwkv7_reference.py")


def official_rwkv7_state_dict(
    n_layer: int = 2, n_embd: int = 64, head_size: int = 16, vocab_size: int = 257, dim_ffn: int | None = None,
    lora: tuple[int, int, int, int] = (8, 16, 4, 24), seed: int = 0, layer0_value_lora: bool = True,
) -> dict[str, torch.Tensor]:
    """A random state dict with the official names and shapes; ``lora`` = (decay, a, v, gate) sizes.

    Values are non-trivial everywhere (the scratch init zeros several), with decay pre-activations
    spread over the whole sigmoid so that both fast and slow channels occur.
    """
    g = torch.Generator().manual_seed(seed)
    C, N, V = n_embd, head_size, vocab_size
    H, Fh = C // N, dim_ffn or 4 * n_embd
    Dw, Da, Dv, Dg = lora

    def randn(*shape, scale=1.0):
        return torch.randn(*shape, generator=g) * scale

    def rand(*shape, lo=0.0, hi=1.0):
        return torch.rand(*shape, generator=g) * (hi - lo) + lo

    def vec():  # a [1, 1, C] mixing coefficient
        return rand(1, 1, C)

    sd: dict[str, torch.Tensor] = {"emb.weight": randn(V, C)}
    for i in range(n_layer):
        p = f"blocks.{i}."
        if i == 0:
            sd[p + "ln0.weight"], sd[p + "ln0.bias"] = 1 + randn(C, scale=0.1), randn(C, scale=0.1)
        for ln in ("ln1", "ln2"):
            sd[p + ln + ".weight"], sd[p + ln + ".bias"] = 1 + randn(C, scale=0.1), randn(C, scale=0.1)
        a = p + "att."
        for m in ("x_r", "x_w", "x_k", "x_v", "x_a", "x_g"):
            sd[a + m] = vec()
        sd[a + "w0"] = rand(1, 1, C, lo=-4.0, hi=4.0)
        sd[a + "w1"], sd[a + "w2"] = randn(C, Dw, scale=C**-0.5), randn(Dw, C, scale=0.5)
        sd[a + "a0"] = randn(1, 1, C, scale=0.5)
        sd[a + "a1"], sd[a + "a2"] = randn(C, Da, scale=C**-0.5), randn(Da, C, scale=0.5)
        if i > 0 or layer0_value_lora:
            sd[a + "v0"] = randn(1, 1, C, scale=0.5)
            sd[a + "v1"], sd[a + "v2"] = randn(C, Dv, scale=C**-0.5), randn(Dv, C, scale=0.5)
        sd[a + "g1"], sd[a + "g2"] = randn(C, Dg, scale=C**-0.5), randn(Dg, C, scale=Dg**-0.5)
        sd[a + "k_k"] = rand(1, 1, C, lo=0.5, hi=1.0)
        sd[a + "k_a"] = vec()
        sd[a + "r_k"] = randn(H, N, scale=0.3)
        for lin in ("receptance", "key", "value", "output"):
            sd[a + lin + ".weight"] = randn(C, C, scale=C**-0.5)
        sd[a + "ln_x.weight"], sd[a + "ln_x.bias"] = 1 + randn(C, scale=0.1), randn(C, scale=0.1)
        f = p + "ffn."
        sd[f + "x_k"] = vec()
        sd[f + "key.weight"], sd[f + "value.weight"] = randn(Fh, C, scale=C**-0.5), randn(C, Fh, scale=Fh**-0.5)
    sd["ln_out.weight"], sd["ln_out.bias"] = 1 + randn(C, scale=0.1), randn(C, scale=0.1)
    sd["head.weight"] = randn(V, C, scale=C**-0.5)
    return sd


def run_reference(jobs: list[dict], workdir: Path, timeout: float = 240.0) -> list[dict[str, torch.Tensor]]:
    """Run the `rwkv` package (RWKV-7 mode) on each job in one subprocess; return its logits.

    A job: ``{"model": path to a .pth, "tokens": [...], "cut": int, "strategies": ["cpu fp32", ...]}``.
    For each strategy the result holds ``"{strategy}/prefill"`` (T, V): the whole sequence in one
    call, and ``"{strategy}/carried"`` (T, V): ``tokens[:cut]`` in one call, then one token per
    call with the state carried.
    """
    job_file, out_file = workdir / "rwkv7_jobs.json", workdir / "rwkv7_reference.pt"
    job_file.write_text(json.dumps(jobs))
    env = dict(os.environ, RWKV_V7_ON="1", RWKV_JIT_ON="0", RWKV_CUDA_ON="0", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(REFERENCE_SCRIPT), str(job_file), str(out_file)],
                          env=env, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"the rwkv reference failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return torch.load(out_file, weights_only=True)
