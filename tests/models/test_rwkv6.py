"""RWKV-6: same logits as the `rwkv` pip package; parallel == recurrent; loading round trips."""

from __future__ import annotations

import os

import pytest
import torch

import spikelm
from conftest import make_rwkv6
from spikelm.checkpoints import save_official
from spikelm.models.rwkv6 import TimeMix


def _reference(path):
    os.environ["RWKV_JIT_ON"] = "0"
    os.environ["RWKV_CUDA_ON"] = "0"
    rwkv_model = pytest.importorskip("rwkv.model")
    return rwkv_model.RWKV(model=str(path), strategy="cpu fp32", verbose=False)


def _max_rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize(
    "n_layer,n_embd,head_size,vocab,T",
    [(2, 64, 16, 257, 37), (3, 128, 64, 300, 20), (1, 192, 32, 65536, 9)],
)
def test_matches_rwkv_package(tmp_path, n_layer, n_embd, head_size, vocab, T):
    model = make_rwkv6(n_layer=n_layer, n_embd=n_embd, head_size=head_size, vocab_size=vocab, seed=n_layer)
    path = save_official(model, tmp_path / "m.pth")
    ref = _reference(path)
    tokens = torch.randint(0, vocab, (T,), generator=torch.Generator().manual_seed(1)).tolist()

    ref_logits, ref_state = ref.forward(tokens, None, full_output=True)
    import spikelm

    ours = spikelm.load(path)
    with torch.no_grad():
        logits, state = ours(torch.tensor([tokens]))
    assert _max_rel(logits[0], ref_logits.float()) <= 1e-4

    # token by token, both carrying state
    with torch.no_grad():
        st, rst = None, None
        for i, t in enumerate(tokens):
            lo, st = ours(torch.tensor([[t]]), st)
            rlo, rst = ref.forward([t], rst)
            assert _max_rel(lo[0, 0], rlo.float()) <= 1e-4, f"token {i}"


def test_parallel_equals_recurrent(tiny_rwkv6):
    idx = torch.randint(0, 257, (2, 45), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full, s_full = tiny_rwkv6(idx)
        st = None
        outs = []
        for chunk in (idx[:, :7], idx[:, 7:8], idx[:, 8:40], idx[:, 40:]):
            lo, st = tiny_rwkv6(chunk, st)
            outs.append(lo)
        step = torch.cat(outs, 1)
    torch.testing.assert_close(step, full, rtol=1e-4, atol=1e-5)
    for a, b in zip(s_full, st):
        for x, y in zip(a, b):
            torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-5)


def test_last_only(tiny_rwkv6):
    idx = torch.randint(0, 257, (1, 10))
    with torch.no_grad():
        full, _ = tiny_rwkv6(idx)
        last, _ = tiny_rwkv6(idx, last_only=True)
    assert last.shape == (1, 1, 257)
    torch.testing.assert_close(last[:, 0], full[:, -1])


@pytest.mark.parametrize("T", [1, 2, 3, 6])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_last_only_trims_the_last_block_and_keeps_the_state(T, dtype):
    """``last_only`` computes the last block's gate, output, and channel mix on the positions the last
    logits need: the same logits and the same state as the whole forward."""
    model = make_rwkv6(n_layer=3, n_embd=64, head_size=16, seed=4).to(dtype)
    idx = torch.randint(0, 257, (2, T), generator=torch.Generator().manual_seed(T))
    with torch.no_grad():
        state = model(idx[:, :1])[1]  # a non-zero state in front
        full, s_full = model(idx, state)
        last, s_last = model(idx, state, last_only=True)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
    assert last.shape == (2, 1, 257)
    torch.testing.assert_close(last[:, 0].float(), full[:, -1].float(), **tol)
    for a, b in zip(s_full, s_last):
        for x, y in zip(a, b):
            torch.testing.assert_close(x.float(), y.float(), **tol)


