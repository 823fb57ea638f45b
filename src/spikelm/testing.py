"""Random RWKV-6 models with non-trivial weights, for tests and benchmarks.

The scratch initialisation zeros several parameters (so that training starts stable); a
comparison against an outside implementation needs every parameter to matter. Benchmarks import
this module, never ``tests/`` (whose conftest pins torch to one thread).
"""

from __future__ import annotations

import torch

from .config import RWKV6Config
from .models.rwkv6 import RWKV6

__all__ = ["randomize_rwkv6", "make_rwkv6"]


def randomize_rwkv6(model, seed: int = 0, decay_range=(-6.0, -0.5)):
    """Give every parameter a non-trivial random value (the scratch init zeros several)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("time_decay"):
                lo, hi = decay_range
                p.copy_(torch.rand(p.shape, generator=g) * (hi - lo) + lo)
            elif name.endswith("time_faaaa"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
            elif "time_maa_" in name and p.dim() == 3 and p.shape[0] == 1:
                p.copy_(torch.rand(p.shape, generator=g))
            elif name.endswith(("time_maa_w1", "time_decay_w1")):
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
            elif name.endswith(("time_maa_w2", "time_decay_w2")):
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
            elif name.endswith("time_state"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
            elif ("ln" in name.split(".")[-2]) and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            elif name == "emb.weight":
                p.copy_(torch.randn(p.shape, generator=g))
            else:  # linear weights
                p.copy_(torch.randn(p.shape, generator=g) / p.shape[-1] ** 0.5)
    return model


def make_rwkv6(n_layer=2, n_embd=64, vocab_size=257, head_size=16, seed=0, **kw):
    tok = kw.pop("tokenizer", "bytes" if vocab_size == 257 else "world")
    cfg = RWKV6Config(n_layer=n_layer, n_embd=n_embd, vocab_size=vocab_size, head_size=head_size, tokenizer=tok, **kw)
    return randomize_rwkv6(RWKV6(cfg), seed).eval()
