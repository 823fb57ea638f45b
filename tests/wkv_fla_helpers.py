"""Shared by tests/ops/test_wkv_fla.py (Triton's interpreter on CPU) and tests/gpu/test_cuda.py
(compiled kernels on CUDA): spikelm's WKV6 and WKV7 through flash-linear-attention against the
float64 loops (outputs, final states with an initial state given, gradients).

Run as a script (with ``TRITON_INTERPRET=1``) it runs the interpretable cases (fla's recurrent
kernels, forward only: its chunked ones use constructs Triton's interpreter lacks) on CPU and
prints one JSON line; the chunked kernels and their gradients are checked on a GPU.
"""

from __future__ import annotations

import json

import torch
import torch.nn.functional as F

from spikelm.ops.wkv6 import wkv6, wkv6_naive
from spikelm.ops.wkv7 import wkv7, wkv7_naive


def _inputs(op: str, B: int, T: int, H: int, N: int, seed: int, with_state: bool, device: str, dtype: torch.dtype):
    """Inputs as the models make them: RWKV-6 log-decays -exp(d) spread from -e^-6 to -e^1, RWKV-7
    ones in [-0.607, 0] with a = -kk, b = kk * alpha (kk unit-norm per head)."""
    g = torch.Generator().manual_seed(seed)
    r, k, v = (torch.randn(B, T, H, N, generator=g) for _ in range(3))
    state = torch.randn(B, H, N, N, generator=g) * 0.5 if with_state else None
    if op == "wkv6":
        logw = -torch.exp(torch.rand(B, T, H, N, generator=g) * 7 - 6)
        extra = [torch.randn(H, N, generator=g) * 0.5]
    else:
        logw = -0.6065 * torch.rand(B, T, H, N, generator=g)
        kk = F.normalize(torch.randn(B, T, H, N, generator=g), dim=-1)
        extra = [-kk, kk * torch.rand(B, T, H, N, generator=g)]
    ins = [r, k, v, logw, *extra]
    ins = [t.to(device, dtype if i < 3 else torch.float32) for i, t in enumerate(ins)]
    return ins, (state.to(device) if state is not None else None)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    if not torch.isfinite(a).all():
        return float("inf")
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-30))


def compare(op="wkv6", impl="fla_recurrent", B=2, T=24, H=2, N=16, seed=0, with_state=True, dtype="float32",
            device="cpu") -> dict:
    """``impl`` against the float64 loop on the same inputs: output, final state and the gradients
    of a random loss of both (every input, the initial state included), as relative errors (max
    |diff| / max |ref|); with the reference fp32 chunked form's errors beside them, and the dtypes."""
    dt = getattr(torch, dtype)
    ins, state = _inputs(op, B, T, H, N, seed, with_state, device, dt)
    fn, naive = (wkv6, wkv6_naive) if op == "wkv6" else (wkv7, wkv7_naive)
    ref_impl = "chunked_fp32" if op == "wkv6" else "chunked"
    g = torch.Generator().manual_seed(seed + 1)
    wy, ws = torch.randn(B, T, H, N, generator=g), torch.randn(B, H, N, N, generator=g)

    def run(impl, tensors, s, grad):
        leaves = [t.detach().clone().requires_grad_(grad) for t in tensors]
        s_leaf = s.detach().clone().requires_grad_(grad) if s is not None else None
        y, s_out = (naive(*leaves, s_leaf) if impl == "naive" else fn(*leaves, s_leaf, impl=impl))
        if not grad:
            return y, s_out, None
        loss = (y.double() * wy.to(y.device).double()).sum() + (s_out.double() * ws.to(y.device).double()).sum()
        loss.backward()
        return y, s_out, [t.grad for t in leaves] + ([s_leaf.grad] if s_leaf is not None else [])

    y0, s0, g0 = run("naive", [t.double().cpu() for t in ins], state.double().cpu() if state is not None else None, True)
    out = {}
    for name in (impl, ref_impl):
        grad = name != "fla_recurrent"  # fla's recurrent kernels are forward-only (wkv_fla._forward_only)
        y, s, gr = run(name, ins, state, grad)
        out[name] = {"y": _rel(y, y0), "state": _rel(s, s0),
                     "grads": max(_rel(a, b) for a, b in zip(gr, g0)) if grad else None,
                     "dtypes": [str(y.dtype), str(s.dtype)]}
    return out


CASES = {
    "wkv6-state": dict(op="wkv6"),
    "wkv6-fresh": dict(op="wkv6", with_state=False, seed=1),
    "wkv7-state": dict(op="wkv7", seed=2),
    "wkv7-fresh": dict(op="wkv7", with_state=False, seed=3),
}
# fp32 kernels against float64: the recurrent kernel does the loop's arithmetic in fp32
TOL = {"y": 1e-5, "state": 1e-5, "grads": 1e-4}


def run_case(spec: dict, device: str = "cpu", impl: str = "fla_recurrent", dtype: str = "float32") -> dict:
    return compare(**spec, impl=impl, device=device, dtype=dtype)


if __name__ == "__main__":  # the interpreted run: tests/ops/test_wkv_fla.py sets TRITON_INTERPRET=1
    import triton.runtime.autotuner as autotuner

    # The interpreter has no GPU to time fla's autotuning candidates on: take the first of each.
    autotuner.Autotuner._bench = lambda self, *a, config=None, **k: [0.0, 0.0, 0.0]
    torch.set_num_threads(1)
    print(json.dumps({case: run_case(spec) for case, spec in CASES.items()}))