def test_wkv_parameters_stay_float32_in_a_low_precision_model(tmp_path):
    """time_decay, time_faaaa, time_state and ln_x keep their float32 values through a cast, a move
    and a load in bf16 (as RWKV-LM and the rwkv package keep them); everything else takes the dtype."""
    model = make_rwkv6(n_layer=2, n_embd=64, head_size=16, seed=5, has_time_state=True)
    with torch.no_grad():
        for blk in model.blocks:
            blk.att.time_state.normal_()
    ref = {k: v.clone() for k, v in model.state_dict().items()}
    keep = tuple(TimeMix.FLOAT32_PARAMS)

    def check(m, dtype):
        for name, p in m.named_parameters():
            if name.split(".att.", 1)[-1] in keep:
                assert p.dtype == torch.float32 and torch.equal(p, ref[name]), name
            else:
                assert p.dtype == dtype, name

    check(model.bfloat16(), torch.bfloat16)
    check(model.to("cpu", torch.float16), torch.float16)
    path = save_official(make_rwkv6(n_layer=2, n_embd=64, head_size=16, seed=5), tmp_path / "m.pth")
    ref = make_rwkv6(n_layer=2, n_embd=64, head_size=16, seed=5).state_dict()
    loaded = spikelm.load(path, dtype=torch.bfloat16)
    for name, p in loaded.named_parameters():
        if name.split(".att.", 1)[-1] in keep:
            assert p.dtype == torch.float32 and torch.equal(p, ref[name]), name
    with torch.no_grad():
        loaded(torch.randint(0, 257, (1, 5)))


def test_gradients_flow(tiny_rwkv6):
    tiny_rwkv6.train()
    idx = torch.randint(0, 257, (2, 40))
    logits, _ = tiny_rwkv6(idx)
    logits.logsumexp(-1).mean().backward()
    missing = [n for n, p in tiny_rwkv6.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, missing


def test_time_state_matches_reference(tmp_path):
    model = make_rwkv6(n_layer=2, n_embd=64, head_size=16, vocab_size=257, has_time_state=True, seed=3)
    path = save_official(model, tmp_path / "ts.pth")
    ref = _reference(path)
    tokens = list(range(5, 30))
    ref_logits, _ = ref.forward(tokens, None, full_output=True)
    import spikelm

    ours = spikelm.load(path)
    assert ours.cfg.has_time_state
    with torch.no_grad():
        logits, _ = ours(torch.tensor([tokens]))
    assert _max_rel(logits[0], ref_logits.float()) <= 1e-4


def test_time_state_receives_gradient():
    """State tuning: time_state is a trained parameter. It used to enter through .detach() and
    never got a gradient (and DDP failed on it as an unused parameter)."""
    model = make_rwkv6(n_layer=2, n_embd=64, head_size=16, has_time_state=True, seed=4).train()
    idx = torch.randint(0, 257, (2, 12), generator=torch.Generator().manual_seed(0))
    logits, _ = model(idx)
    logits.logsumexp(-1).mean().backward()
    for blk in model.blocks:
        g = blk.att.time_state.grad
        assert g is not None and torch.isfinite(g).all() and g.abs().max() > 0


@pytest.mark.parametrize("T", [1, 9])
def test_token_shift_states_own_their_memory(tiny_rwkv6, T):
    """Token-shift states are (B, C) buffers of their own, not views keeping the (B, T, C)
    LayerNorm outputs alive."""
    B, C = 3, tiny_rwkv6.cfg.n_embd
    with torch.no_grad():
        _, state = tiny_rwkv6(torch.randint(0, 257, (B, T)))
    for att_shift, _, ffn_shift in state:
        for s in (att_shift, ffn_shift):
            assert s.shape == (B, C)
            assert s.untyped_storage().nbytes() == B * C * s.element_size()


def test_fp32_cpu_head_is_stored_transposed_through_build_load_and_casts(tmp_path):
    """RWKV6.lay_out_head: an fp32 CPU head lives (C, V)-major (decoding's matrix-vector product
    streams that order twice as fast); bf16 keeps (V, C); values, logits and saved files are unchanged."""
    from spikelm.checkpoints.loading import load, save, save_official
    from spikelm.testing import make_rwkv6

    m = make_rwkv6(n_layer=1, n_embd=32, vocab_size=96, head_size=16, seed=1)
    w = m.head.weight
    assert w.shape == (96, 32) and w.t().is_contiguous() and not w.is_contiguous()
    idx = torch.randint(0, 96, (2, 7))
    ref = torch.nn.functional.linear(m.ln_out(m.emb(idx)), w.contiguous())
    got = m.head(m.ln_out(m.emb(idx)))
    torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-6)
    assert m.bfloat16().head.weight.is_contiguous()
    assert m.float().head.weight.t().is_contiguous()
    m = make_rwkv6(n_layer=1, n_embd=32, vocab_size=96, head_size=16, seed=1)
    for path in (save_official(m, tmp_path / "m.pth"), save(m, tmp_path / "folder")):
        loaded = load(path)
        assert loaded.head.weight.t().is_contiguous()
        assert torch.equal(loaded.head.weight, m.head.weight)
        assert load(path, dtype=torch.bfloat16).head.weight.is_contiguous()
    x = torch.randint(0, 96, (1, 5))
    assert torch.equal(load(tmp_path / "folder")(x)[0], m(x)[0])
