"""Generation: greedy decoding through the recurrent state == argmax of the parallel forward."""

from __future__ import annotations

import torch

from conftest import make_rwkv6
from spikelm.generate import generate, generate_tokens, sample_logits


def test_greedy_matches_parallel_forward():
    model = make_rwkv6(seed=5)
    prompt = list(b"Once upon")
    new = list(generate_tokens(model, prompt, 12, temperature=0))
    with torch.no_grad():
        logits, _ = model(torch.tensor([prompt + new]))
    expected = logits[0, len(prompt) - 1 : -1].argmax(-1).tolist()
    assert new == expected


def test_sampling_filters():
    logits = torch.tensor([0.0, 1.0, 2.0, 3.0])
    g = torch.Generator().manual_seed(0)
    assert {sample_logits(logits, 1.0, top_k=1, generator=g) for _ in range(20)} == {3}
    # top_p=0.5: p = softmax -> [0.032, 0.087, 0.237, 0.644]; 0.644 alone reaches 0.5
    assert {sample_logits(logits, 1.0, top_p=0.5, generator=g) for _ in range(20)} == {3}
    # top_p=0.8 keeps {3, 2}
    assert {sample_logits(logits, 1.0, top_p=0.8, generator=g) for _ in range(200)} == {2, 3}
    assert sample_logits(logits, 0.0) == 3


def test_generate_seeded_and_streamed():
    model = make_rwkv6(seed=2)
    pieces = []
    a = generate(model, "ab", max_tokens=20, seed=7, on_text=pieces.append)
    b = generate(model, "ab", max_tokens=20, seed=7)
    assert a.tokens == b.tokens and a.text == b.text == "".join(pieces)


def test_the_speed_excludes_the_first_token_and_its_one_off_costs(monkeypatch):
    """tokens/s is the decoding after the first token: a slow first call (a kernel build, a
    compilation) goes into first_token_seconds. A fake clock: the first forward takes 100 s, each
    later one 1 s."""
    import importlib
    from types import SimpleNamespace

    model = make_rwkv6(seed=0).eval()
    clock = [0.0]
    monkeypatch.setattr(importlib.import_module("spikelm.generate"), "time", SimpleNamespace(perf_counter=lambda: clock[0]))
    forward = model.forward

    def timed(*a, **k):
        clock[0] += 100.0 if clock[0] == 0.0 else 1.0
        return forward(*a, **k)

    monkeypatch.setattr(model, "forward", timed)
    res = generate(model, "ab", max_tokens=5, temperature=0.0)
    assert len(res.tokens) == 5 and res.first_token_seconds == 100.0 and res.seconds == 104.0
    assert res.tokens_per_second == 1.0
