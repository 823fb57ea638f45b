"""Bytes the WKV ops save for backward, against the size of their inputs.

Run: ``python benchmarks/saved_bytes.py``. One forward pass per op with inputs that require
gradients, inside ``torch.autograd.graph.saved_tensors_hooks``: every tensor autograd packs is
counted once per pack (``packed``) and once per distinct storage (``unique``: views of one buffer
and tensors saved by several nodes counted once; what the graph really keeps alive). Inputs are
float32 on CPU; ratios are to the bytes of one (B, T, ...) input such as ``k``.
"""

from __future__ import annotations

import torch

from spikelm.ops import wkv4_naive, wkv4_parallel, wkv6_chunked, wkv6_naive
from spikelm.ops.wkv6 import wkv6_chunked_fp32


def saved_bytes(fn, inputs: list[torch.Tensor]) -> tuple[int, int]:
    """(packed, unique) bytes that autograd saves for the backward of ``fn(*inputs)``."""
    packed = 0
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal packed
        n = t.untyped_storage().nbytes()
        packed += n
        storages[t.untyped_storage().data_ptr()] = n
        return t

    leaves = [x.clone().requires_grad_(True) for x in inputs]
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn(*leaves)
    del out
    return packed, sum(storages.values())


def report(name: str, fn, inputs: list[torch.Tensor], unit: int) -> None:
    packed, unique = saved_bytes(fn, inputs)
    print(f"{name:<22} packed {packed / 2**20:8.2f} MiB ({packed / unit:5.1f}x)   unique {unique / 2**20:8.2f} MiB ({unique / unit:5.1f}x)")


def main() -> None:
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, threads used: {torch.get_num_threads()}")
    g = torch.Generator().manual_seed(0)

    B, T, H, N = 2, 256, 4, 64
    r, k, v = (torch.randn(B, T, H, N, generator=g) for _ in range(3))
    logw = -torch.exp(torch.empty(B, T, H, N).uniform_(-6.0, 3.0, generator=g))
    u = torch.randn(H, N, generator=g)
    state = torch.randn(B, H, N, N, generator=g)
    unit = k.numel() * k.element_size()
    print(f"WKV6 B={B} T={T} H={H} N={N} float32 (one input = {unit / 2**20:.2f} MiB)")
    report("  wkv6_chunked", wkv6_chunked, [r, k, v, logw, u, state], unit)
    report("  wkv6_chunked_fp32", wkv6_chunked_fp32, [r, k, v, logw, u, state], unit)
    report("  wkv6_naive", wkv6_naive, [r, k, v, logw, u, state], unit)

    B, T, C = 2, 256, 256
    w = -torch.exp(torch.empty(C).uniform_(-6.0, 3.0, generator=g))
    u4 = torch.randn(C, generator=g)
    k4 = 3.0 * torch.randn(B, T, C, generator=g)
    v4 = torch.randn(B, T, C, generator=g)
    unit = k4.numel() * k4.element_size()
    print(f"WKV4 B={B} T={T} C={C} float32 (one input = {unit / 2**20:.2f} MiB)")
    report("  wkv4_parallel", wkv4_parallel, [w, u4, k4, v4], unit)
    report("  wkv4_naive", wkv4_naive, [w, u4, k4, v4], unit)


if __name__ == "__main__":
    main()
