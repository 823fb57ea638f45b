"""Real-size checkpoints: wall time, tokens/s and peak RSS of every command, in fp32 and bf16.

Writes a random RWKV-6 checkpoint with the World 1B6 release's shapes (24 layers, C = 2048,
vocab 65536, official ``.pth`` in bf16, about 3.2 GB) into a temporary folder (deleted at the end,
never committed), then runs each command as its own process (``python -m spikelm ...``) and reads
that child's peak resident memory from the operating system (``os.wait4``'s rusage, ``ru_maxrss``:
the child alone, not the largest of all children). The last column is the peak RSS divided by the
bytes of the weights in the dtype the command ran in; the target is <= 1.5 for every command.

    python benchmarks/scale.py                          # the 1B6 shape (needs ~10 GB free RAM, minutes)
    python benchmarks/scale.py --layers 4 --width 512   # a smoke run

The children run with ``--threads`` torch threads (OMP_NUM_THREADS / MKL_NUM_THREADS, and the
figure printed is the one each child reports through ``info``'s machine line).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from spikelm.config import RWKV6Config
from spikelm.markdown import md_table
from spikelm.models.rwkv6 import RWKV6

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def random_tensor(name: str, shape: tuple[int, ...], g: torch.Generator) -> torch.Tensor:
    """A plausible random value for each official RWKV-6 tensor (finite, well-scaled activations)."""
    if name.endswith(("ln0.weight", "ln1.weight", "ln2.weight", "ln_out.weight", "ln_x.weight")):
        return torch.ones(shape)
    if name.endswith(".bias"):
        return torch.zeros(shape)
    if name.endswith("time_decay"):
        return torch.rand(shape, generator=g) * 5.5 - 6.0  # log-log decays in [-6, -0.5]
    if name.endswith("time_faaaa"):
        return torch.rand(shape, generator=g) * 0.5
    if ".time_maa_" in name and not name.endswith(("_w1", "_w2")):
        return torch.rand(shape, generator=g)
    if name.endswith(("_w1", "_w2")):
        return torch.randn(shape, generator=g) * 0.01
    if name == "emb.weight":
        return torch.randn(shape, generator=g)
    fan_in = shape[-1]
    return torch.randn(shape, generator=g) / math.sqrt(fan_in)  # linear layers: unit-variance outputs


def write_checkpoint(path: Path, layers: int, width: int, vocab: int) -> tuple[int, RWKV6Config]:
    """Write the random official-layout ``.pth`` in bf16, one tensor at a time (no fp32 model)."""
    cfg = RWKV6Config(vocab_size=vocab, n_layer=layers, n_embd=width, head_size=64, dim_ffn=int(width * 3.5) // 32 * 32,
                      tokenizer="world")
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in RWKV6(cfg).state_dict().items()}
    g = torch.Generator().manual_seed(0)
    sd = {k: random_tensor(k, s, g).to(torch.bfloat16) for k, s in shapes.items()}
    n = sum(v.numel() for v in sd.values())
    torch.save(sd, path)
    return n, cfg


# A child on CUDA runs the ``spikelm`` program through this, which writes the process's peak of
# allocated device memory (``torch.cuda.max_memory_allocated``) to $SPIKELM_SCALE_PEAK at exit.
CUDA_PEAK = ("import atexit, os, sys, torch\n"
             "def _peak():\n"
             "    if torch.cuda.is_initialized():\n"
             "        open(os.environ['SPIKELM_SCALE_PEAK'], 'w').write(str(torch.cuda.max_memory_allocated()))\n"
             "atexit.register(_peak)\n"
             "sys.argv[0] = 'spikelm'\n"
             "from spikelm.cli import entry\n"
             "sys.exit(entry())\n")


def run_measured(cmd: list[str], env: dict[str, str]) -> tuple[float, int, str, int]:
    """Reaps the child with ``os.wait4`` to get its own ``ru_maxrss`` (KiB on Linux)."""
    with tempfile.TemporaryFile("w+") as fo, tempfile.TemporaryFile("w+") as fe:
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, stdout=fo, stderr=fe, env=env, text=True)
        _, status, ru = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t0
        p.returncode = os.waitstatus_to_exitcode(status)
        fo.seek(0)
        fe.seek(0)
        out = fo.read()
        if p.returncode != 0:
            out = (out + fe.read())[-2000:]
    return wall, ru.ru_maxrss * 1024, out, p.returncode


def json_of(out: str) -> dict:
    """A command's ``--json`` output as a dict ({} where it printed something else)."""
    try:
        obj = json.loads(out)
    except ValueError:
        return {}
    return obj if isinstance(obj, dict) else {}


