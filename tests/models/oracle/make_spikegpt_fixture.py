"""Write the SpikeGPT oracle fixtures: random release-layout checkpoints and the logits that the
public SpikeGPT inference code computes on them.

    python tests/models/oracle/make_spikegpt_fixture.py /path/to/SpikeGPT [--out tests/models/data]

``/path/to/SpikeGPT`` is a checkout (a work tree) of https://github.com/ridgerchu/SpikeGPT. We run
its ``src/model_run.py`` (``RWKV_RNN``, what its ``run.py`` uses with the released models) exactly
as ``run.py`` does: ``FLOAT_MODE = "fp32"``, ``RUN_DEVICE = "cpu"``, one token per call, the WKV
state and the per-layer LIF nodes (``mem1``, ``mem2``) carried from call to call. Nothing of their
code is patched or copied: it is imported from the checkout (``sys.path``), and it imports on a CPU
machine without stubs (its bundled SpikingJelly only logs that CuPy / Lava are missing).
``model_run.py`` reads the environment variable ``RWKV_JIT_ON`` at import (set to "0" here).

Two cases, one per branch of the run code's binary-embedding rule
(``if self.args.vocab_size == 77:`` -- the script checks that this line is in the file, so a
changed rule fails loudly instead of silently writing a fixture of the other branch):

* ``spikegpt_oracle_v77.pt``: vocabulary 77 (the enwik8 character model): binary embedding;
* ``spikegpt_oracle_v100.pt``: vocabulary 100 (any other size, like the 216M model's 50277,
  which is too big for a fixture): the real-valued embedding.

Both have 8 blocks, so the run code's ``RWKV_RESCALE_LAYER = 6`` (blocks 6 and 7 see halved LIF
inputs, the residual stream is halved after block 5) is exercised too; the width is 16 to keep
each file near 130 kB.

Each file is a ``torch.save`` of a plain dict (loadable with ``weights_only=True``)::

    state_dict  {release key: fp32 tensor}     (time_mix_* [1, 1, C], time_decay/first [C])
    tokens      int64 [T]
    logits      fp32 [T, V]: the run code's output after feeding tokens[: t + 1]
    meta        {"vocab_size", "n_layer", "n_embd", "seed", "model_run_sha256", "spikegpt_commit",
                 "binary_embedding_rule", "rescale_layer", "lif_firing_rate", "torch"}

``lif_firing_rate`` (mean spike rate of the run code's LIF nodes over the sequence, from forward
hooks on its ``mem1`` / ``mem2`` lists) shows that the random weights put the neurons in their
working range: neither silent nor saturated.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import math
import os
import subprocess
import sys
import tempfile
import types
from pathlib import Path

import torch

RULE_LINE = "if self.args.vocab_size == 77:"
RESCALE_LINE = "RWKV_RESCALE_LAYER = 6"
CASES = [  # (file stem, vocab size, layers, width, tokens, seed)
    ("spikegpt_oracle_v77", 77, 8, 16, 32, 77),
    ("spikegpt_oracle_v100", 100, 8, 16, 32, 100),
]


def random_release_state_dict(V: int, L: int, C: int, seed: int) -> dict[str, torch.Tensor]:
    """Random fp32 weights in the release layout. Output projections get a gain of 8 so that the
    LIF inputs reach the threshold of 1 (with 1/sqrt(fan_in) weights they would rarely fire)."""
    g = torch.Generator().manual_seed(seed)

    def mat(rows: int, cols: int, gain: float = 1.0) -> torch.Tensor:
        return torch.randn(rows, cols, generator=g) * gain / math.sqrt(cols)

    def ln(name: str) -> dict[str, torch.Tensor]:
        return {f"{name}.weight": 1 + 0.1 * torch.randn(C, generator=g), f"{name}.bias": 0.1 * torch.randn(C, generator=g)}

    sd = {"emb.weight": torch.randn(V, C, generator=g)}
    for i in range(L):
        b = f"blocks.{i}."
        if i == 0:
            sd.update(ln(b + "ln0"))
        sd.update(ln(b + "ln1"))
        sd.update(ln(b + "ln2"))
        sd[b + "att.time_decay"] = torch.rand(C, generator=g) * 4 - 3  # w = -exp(.) in [-e, -e^-3]
        sd[b + "att.time_first"] = 0.5 * torch.randn(C, generator=g)
        for m in ("k", "v", "r"):
            sd[b + f"att.time_mix_{m}"] = torch.rand(1, 1, C, generator=g)
        sd[b + "att.key.weight"] = mat(C, C)
        sd[b + "att.value.weight"] = mat(C, C)
        sd[b + "att.receptance.weight"] = mat(C, C)
        sd[b + "att.output.weight"] = mat(C, C, gain=8.0)
        for m in ("k", "r"):
            sd[b + f"ffn.time_mix_{m}"] = torch.rand(1, 1, C, generator=g)
        sd[b + "ffn.key.weight"] = mat(4 * C, C)
        sd[b + "ffn.receptance.weight"] = mat(C, C)
        sd[b + "ffn.value.weight"] = mat(C, 4 * C, gain=8.0)
    sd.update(ln("ln_out"))
    sd["head.weight"] = mat(V, C)
    return sd


def run_official(model_run: types.ModuleType, sd: dict[str, torch.Tensor], V: int, L: int, C: int,
                 tokens: list[int]) -> tuple[torch.Tensor, float]:
    """Feed ``tokens`` one at a time through the run code's RWKV_RNN; return logits [T, V] and the
    mean LIF firing rate (tokens 2..T: the LIF nodes are created inside the first call)."""
    with tempfile.TemporaryDirectory() as tmp:
        name = os.path.join(tmp, "model")
        torch.save(sd, name + ".pth")  # the run code appends ".pth" to MODEL_NAME
        args = types.SimpleNamespace(MODEL_NAME=name, FLOAT_MODE="fp32", RUN_DEVICE="cpu",
                                     n_layer=L, n_embd=C, ctx_len=1024, vocab_size=V)
        with contextlib.redirect_stdout(io.StringIO()):  # it prints every tensor's name
            model = model_run.RWKV_RNN(args)
    out_rows, state, mem1, mem2 = [], None, None, None
    fired, seen = [0.0], [0]

    def count(_module, _inp, spikes):
        fired[0] += float(spikes.sum())
        seen[0] += spikes.numel()

    for t in range(len(tokens)):
        out, state, mem1, mem2 = model.forward(tokens[: t + 1], state, mem1, mem2)
        out_rows.append(out.detach().clone())
        if t == 0:
            for node in list(mem1) + list(mem2):
                node.register_forward_hook(count)
    return torch.stack(out_rows), fired[0] / max(1, seen[0])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("spikegpt", help="path of a SpikeGPT checkout (work tree of ridgerchu/SpikeGPT)")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "data"), help="output folder")
    a = ap.parse_args(argv)

    root = Path(a.spikegpt).resolve()
    source = (root / "src" / "model_run.py").read_text(encoding="utf-8")
    for line in (RULE_LINE, RESCALE_LINE):
        if line not in source:
            raise SystemExit(f"{root}/src/model_run.py no longer contains {line!r}: re-read the rule before writing fixtures")
    sha = hashlib.sha256(source.encode("utf-8")).hexdigest()
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"

    torch.set_num_threads(1)
    os.environ.setdefault("RWKV_JIT_ON", "0")  # read (printed) by model_run.py at import
    os.environ.setdefault("RWKV_RUN_DEVICE", "cpu")
    sys.path.insert(0, str(root))
    with contextlib.redirect_stdout(io.StringIO()):
        from src import model_run  # their package is named "src"

    out_dir = Path(a.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    for stem, V, L, C, T, seed in CASES:
        sd = random_release_state_dict(V, L, C, seed)
        tokens = torch.randint(0, V, (T,), generator=torch.Generator().manual_seed(seed + 1))
        logits, rate = run_official(model_run, sd, V, L, C, tokens.tolist())
        meta = {
            "vocab_size": V, "n_layer": L, "n_embd": C, "seed": seed,
            "model_run_sha256": sha, "spikegpt_commit": commit,
            "binary_embedding_rule": RULE_LINE, "binary_embedding": V == 77,
            "rescale_layer": 6, "lif_firing_rate": round(rate, 4), "torch": str(torch.__version__),
        }
        path = out_dir / f"{stem}.pt"
        torch.save({"state_dict": sd, "tokens": tokens, "logits": logits.float(), "meta": meta}, path)
        print(f"wrote {path} ({path.stat().st_size / 1e3:.0f} kB): V={V} L={L} C={C} T={T}, "
              f"binary embedding {V == 77}, LIF firing rate {rate:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
