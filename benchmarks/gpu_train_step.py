"""Training step speed on a GPU, every model in one run, their steps alternating: spikelm's RWKV-6,
RWKV-7 and SpikeGPT (the Triton LIF scan and WKV4 kernels, and the PyTorch LIF loop), against
flash-linear-attention's own RWKV-6 model and the public SpikeGPT training code.

Each spikelm model runs the trainer's step (``spikelm.train``): forward under autocast
(``--dtype``), the blockwise fp32 cross-entropy (``spikelm.ops.cross_entropy``), backward,
gradient clipping and fused AdamW, on random byte-level tokens. The outside models run the same
step around their own forward and loss:

* ``fla-rwkv6``: ``fla.models.RWKV6ForCausalLM`` (``pip install flash-linear-attention``) with
  the official RWKV-6 shape (key and value width C, FFN 3.5 C, LoRA 32 / 64), its fused
  cross-entropy, autocast like spikelm's;
* ``spikegpt-public``: the public SpikeGPT code (github.com/ridgerchu/SpikeGPT: ``src/model.py``,
  its CUDA WKV kernel and its spikingjelly LIF on cupy), from a checkout named by
  ``--spikegpt-repo`` (never part of spikelm). Its LIF kernels take fp32 and fp16 only, so it runs
  in the first of bf16 autocast, fp16 autocast, fp32 (TF32 matmuls, its trainer's setting) that
  works; spikelm's SpikeGPT is timed in that precision too (``spikegpt:same``) for the ratio.

Timed with CUDA events after ``--warmup`` steps of each, the median of ``--steps`` rounds in which
every model takes one step. Printed: tokens/s, ms per step, peak memory, and model FLOPs
utilisation, 6 x parameters x tokens/s over the GPU's dense bf16 peak (``--peak-tflops``, or a
table of known GPUs); then the ratios the issue asks for.

    python benchmarks/gpu_train_step.py [--layers 12 --embd 768 --ctx 1024 --batch 8] [--spikegpt-repo PATH]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

from _gpu import pick_device, version

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}
# Dense bf16 tensor-core peaks, TFLOP/s (vendor datasheets; sparsity not counted).
PEAKS = {"H200": 989.0, "H100 80GB HBM3": 989.0, "H100 SXM": 989.0, "H100 NVL": 835.0, "H100 PCIe": 756.0,
         "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 125.0, "RTX 4090": 165.0}
DEFAULT_MODELS = "rwkv6,rwkv7,spikegpt:auto,spikegpt:torch,fla-rwkv6,spikegpt-public"



def peak_tflops(args: argparse.Namespace, device: torch.device) -> float | None:
    if args.peak_tflops:
        return args.peak_tflops
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, value in PEAKS.items():
        if key in name:
            return value
    return None


class Contender:
    """One model and its training step (forward, loss, backward, clip, optimizer step)."""

    precision = ""  # the precision it runs in, where it chose one itself
    tf32: bool | None = None  # TF32 matmuls for its steps (None: as set)

    def __init__(self, name: str, model: torch.nn.Module, loss_fn: Callable[[torch.Tensor], torch.Tensor],
                 amp: torch.dtype | None, device: torch.device, after: Callable[[], None] | None = None,
                 note: str = "") -> None:
        self.name, self.model, self.loss_fn, self.amp, self.device, self.after, self.note = \
            name, model, loss_fn, amp, device, after, note
        fused = device.type == "cuda"
        self.opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, fused=fused)
        self.params = sum(p.numel() for p in model.parameters())
        self.times: list[float] = []
        self.peak = 0

    def step(self, x: torch.Tensor) -> None:
        with torch.autocast(self.device.type, dtype=self.amp or torch.float32, enabled=self.amp is not None):
            loss = self.loss_fn(x)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        if self.after is not None:
            self.after()


def spikelm_model(kind: str, args: argparse.Namespace, device: torch.device) -> torch.nn.Module:
    from spikelm.checkpoints import build_model

    cfg: dict[str, Any] = {"kind": kind, "vocab_size": 257, "n_layer": args.layers, "n_embd": args.embd, "tokenizer": "bytes"}
    if kind in ("rwkv6", "rwkv7"):
        cfg["head_size"] = 64
    else:
        cfg["ctx_len"] = args.ctx
    return build_model(cfg).init_weights(0).to(device)


def spikelm_loss(model: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    from spikelm.ops.cross_entropy import cross_entropy_fp32

    def loss(x: torch.Tensor) -> torch.Tensor:
        logits, _ = model(x[:, :-1])
        return cross_entropy_fp32(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1))

    return loss


def fla_rwkv6(args: argparse.Namespace, device: torch.device, amp: torch.dtype | None) -> Contender:
    from fla.models import RWKV6Config, RWKV6ForCausalLM

    cfg = RWKV6Config(hidden_size=args.embd, num_hidden_layers=args.layers, num_heads=args.embd // 64, expand_k=1.0,
                      expand_v=1.0, hidden_ratio=3.5, proj_low_rank_dim=32, gate_low_rank_dim=64, vocab_size=257,
                      use_cache=False)
    model = RWKV6ForCausalLM(cfg).to(device)

    def loss(x: torch.Tensor) -> torch.Tensor:
        # its own training path: Hugging Face labels (the inputs; it shifts them) and its fused cross-entropy
        return model(input_ids=x[:, :-1], labels=x[:, :-1], use_cache=False).loss

    return Contender("fla-rwkv6", model, loss, amp, device, note=f"flash-linear-attention {version('flash-linear-attention')}")


@contextlib.contextmanager
def _cwd(path: Path):
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def spikegpt_public(args: argparse.Namespace, device: torch.device, x: torch.Tensor) -> Contender:
    """The public SpikeGPT model from ``--spikegpt-repo``, in the first precision its kernels take."""
    repo = Path(args.spikegpt_repo).resolve()
    if not (repo / "src" / "model.py").is_file():
        raise FileNotFoundError(f"--spikegpt-repo {repo}: no src/model.py (a checkout of github.com/ridgerchu/SpikeGPT)")
    sys.path.insert(0, str(repo))
    for mod in [m for m in sys.modules if m == "src" or m.startswith("src.")]:
        del sys.modules[mod]
    os.environ.setdefault("RWKV_LOAD_MODEL", "True")  # skip its slow "fancy init" (speed is all we measure)
    with _cwd(repo), contextlib.redirect_stdout(sys.stderr):  # it compiles cuda/wkv_op.cpp by a relative path, prints
        from src.model import GPT, GPTConfig  # type: ignore[import-not-found]
        from src.spikingjelly.clock_driven import functional  # type: ignore[import-not-found]
    model = GPT(GPTConfig(257, args.ctx, model_type="RWKV", n_layer=args.layers, n_embd=args.embd)).to(device)

    def loss(x: torch.Tensor) -> torch.Tensor:
        return model(x[:, :-1], x[:, 1:])  # cross-entropy (its L2Wrap adds only a backward term)

    errors = []
    for name in ("bf16", "fp16", "fp32"):
        c = Contender("spikegpt-public", model, loss, DTYPES[name], device, after=lambda: functional.reset_net(model),
                      note=f"{name} ({'autocast' if name != 'fp32' else 'TF32 matmuls, its trainer'})")
        try:
            prev = torch.backends.cuda.matmul.allow_tf32
            torch.backends.cuda.matmul.allow_tf32 = name == "fp32"
            c.step(x)  # does its LIF kernel take this precision?
            torch.cuda.synchronize()
            c.precision = name
            c.tf32 = name == "fp32"
            torch.backends.cuda.matmul.allow_tf32 = prev
            return c
        except Exception as e:  # noqa: BLE001 - try the next precision
            torch.backends.cuda.matmul.allow_tf32 = prev
            functional.reset_net(model)
            model.zero_grad(set_to_none=True)
            errors.append(f"{name}: {type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}")
    raise RuntimeError("no precision ran: " + "; ".join(errors))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--embd", type=int, default=768)
    ap.add_argument("--ctx", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    ap.add_argument("--models", default=DEFAULT_MODELS,
                    help="comma-separated: rwkv6, rwkv7, spikegpt:auto (Triton LIF scan and WKV4 where available), "
                         "spikegpt:torch (the PyTorch LIF loop), fla-rwkv6, spikegpt-public (needs --spikegpt-repo)")
    ap.add_argument("--spikegpt-repo", default=os.environ.get("SPIKEGPT_REPO", ""),
                    help="a checkout of github.com/ridgerchu/SpikeGPT (for spikegpt-public)")
    ap.add_argument("--peak-tflops", type=float, default=0.0, help="the GPU's dense bf16 peak (default: a table)")
    ap.add_argument("--device", default="cuda", help="cuda (the point of this benchmark) or cpu (a smoke run)")
    args = ap.parse_args()
    device, where = pick_device(args.device)
    from spikelm.spiking.neurons import set_scan_backend

    amp = DTYPES[args.dtype]
    peak = peak_tflops(args, device)
    print(f"{where}, torch {torch.__version__}, triton {version('triton')}, fla-core {version('fla-core')}, "
          f"autocast {args.dtype}, TF32 matmuls {torch.backends.cuda.matmul.allow_tf32}, "
          f"bf16 peak {peak if peak else '?'} TFLOP/s")
    print(f"{args.layers} layers x C={args.embd}, byte-level, batch {args.batch} x ctx {args.ctx} "
          f"({args.batch * args.ctx:,} tokens per step), median of {args.steps} rounds after {args.warmup}, "
          "models alternating; MFU = 6 x parameters x tokens/s / peak")
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 257, (args.batch, args.ctx + 1), generator=g).to(device)
    contenders: list[Contender] = []
    for spec in args.models.split(","):
        kind, _, backend = spec.partition(":")
        try:
            if kind in ("rwkv6", "rwkv7", "spikegpt"):
                model = spikelm_model(kind, args, device)
                if backend:
                    set_scan_backend(model, backend)
                contenders.append(Contender(spec, model, spikelm_loss(model), amp, device))
            elif kind == "fla-rwkv6":
                contenders.append(fla_rwkv6(args, device, amp))
            elif kind == "spikegpt-public":
                if not args.spikegpt_repo:
                    print("spikegpt-public: skipped: no --spikegpt-repo (a checkout of github.com/ridgerchu/SpikeGPT)")
                    continue
                theirs = spikegpt_public(args, device, x)
                contenders.append(theirs)
                if theirs.precision != args.dtype:  # spikelm's SpikeGPT in the precision the public code ran in
                    model = spikelm_model("spikegpt", args, device)
                    contenders.append(Contender("spikegpt:same", model, spikelm_loss(model), DTYPES[theirs.precision],
                                                device, note=theirs.note))
            else:
                print(f"{spec}: unknown model (choose from {DEFAULT_MODELS})")
        except Exception as e:  # noqa: BLE001 - a missing package or a failing outside code: say why, go on
            print(f"{spec}: cannot run here: {type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}")
    cuda = device.type == "cuda"

    def timed(c: Contender) -> float:
        prev = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = prev if c.tf32 is None else c.tf32
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
        t0 = time.perf_counter()
        c.step(x)
        if cuda:
            b.record()
            b.synchronize()
            c.peak = max(c.peak, torch.cuda.max_memory_allocated(device))
        torch.backends.cuda.matmul.allow_tf32 = prev
        return a.elapsed_time(b) / 1e3 if cuda else time.perf_counter() - t0

    alive = []
    for c in contenders:  # warm-up: compile and autotune every kernel
        try:
            for _ in range(args.warmup):
                timed(c)
            alive.append(c)
        except Exception as e:  # noqa: BLE001
            print(f"{c.name}: failed in its first steps: {type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}")
    for _ in range(args.steps):
        for c in alive:
            c.times.append(timed(c))
    tokens = args.batch * args.ctx
    speed = {}
    for c in alive:
        s = statistics.median(c.times)
        speed[c.name] = tokens / s
        mfu = f"MFU {100 * 6 * c.params * tokens / s / (peak * 1e12):5.2f}%" if peak else "MFU ?"
        note = f"  [{c.note}]" if c.note else ""
        print(f"{c.name:16s} {c.params / 1e6:7.1f}M params  {1e3 * s:9.1f} ms/step  {tokens / s:12,.0f} tokens/s  "
              f"{mfu}  peak {c.peak / 2**30:6.2f} GiB{note}", flush=True)
    for a, b, what in (("rwkv6", "fla-rwkv6", "spikelm RWKV-6 vs fla's RWKV-6 model"),
                       ("spikegpt:auto", "spikegpt:torch", "SpikeGPT, Triton kernels vs PyTorch loop"),
                       ("spikegpt:auto", "spikegpt-public", "spikelm SpikeGPT vs the public SpikeGPT code"),
                       ("spikegpt:same", "spikegpt-public", "spikelm SpikeGPT vs the public code, same precision")):
        if a in speed and b in speed:
            print(f"{what}: {speed[a] / speed[b]:.2f}x the tokens/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