def tokens_of(name: str, obj: dict, args: argparse.Namespace) -> int | None:
    """Tokens the command processed, from its ``--json`` output where it says, else from its arguments."""
    if obj:
        for key in ("tokens", "n_tokens", "total_tokens"):
            if isinstance(obj.get(key), int):
                return obj[key]
    if name == "generate":
        return args.gen_tokens
    if name == "energy":
        return args.energy_tokens
    if name.startswith("convert"):
        return args.calib_batches * 4 * args.calib_ctx
    return None


def own_speed(obj: dict) -> float | None:
    """The command's own tokens/s (scoring alone, loading excluded) where its ``--json`` reports one."""
    v = obj.get("tokens_per_second")
    return float(v) if isinstance(v, (int, float)) else None


def commands(ckpt: Path, work: Path, dtype: str, args: argparse.Namespace) -> list[tuple[str, list[str]]]:
    common = ["--dtype", dtype, "--device", args.device]
    calib = ["--calib-batches", str(args.calib_batches), "--calib-ctx", str(args.calib_ctx)]
    return [
        ("info", ["info", str(ckpt)]),
        ("convert rate (SNN-RWKV-4)", ["convert", str(ckpt), "--preset", "SNN-RWKV-4", "--out", str(work / f"rate-{dtype}"),
                                       *calib, *common, "--json"]),
        ("convert mhse (spikelm-4L)", ["convert", str(ckpt), "--preset", "spikelm-4L", "--out", str(work / f"mhse-{dtype}"),
                                       *calib, *common, "--json"]),
        ("eval", ["eval", str(ckpt), "--max-chars", str(args.eval_chars), *common, "--json"]),
        ("energy", ["energy", str(ckpt), "--tokens", str(args.energy_tokens), *common, "--json"]),
        ("nlu", ["nlu", str(ckpt), "--tasks", args.nlu_tasks, "--limit", str(args.nlu_limit), *common, "--json"]),
        ("generate", ["generate", str(ckpt), "--max-tokens", str(args.gen_tokens), "--prompt", "The", *common, "--json"]),
        ("sweep", ["sweep", str(ckpt), "--presets", "SpikeRWKV-4L", "--max-chars", str(args.sweep_chars),
                   *common, "--json"]),
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=24)
    ap.add_argument("--width", type=int, default=2048)
    ap.add_argument("--vocab", type=int, default=65536)
    ap.add_argument("--dtypes", default="fp32,bf16")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", help="where the commands run: cpu, cuda, cuda:N (on CUDA the table adds "
                    "each child's peak allocated device memory)")
    ap.add_argument("--only", default="", help="comma-separated command names to run (default: all)")
    ap.add_argument("--calib-batches", type=int, default=2)
    ap.add_argument("--calib-ctx", type=int, default=64)
    ap.add_argument("--eval-chars", type=int, default=3000)
    ap.add_argument("--energy-tokens", type=int, default=256)
    ap.add_argument("--nlu-tasks", default="copa")
    ap.add_argument("--nlu-limit", type=int, default=8)
    ap.add_argument("--gen-tokens", type=int, default=8)
    ap.add_argument("--sweep-chars", type=int, default=1000)
    ap.add_argument("--keep", default="", help="write the checkpoint here and keep it (default: a temporary folder)")
    ap.add_argument("--checkpoint", default="", help="reuse a checkpoint an earlier run wrote with --keep (same shape flags)")
    args = ap.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        ap.error(f"--device {args.device}: this torch sees no CUDA GPU (torch {torch.__version__})")

    torch.set_num_threads(args.threads)
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="spikelm-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        t0 = time.perf_counter()
        if args.checkpoint:
            ckpt = Path(args.checkpoint)
            sd = torch.load(ckpt, map_location="meta", weights_only=True)
            n_params = sum(v.numel() for v in sd.values())
            if tuple(sd["emb.weight"].shape) != (args.vocab, args.width) or f"blocks.{args.layers - 1}.ln1.weight" not in sd:
                raise SystemExit(f"{ckpt} does not have the shape --layers {args.layers} --width {args.width} --vocab {args.vocab}")
            how = "reused"
        else:
            ckpt = work / f"rwkv6-random-{args.layers}x{args.width}.pth"
            n_params, _ = write_checkpoint(ckpt, args.layers, args.width, args.vocab)
            how = f"written in {time.perf_counter() - t0:.0f} s"
        print(f"checkpoint: {args.layers} layers x C={args.width}, vocab {args.vocab}, {n_params / 1e9:.3f} B parameters, "
              f"bf16 .pth {ckpt.stat().st_size / 1e9:.2f} GB, {how}")
        on_cuda = args.device.startswith("cuda")
        gpu = f" ({torch.cuda.get_device_name(args.device)})" if on_cuda else ""
        print(f"children: torch threads {args.threads} (OMP_NUM_THREADS), device {args.device}{gpu}, python {sys.version.split()[0]}, "
              f"torch {torch.__version__}")
        _, base, _, _ = run_measured([sys.executable, "-c", "import torch, spikelm.cli"], env)
        print(f"baseline: a process that imports torch and spikelm peaks at {base / 2**30:.2f} GiB")
        only = {s.strip() for s in args.only.split(",") if s.strip()}
        rows = []
        for dname in args.dtypes.split(","):
            weight_bytes = n_params * torch.tensor([], dtype=DTYPES[dname]).element_size()
            for name, argv in commands(ckpt, work, dname, args):
                if only and name.split()[0] not in only:
                    continue
                peak_file = work / "cuda-peak"
                peak_file.unlink(missing_ok=True)
                cmd = [sys.executable, "-c", CUDA_PEAK, *argv] if on_cuda else [sys.executable, "-m", "spikelm", *argv]
                wall, rss, out, rc = run_measured(cmd, dict(env, SPIKELM_SCALE_PEAK=str(peak_file)))
                obj = json_of(out)
                toks = tokens_of(name, obj, args)
                own = own_speed(obj) if rc == 0 else None
                rows.append([name, dname, f"{wall:.1f}", f"{toks / wall:.0f}" if toks and rc == 0 else "",
                             f"{own:.0f}" if own else "",
                             f"{rss / 2**30:.2f}", f"{weight_bytes / 2**30:.2f}", f"{rss / weight_bytes:.2f}", f"{(rss - base) / weight_bytes:.2f}"])
                if on_cuda:
                    peak = int(peak_file.read_text()) if peak_file.exists() else None
                    rows[-1] += [f"{peak / 2**30:.2f}" if peak else "", f"{peak / weight_bytes:.2f}" if peak else ""]
                rows[-1].append("ok" if rc == 0 else f"exit {rc}")
                if rc != 0:
                    print(f"[{name} {dname}] failed: {' '.join(argv)}\n{out}", file=sys.stderr)
                print(" | ".join(rows[-1]), file=sys.stderr, flush=True)
        print()
        head = ["command", "dtype", "wall s", "tokens/s", "own tokens/s", "peak RSS GiB", "weights GiB", "RSS / weights",
                "(RSS - baseline) / weights"] + (["peak GPU GiB", "GPU / weights"] if on_cuda else []) + ["status"]
        print(md_table(head, rows, align="ll" + "r" * (len(head) - 3) + "l"))
        print("\npeak RSS: the child process's own ru_maxrss (os.wait4); tokens/s over the whole process "
              "(start-up and loading included), own tokens/s the command's own figure where its --json gives one "
              "(scoring alone); target RSS / weights <= 1.5. The baseline (torch + spikelm "
              "imported, its peak printed above) dominates small shapes: read the last ratio there."
              + (" Peak GPU: torch.cuda.max_memory_allocated of the child, written at its exit." if on_cuda else ""))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
