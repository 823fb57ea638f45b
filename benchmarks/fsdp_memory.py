"""Memory per process of a training run under DDP and under FSDP2 (``distributed: fsdp``), the
same model, data and settings, two processes each, in one run of this script.

Each side is a real ``torchrun --nproc-per-node N -m spikelm train`` launch; the numbers are what
the trainer records in summary.json (``memory_bytes_per_process``, the largest over the
processes): the bytes each process holds of the parameters, their gradients and the AdamW state
(its shards under FSDP), and the peak growth of its memory over the run (on the CPU the resident
set's high-water mark above its level before the model was built: it adds DDP's gradient buckets,
FSDP's gathered block, activations, and a few hundred MB that do not depend on the model (code
loaded on first use, allocator slack), so the ratio of peaks approaches that of the state as the
model grows; on CUDA ``max_memory_allocated``).

    python benchmarks/fsdp_memory.py [--sizes 6x1024,12x1024 --nproc 2 --device cpu]

On the CPU the processes talk over gloo, each with one thread. Prints the ratio FSDP2 / DDP.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import yaml

from spikelm.runargs import TrainArgs

PARTS = (("params", "parameters"), ("grads", "gradients"), ("optimizer", "optimizer state"))


def launch(mode: str, layers: int, embd: int, args: argparse.Namespace, tmp: Path) -> dict:
    cfg = TrainArgs(model={"kind": "rwkv6", "n_layer": layers, "n_embd": embd, "head_size": 64},
                    data=args.data, tokenizer="bytes", ctx_len=args.ctx, batch_size=args.batch, max_steps=args.steps,
                    warmup_steps=1, eval_every=0, eval_batches=1, save_every=0, log_every=1, device=args.device,
                    precision=args.precision, distributed=mode, out_dir=str(tmp / mode))
    path = tmp / f"{mode}.yaml"
    path.write_text(yaml.safe_dump(cfg.to_dict()))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(args.nproc),
           "-m", "spikelm", "train", str(path), "--no-progress"]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"the {mode} launch failed (exit code {proc.returncode})")
    summary = json.loads((tmp / mode / "summary.json").read_text())
    return summary


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="6x1024,12x1024", help="comma-separated model shapes LAYERSxWIDTH (RWKV-6)")
    ap.add_argument("--ctx", type=int, default=64)
    ap.add_argument("--batch", type=int, default=4, help="global batch (sequences)")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="OMP threads per process")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--data", default="default")
    args = ap.parse_args()
    print(f"RWKV-6, {args.nproc} processes on {args.device} ({'gloo' if args.device == 'cpu' else 'nccl'}, "
          f"{args.threads} thread(s) each), torch {torch.__version__}, {args.precision}, AdamW, "
          f"global batch {args.batch} x ctx {args.ctx}, {args.steps} steps; memory per process (the largest over "
          "the processes), MiB", flush=True)
    for size in args.sizes.split(","):
        layers, embd = (int(v) for v in size.lower().split("x"))
        with tempfile.TemporaryDirectory(prefix="spikelm-fsdp-memory-") as d:
            out = {mode: launch(mode, layers, embd, args, Path(d)) for mode in ("ddp", "fsdp")}
        mem = {mode: s["memory_bytes_per_process"] for mode, s in out.items()}
        print(f"\n{layers} x {embd} ({out['ddp']['parameters'] / 1e6:.1f}M parameters)")
        print(f"{'':32s} {'DDP':>10s} {'FSDP2':>10s} {'FSDP2/DDP':>10s}")
        rows = [(label, mem["ddp"][k], mem["fsdp"][k]) for k, label in PARTS]
        rows.append(("held (the three above)", sum(r[1] for r in rows), sum(r[2] for r in rows)))
        if mem["ddp"]["peak"] is not None and mem["fsdp"]["peak"] is not None:
            rows.append(("peak growth over the run", mem["ddp"]["peak"], mem["fsdp"]["peak"]))
        for label, a, b in rows:
            print(f"{label:32s} {a / 2**20:10.1f} {b / 2**20:10.1f} {b / a:10.2f}")
        print(f"validation loss after {args.steps} steps: DDP {out['ddp']['val_loss']:.6f}, "
              f"FSDP2 {out['fsdp']['val_loss']:.6f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
