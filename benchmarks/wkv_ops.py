"""Speed of the WKV ops on CPU: the naive token loops against the chunked / parallel forms.

Run: ``python benchmarks/wkv_ops.py``. Everything is measured in this one run with 2 threads;
naive and fast calls alternate, each figure is the best of several repeats (the least disturbed
by other load on the machine), and the ratios are naive time / fast time.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from _timing import best_times

from spikelm.ops import wkv4_naive, wkv4_parallel, wkv6_chunked, wkv6_naive

REPEATS = 5


def forward_and_backward(op: Callable[..., tuple], inputs: list[torch.Tensor]) -> Callable[[], None]:
    """A closure running op forward and backward through all of its outputs."""
    leaves = [x.clone().requires_grad_(True) for x in inputs]

    def run() -> None:
        for x in leaves:
            x.grad = None
        y, state = op(*leaves)
        states = state if isinstance(state, tuple) else (state,)
        (y.sum() + sum(s.sum() for s in states)).backward()

    return run


def report(name: str, naive: float, fast: float) -> None:
    print(f"{name:<44} naive {naive * 1e3:9.1f} ms   fast {fast * 1e3:8.1f} ms   speed-up {naive / fast:6.1f}x")


def main() -> None:
    torch.set_num_threads(2)
    print(f"torch {torch.__version__}, threads used: {torch.get_num_threads()}, dtype {str(torch.get_default_dtype()).replace('torch.', '')}")
    g = torch.Generator().manual_seed(0)

    B, T, H, N = 1, 512, 8, 64
    r, k, v = (torch.randn(B, T, H, N, generator=g) for _ in range(3))
    logw = -torch.exp(torch.empty(B, T, H, N).uniform_(-6.0, 3.0, generator=g))
    u = torch.randn(H, N, generator=g)
    wkv6_in = [r, k, v, logw, u]
    with torch.no_grad():
        naive, fast = best_times(lambda: wkv6_naive(*wkv6_in), lambda: wkv6_chunked(*wkv6_in), repeats=REPEATS)
    report(f"WKV6 forward  B={B} T={T} H={H} N={N}", naive, fast)
    naive, fast = best_times(
        forward_and_backward(wkv6_naive, wkv6_in), forward_and_backward(wkv6_chunked, wkv6_in), repeats=REPEATS
    )
    report("WKV6 forward+backward", naive, fast)

    B, T, C = 1, 1024, 512
    w = -torch.exp(torch.empty(C).uniform_(-6.0, 3.0, generator=g))
    u4 = torch.randn(C, generator=g)
    k4 = 3.0 * torch.randn(B, T, C, generator=g)
    v4 = torch.randn(B, T, C, generator=g)
    wkv4_in = [w, u4, k4, v4]
    with torch.no_grad():
        naive, fast = best_times(lambda: wkv4_naive(*wkv4_in), lambda: wkv4_parallel(*wkv4_in), repeats=REPEATS)
    report(f"WKV4 forward  B={B} T={T} C={C}", naive, fast)
    naive, fast = best_times(
        forward_and_backward(wkv4_naive, wkv4_in), forward_and_backward(wkv4_parallel, wkv4_in), repeats=REPEATS
    )
    report("WKV4 forward+backward", naive, fast)


if __name__ == "__main__":
    main()
