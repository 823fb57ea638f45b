"""Kernel launches of one SpikeGPT LIF neuron per micro-step: the PyTorch loop vs the Triton scan.

Run: ``python benchmarks/neuron_scan_ops.py`` (needs triton; without a GPU it sets
``TRITON_INTERPRET=1`` so the kernels run on CPU through Triton's interpreter). Counts, not times:
every aten op dispatched by one LIF forward + backward (``multi_step`` along the token axis of a
(B, T, C) input, as SpikeGPT drives it) is a kernel launch on a GPU; the Triton path adds its own
kernel launches, counted separately (the aten ops the interpreter itself runs inside a launch are
not counted: on a GPU a launch is one kernel). Also checks that both paths give the same spikes,
membranes and gradients here. Launch counts do not depend on B or C.
"""

from __future__ import annotations

import os

if not os.environ.get("TRITON_INTERPRET") and not __import__("torch").cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"  # before the kernels are defined (on first use)

import torch  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

from spikelm.ops import neuron_scan  # noqa: E402
from spikelm.spiking.neurons import LIFNeuron  # noqa: E402


class Count(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops = self.launches = 0
        self.paused = False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += not self.paused
        return func(*args, **(kwargs or {}))


MODE: Count | None = None
_real_kernels = neuron_scan._kernels


class _Counted:
    def __init__(self, kernel) -> None:
        self.kernel = kernel

    def __getitem__(self, grid):
        launch = self.kernel[grid]

        def run(*args, **kwargs):
            if MODE is None:
                return launch(*args, **kwargs)
            MODE.launches += 1
            MODE.paused = True
            try:
                return launch(*args, **kwargs)
            finally:
                MODE.paused = False

        return run


neuron_scan._kernels = lambda: tuple(_Counted(k) for k in _real_kernels())


def lif_fwd_bwd(T: int, backend: str, B: int = 2, C: int = 8) -> tuple[Count, tuple]:
    global MODE
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(B, T, C, generator=g) * 1.5 + 0.6).requires_grad_()
    w = torch.randn(B, T, C, generator=g)
    lif = LIFNeuron(beta=0.5, time_dim=1)  # SpikeGPT's: tau = 2, threshold 1, hard reset to 0
    lif.scan_backend = backend
    MODE = Count()
    with MODE:
        s, v = lif(x)
        ((s * w).sum() + v.sum()).backward()
    mode, MODE = MODE, None
    return mode, (s.detach(), v.detach(), x.grad)


def main() -> None:
    torch.set_num_threads(1)
    where = "CUDA" if torch.cuda.is_available() else "CPU, Triton interpreter"
    print(f"torch {torch.__version__}, threads used: 1, dtype float32, {where}")
    print("one LIF neuron (SpikeGPT's), forward + backward along T, (B, T, C) = (2, T, 8):")
    for backend in ("torch", "triton"):
        counts = {T: lif_fwd_bwd(T, backend)[0] for T in (16, 48, 1024)}
        per_token = (counts[48].ops - counts[16].ops) / 32
        c = counts[1024]
        print(f"  {backend:6s}  T=1024: {c.ops:5d} aten ops + {c.launches} Triton launches = {c.ops + c.launches:5d} kernels; "
              f"{per_token:.1f} aten ops per token; x24 LIFs (12 layers) = {24 * (c.ops + c.launches):,} kernels per micro-step")
    (_, a), (_, b) = lif_fwd_bwd(1024, "torch"), lif_fwd_bwd(1024, "triton")
    same = torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    gerr = float((a[2] - b[2]).abs().max() / a[2].abs().max())
    print(f"  T=1024: spikes and final membrane equal: {same}; spike rate {float(a[0].mean()):.3f}; "
          f"gradient max relative difference {gerr:.2g}")


if __name__ == "__main__":
    main()
