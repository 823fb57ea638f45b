"""Shared by tests/ops/test_wkv4_triton.py (Triton's interpreter on CPU) and tests/gpu/test_cuda.py
(compiled kernels on CUDA): the Triton WKV4 kernels against the PyTorch loop ``wkv4_naive``.

Run as a script (with ``TRITON_INTERPRET=1``) it runs every case on CPU and prints one JSON line.
"""

from __future__ import annotations

import json

import torch

from spikelm.ops import wkv4_naive
from spikelm.ops.wkv4 import wkv4


def _inputs(B: int, T: int, C: int, seed: int, k_scale: float, warm: bool, tie: bool):
    """w = -exp(time_decay), time_decay in [-6, 3]; u, k, v; a warm state (the loop's after 9
    tokens) or None; with ``tie`` both maxima of the first token tie on some channels each."""
    g = torch.Generator().manual_seed(seed)
    w = -torch.exp(torch.empty(C).uniform_(-6.0, 3.0, generator=g))
    u = torch.randn(C, generator=g)
    k = k_scale * torch.randn(B, T, C, generator=g)
    v = torch.randn(B, T, C, generator=g)
    state = None
    if warm or tie:
        state = wkv4_naive(w, u, 3.0 * torch.randn(B, 9, C, generator=g), torch.randn(B, 9, C, generator=g))[1]
    if tie:  # exact ties: the loop forms these same fp32 sums
        aa, bb, pp = state
        h = C // 2
        pp = pp.clone()
        pp[:, :h] = u[:h] + k[:, 0, :h]  # max(pp, u + k_0) in the output
        k[:, 0, h:] = w[h:] + pp[:, h:]  # max(w + pp, k_0) in the state update
        state = (aa, bb, pp)
    return w, u, k, v, state


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    if not torch.isfinite(a).all():
        return float("inf")
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-30))


def compare(B=2, T=19, C=37, dtype="float32", seed=0, k_scale=3.0, warm=True, tie=False, device="cpu") -> dict:
    """Kernels vs the autograd loop on the same (rounded) inputs: output, final state, and the
    gradients of a random loss of both (w, u, k, v and the initial state); the largest relative
    error of each, and whether dtypes are kept. In fp32 both sides compute the same expressions,
    so they differ only by the device's exp against torch's."""
    dt = getattr(torch, dtype)
    w, u, k, v, state = _inputs(B, T, C, seed, k_scale, warm, tie)
    k, v = k.to(dt), v.to(dt)  # the kernels read k, v in their dtype; the loop gets the same values
    g = torch.Generator().manual_seed(seed + 1)
    wy, ws = torch.randn(B, T, C, generator=g), [torch.randn(B, C, generator=g) for _ in range(3)]
    ws[2] = ws[2] * 1e-3  # pp is an exponent: a small weight keeps its gradient on the scale of the others
    out = {}
    for name, impl in (("triton", "triton"), ("ref", "naive")):
        dev = device if impl == "triton" else "cpu"
        leaves = [t.detach().to(dev).requires_grad_() for t in (w, u, k, v)]
        s_leaves = [t.detach().to(dev).requires_grad_() for t in state] if state is not None else None
        if impl == "naive":
            leaves[2:] = [t.detach().float().requires_grad_() for t in (k, v)]
        y, s = wkv4(*leaves, s_leaves, impl=impl)
        loss = (y.float() * wy.to(dev)).sum() + sum((a * b.to(dev)).sum() for a, b in zip(s, ws))
        loss.backward()
        grads = [t.grad for t in leaves] + ([t.grad for t in s_leaves] if s_leaves is not None else [])
        out[name] = (y.detach().cpu(), [x.detach().cpu() for x in s], [x.cpu() for x in grads])
        with torch.no_grad():  # the launch without stored states
            out[name + "-nograd"] = wkv4(*(t.detach() for t in leaves),
                                         None if s_leaves is None else [t.detach() for t in s_leaves], impl=impl)
    (y_k, s_k, g_k), (y_r, s_r, g_r) = out["triton"], out["ref"]
    y_n, s_n = out["triton-nograd"]
    names = ["w", "u", "k", "v", "aa0", "bb0", "pp0"]
    return {
        "y": _rel(y_k.float(), y_r.float()),
        "state": max(_rel(a, b) for a, b in zip(s_k, s_r)),
        "nograd_equal": bool(torch.equal(y_n.cpu(), y_k)) and all(torch.equal(a.cpu(), b) for a, b in zip(s_n, s_k)),
        "dtype_kept": y_k.dtype == dt and all(x.dtype == torch.float32 for x in s_k) and g_k[2].dtype == dt,
        "grads": {n: _rel(a.float(), b.float()) for n, a, b in zip(names, g_k, g_r)},
    }


CASES = {
    "fp32-warm": dict(),
    "fp32-fresh": dict(warm=False, seed=1),
    "fp32-tie": dict(tie=True, seed=2),
    "fp32-T1": dict(T=1, seed=3),
    "fp32-long": dict(B=1, T=300, C=20, seed=4),
    "fp32-large-k": dict(k_scale=30.0, seed=5),
    "bf16": dict(dtype="bfloat16", seed=6),
    "fp16": dict(dtype="float16", seed=7),
}

# fp32: the same arithmetic, but another exp (an ulp or two per value, carried along T); bf16/fp16:
# y and the k, v gradients are rounded to the dtype on both sides, rounding ties may fall apart
TOL = {"float32": 2e-5, "bfloat16": 1e-2, "float16": 2e-3}


def run_case(spec: dict, device: str = "cpu") -> dict:
    return compare(**spec, device=device)


def opcheck() -> str:
    """torch.library.opcheck of both custom ops (schema, fake implementations, dispatch)."""
    from spikelm.ops import wkv4_triton as m

    B, T, C = 2, 5, 7
    w, u, k, v, (aa, bb, pp) = _inputs(B, T, C, 0, 3.0, True, False)
    torch.library.opcheck(m._forward_op, (w, u, k, v, aa, bb, pp, True, True))
    st = m._forward_op(w, u, k, v, aa, bb, pp, True, True)[4]
    torch.library.opcheck(m._backward_op, (w, u, k, v, st, torch.randn(B, T, C), aa, bb, pp))
    return "ok"


if __name__ == "__main__":  # the interpreted run: tests/ops/test_wkv4_triton.py sets TRITON_INTERPRET=1
    torch.set_num_threads(1)
    result = {case: run_case(spec) for case, spec in CASES.items()}
    result["opcheck"] = opcheck()
    print(json.dumps(result))
