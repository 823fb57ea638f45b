"""RWKV-4: same logits as the `rwkv` pip package; parallel == recurrent; format helpers; training."""

from __future__ import annotations

import math
import os

import pytest
import torch

from spikelm.checkpoints.rwkv4 import (
    infer_rwkv4_config,
    is_rwkv4_state_dict,
    rwkv4_from_state_dict,
)
from spikelm.config import ConfigError, RWKV4Config
from spikelm.errors import CheckpointError
from spikelm.models.rwkv4 import RWKV4, build_rwkv4


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def randomize(model: RWKV4, seed: int = 0) -> RWKV4:
    """Non-trivial random weights (the scratch init zeros several matrices)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("time_decay"):
                p.copy_(torch.rand(p.shape, generator=g) * 4 - 3)
            elif name.endswith("time_first"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
            elif ".time_mix_" in name:
                p.copy_(torch.rand(p.shape, generator=g))
            elif ".ln" in name or name.startswith("ln_out"):
                base = 1.0 if name.endswith("weight") else 0.0
                p.copy_(base + 0.1 * torch.randn(p.shape, generator=g))
            elif name == "emb.weight":
                p.copy_(torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[1]))
    return model.eval()


def tiny(seed: int = 0, **kw) -> RWKV4:
    cfg = RWKV4Config(**{"vocab_size": 257, "n_layer": 2, "n_embd": 32, "tokenizer": "bytes", **kw})
    return randomize(RWKV4(cfg), seed)


def _reference(path):
    os.environ["RWKV_JIT_ON"] = "0"
    os.environ["RWKV_CUDA_ON"] = "0"
    rwkv_model = pytest.importorskip("rwkv.model")
    return rwkv_model.RWKV(model=str(path), strategy="cpu fp32", verbose=False)


def _close(ours: torch.Tensor, ref: torch.Tensor, rtol: float = 1e-4) -> float:
    err = float((ours - ref).abs().max() / ref.abs().max())
    assert err <= rtol, err
    return err


@pytest.mark.parametrize("n_layer, n_embd, dim_att, vocab, T", [(2, 32, 0, 257, 17), (3, 48, 0, 100, 9)])
def test_matches_rwkv_package(tmp_path, n_layer, n_embd, dim_att, vocab, T):
    """The `rwkv` package reads the .pth as RWKV-4 (version 4) and computes the same logits: a
    prefill, a second chunk on the carried state, and token by token. (Its sequence mode needs
    dim_att == n_embd, as in every release; other widths are covered by parallel == recurrent.)"""
    ours = tiny(seed=n_layer, n_layer=n_layer, n_embd=n_embd, dim_att=dim_att, vocab_size=vocab)
    path = tmp_path / "rwkv4.pth"
    torch.save(ours.state_dict(), path)  # the official layout, as RWKV-LM saves it
    ref = _reference(path)
    assert ref.version == 4
    g = torch.Generator().manual_seed(T)
    prompt = torch.randint(0, vocab, (T,), generator=g).tolist()
    more = torch.randint(0, vocab, (5,), generator=g).tolist()
    errs = []
    with torch.no_grad():
        ref_logits, ref_state = ref.forward(prompt, None, full_output=True)
        logits, state = ours(torch.tensor([prompt]))
        errs.append(_close(logits[0], ref_logits))
        ref_more, _ = ref.forward(more, ref_state, full_output=True)
        logits_more, _ = ours(torch.tensor([more]), state)
        errs.append(_close(logits_more[0], ref_more))
        st, rst = None, None
        for t in prompt:
            lo, st = ours(torch.tensor([[t]]), st)
            rlo, rst = ref.forward([t], rst)
            errs.append(_close(lo[0, 0], rlo))
    print(f"rwkv-4 vs rwkv package: max relative logit error {max(errs):.2e}")


def test_parallel_equals_recurrent():
    model = tiny(seed=3, dim_att=48)
    idx = torch.randint(0, 257, (2, 13), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full, full_state = model(idx)
        st, rows = None, []
        for t in range(idx.shape[1]):
            lo, st = model(idx[:, t : t + 1], st)
            rows.append(lo)
        split, _ = model(idx[:, 7:], model(idx[:, :7])[1])
    torch.testing.assert_close(torch.cat(rows, 1), full, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(split, full[:, 7:], rtol=1e-5, atol=1e-5)
    for a, b in zip(full_state, st):
        for x, y in zip(a, b):
            torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-5)
    last, _ = model(idx, last_only=True)
    torch.testing.assert_close(last, full[:, -1:], rtol=1e-5, atol=1e-5)  # head on (B, 1, C): another GEMM shape


def test_init_weights_trains():
    """Scratch init: every block starts as the identity; one AdamW step reaches every parameter."""
    model = RWKV4(RWKV4Config(vocab_size=257, n_layer=2, n_embd=16, tokenizer="bytes")).init_weights(seed=0)
    idx = torch.randint(0, 257, (2, 9), generator=torch.Generator().manual_seed(0))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(2):  # zero-initialised matrices get gradient only once their partners moved
        logits, _ = model(idx[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), idx[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert math.isfinite(loss.item())
    unchanged = [k for k, v in model.state_dict().items() if torch.equal(v, before[k])]
    assert unchanged == []


def test_format_helpers(tmp_path):
    sd = tiny(seed=1, n_layer=2, n_embd=16, vocab_size=50277 // 1000).state_dict()
    assert is_rwkv4_state_dict(sd)
    cfg = infer_rwkv4_config(sd)
    assert (cfg.vocab_size, cfg.n_layer, cfg.n_embd, cfg.dim_att, cfg.dim_ffn, cfg.tokenizer) == (50, 2, 16, 16, 64, "world")
    neox = {"emb.weight": torch.empty(50277, 8), "blocks.0.att.time_first": torch.empty(8), "blocks.0.att.time_mix_k": torch.empty(1, 1, 8),
            "blocks.0.att.key.weight": torch.empty(8, 8), "blocks.0.ffn.key.weight": torch.empty(32, 8)}
    assert infer_rwkv4_config(neox).tokenizer == "20B_tokenizer.json"
    assert not is_rwkv4_state_dict({"emb.weight": sd["emb.weight"], "blocks.0.att.time_maa_x": torch.zeros(1, 1, 16),
                                    "blocks.0.att.time_faaaa": torch.zeros(1, 16)})
    # bf16 release with squeezed/unsqueezed time tensors loads (cast to fp32, reshaped)
    rel = {k: v.bfloat16() for k, v in sd.items()}
    rel["blocks.0.att.time_decay"] = rel["blocks.0.att.time_decay"].view(1, 1, -1)
    rel["blocks.1.att.time_mix_k"] = rel["blocks.1.att.time_mix_k"].flatten()
    model = rwkv4_from_state_dict(rel)
    assert model.emb.weight.dtype == torch.float32
    assert torch.equal(model.state_dict()["blocks.0.att.time_decay"], sd["blocks.0.att.time_decay"].bfloat16().float())
    for bad, match in [({**sd, "_strategy": "cpu fp32"}, "pip package"), ({**sd, "head_q.weight": torch.zeros(1)}, "head_q"),
                       ({**sd, "blocks.0.ffnPre.key.weight": torch.zeros(1)}, "ffnPre"), ({**sd, "extra.weight": torch.zeros(1)}, "unexpected")]:
        with pytest.raises(CheckpointError, match=match):
            rwkv4_from_state_dict(bad)
    with pytest.raises(ConfigError, match="dim_ffn"):
        RWKV4Config(dim_ffn=-1)


def test_spikelm_folder_round_trip(tmp_path):
    from spikelm import checkpoints as checkpoint

    model = tiny(seed=5)
    checkpoint.save(model, tmp_path / "r4")
    loaded = checkpoint.load(tmp_path / "r4")
    assert isinstance(loaded, RWKV4) and loaded.cfg == model.cfg
    idx = torch.randint(0, 257, (1, 9), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.equal(loaded(idx)[0], model(idx)[0])
    assert isinstance(build_rwkv4(model.cfg.to_dict()), RWKV4)
