"""Scratch initialisation: every family starts near a uniform guess over its vocabulary.

The divergence guard of the trainer relies on this (a healthy run never exceeds ln V + 1 nat,
even at initialisation); a head drawn with the tall-matrix gain counted twice gave logits of
standard deviation 0.5 V / C (16 for V = 65536, C = 64) and an initial loss of 64 nats.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from spikelm.config import RWKV4Config, RWKV6Config, RWKV7Config, SpikeGPTConfig
from spikelm.models.init import orthogonal_like
from spikelm.models.rwkv4 import RWKV4
from spikelm.models.rwkv6 import RWKV6
from spikelm.models.rwkv7 import RWKV7
from spikelm.models.spikegpt import SpikeGPT

V = 65536


@pytest.mark.parametrize("build", [
    lambda: RWKV6(RWKV6Config(n_layer=1, n_embd=64, head_size=32, vocab_size=V, tokenizer="world")).init_weights(0),
    lambda: RWKV7(RWKV7Config(n_layer=1, n_embd=64, head_size=32, vocab_size=V, tokenizer="world")).init_weights(0),
    lambda: RWKV4(RWKV4Config(n_layer=1, n_embd=64, vocab_size=V)).init_weights(0),
    lambda: SpikeGPT(SpikeGPTConfig(vocab_size=V, n_layer=1, n_embd=64, ctx_len=32)).init_weights(0),
], ids=["rwkv6", "rwkv7", "rwkv4", "spikegpt"])
def test_initial_loss_is_near_a_uniform_guess(build):
    model = build().eval()
    x = torch.randint(0, V, (2, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits, _ = model(x)
    loss = F.cross_entropy(logits.flatten(0, 1).float(), x.flatten()).item()
    assert abs(logits.std().item() - 0.5) < 0.1  # the head's logits have std ~0.5, as RWKV-LM's init
    assert math.log(V) <= loss < math.log(V) + 1.0


@pytest.mark.parametrize("shape", [(300, 20), (20, 300), (64, 64)])
def test_orthogonal_like_matches_the_entry_variance_of_orthogonal(shape):
    w, ref = torch.empty(shape), torch.empty(shape)
    orthogonal_like(w, 2.0, torch.Generator().manual_seed(1))
    torch.nn.init.orthogonal_(ref, gain=2.0)
    assert w.var().item() == pytest.approx(ref.var().item(), rel=0.15)
