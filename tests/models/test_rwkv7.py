"""RWKV-7: same logits as the `rwkv` pip package (RWKV-7 mode, in a subprocess); parallel ==
recurrent; the value residual, last_only, gradients, init, spike-site declaration."""

from __future__ import annotations

import pytest
import torch
from rwkv7_helpers import official_rwkv7_state_dict, run_reference

from spikelm.checkpoints.rwkv7 import rwkv7_from_state_dict
from spikelm.config import RWKV7Config
from spikelm.models.rwkv7 import RWKV7, SPIKE_SITES

# (n_layer, n_embd, head_size, vocab, (decay, a, v, gate) low-rank sizes, dim_ffn, T, cut, layer-0 v LoRA in file)
CASES = {
    "2x64-h16": (2, 64, 16, 257, (8, 16, 4, 24), None, 37, 20, True),
    "3x128-h64": (3, 128, 64, 300, (32, 32, 16, 64), None, 20, 9, True),
    "1x96-h32": (1, 96, 32, 1000, (16, 8, 8, 32), 320, 9, 1, False),
    "4x64-h8": (4, 64, 8, 257, (32, 32, 32, 32), None, 25, 13, False),
}


def _max_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def _sd(case: str, seed: int = 1) -> dict[str, torch.Tensor]:
    L, C, N, V, lora, Fh, *_rest, layer0_v = CASES[case]
    return official_rwkv7_state_dict(L, C, N, V, dim_ffn=Fh, lora=lora, seed=seed, layer0_value_lora=layer0_v)


def _tokens(case: str) -> list[int]:
    V, T = CASES[case][3], CASES[case][6]
    return torch.randint(0, V, (T,), generator=torch.Generator().manual_seed(T)).tolist()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """All cases through the package in one subprocess (its import and TorchScript take seconds)."""
    pytest.importorskip("rwkv.model")
    tmp = tmp_path_factory.mktemp("rwkv7_ref")
    jobs = []
    for case in CASES:
        path = tmp / f"{case}.pth"
        torch.save(_sd(case), path)
        strategies = ["cpu fp32", "cpu bf16"] if case == "3x128-h64" else ["cpu fp32"]
        jobs.append({"model": str(path), "tokens": _tokens(case), "cut": CASES[case][7], "strategies": strategies})
    return dict(zip(CASES, run_reference(jobs, tmp))), tmp


@pytest.mark.parametrize("case", list(CASES))
def test_matches_rwkv_package(reference, case):
    """Measured ~4e-7 .. 2e-6 relative (max |diff| / max |ref|); the bound is the issue's 1e-4."""
    results, tmp = reference
    ref = results[case]
    tokens, cut = _tokens(case), CASES[case][7]
    ours = rwkv7_from_state_dict(torch.load(tmp / f"{case}.pth", weights_only=True, mmap=True))
    assert ours.cfg.n_layer == CASES[case][0] and ours.cfg.head_size == CASES[case][2]
    with torch.no_grad():
        logits, _ = ours(torch.tensor([tokens]))
        assert _max_rel(logits[0], ref["cpu fp32/prefill"]) <= 1e-4
        # the package's own prefill vs its carried decoding (sanity of the reference itself)
        assert _max_rel(ref["cpu fp32/carried"], ref["cpu fp32/prefill"]) <= 1e-4
        # ours: the same split, a prefix in one call then one token per call, state carried
        lo, st = ours(torch.tensor([tokens[:cut]]))
        rows = [lo[0]]
        for t in tokens[cut:]:
            lo, st = ours(torch.tensor([[t]]), st)
            rows.append(lo[0])
        assert _max_rel(torch.cat(rows), ref["cpu fp32/carried"]) <= 1e-4


def test_our_bf16_error_is_within_the_packages(reference):
    """Our bf16 model against the package's fp32, next to the package's own bf16 against its fp32
    (measured: ours 1.66e-2, the package's 1.79e-2; prefill and carried decoding alike), and our
    carried bf16 decoding against our bf16 prefill: the WKV state stays float32 between calls, so
    the two agree (measured: bit for bit; a state rounded to bf16 between calls moves them 1e-2)."""
    results, tmp = reference
    case = "3x128-h64"
    ref = results[case]
    tokens, cut = _tokens(case), CASES[case][7]
    pkg_err = _max_rel(ref["cpu bf16/prefill"].float(), ref["cpu fp32/prefill"])
    pkg_carried_err = _max_rel(ref["cpu bf16/carried"].float(), ref["cpu fp32/carried"])
    assert 1e-4 < pkg_err < 0.2, pkg_err  # the reference's own bf16 is sane
    ours = rwkv7_from_state_dict(torch.load(tmp / f"{case}.pth", weights_only=True), dtype=torch.bfloat16)
    assert {p.dtype for p in ours.parameters()} == {torch.bfloat16}
    with torch.no_grad():
        full, _ = ours(torch.tensor([tokens]))
        lo, st = ours(torch.tensor([tokens[:cut]]))
        rows = [lo[0]]
        for t in tokens[cut:]:
            lo, st = ours(torch.tensor([[t]]), st)
            rows.append(lo[0])
    carried = torch.cat(rows)
    assert full.dtype == torch.bfloat16 and all(s[1].dtype == torch.float32 for s in st)
    ours_err = _max_rel(full[0].float(), ref["cpu fp32/prefill"])
    assert 1e-4 < ours_err <= 1.25 * pkg_err, (ours_err, pkg_err)  # it ran in bf16, and no worse than the package
    assert _max_rel(carried.float(), ref["cpu fp32/carried"]) <= 1.25 * pkg_carried_err
    assert _max_rel(carried.float(), full[0].float()) <= 2e-3


def _model(case: str = "2x64-h16", seed: int = 1) -> RWKV7:
    return rwkv7_from_state_dict(_sd(case, seed))


@pytest.mark.parametrize("impl", ["auto", "naive", "chunked"])
def test_parallel_equals_recurrent(impl):
    model = _model("2x64-h16")
    model.wkv_impl = impl
    idx = torch.randint(0, 257, (2, 45), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full, s_full = model(idx)
        st, outs = None, []
        for chunk in (idx[:, :7], idx[:, 7:8], idx[:, 8:40], idx[:, 40:]):
            lo, st = model(chunk, st)
            outs.append(lo)
        step = torch.cat(outs, 1)
    torch.testing.assert_close(step, full, rtol=1e-4, atol=1e-5)
    for a, b in zip(s_full, st):
        for x, y in zip(a, b):
            torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-5)


def test_token_by_token_equals_parallel():
    model = _model("4x64-h8", seed=2)
    idx = torch.randint(0, 257, (1, 19), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        full, s_full = model(idx)
        st, outs = None, []
        for t in range(idx.shape[1]):
            lo, st = model(idx[:, t : t + 1], st)
            outs.append(lo)
    torch.testing.assert_close(torch.cat(outs, 1), full, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(st[-1][1], s_full[-1][1], rtol=1e-4, atol=1e-5)


def test_value_residual_reaches_later_layers():
    """Layer 1's output must depend on layer 0's value projection through v_first (not only
    through the residual stream): perturbing v_first alone changes layer 1's attention output."""
    model = _model("2x64-h16")
    att1 = model.blocks[1].att
    x = torch.randn(1, 5, 64)
    st = model.initial_state(1)[1]
    with torch.no_grad():
        v_first = torch.randn(1, 5, 64)
        out_a = att1(x, st[0], st[1], v_first)[0]
        out_b = att1(x, st[0], st[1], v_first + 1.0)[0]
    assert (out_a - out_b).abs().max() > 1e-3
    assert not hasattr(model.blocks[0].att, "v0") and hasattr(att1, "v0")


def test_last_only():
    model = _model()
    idx = torch.randint(0, 257, (1, 10))
    with torch.no_grad():
        full, _ = model(idx)
        last, _ = model(idx, last_only=True)
    assert last.shape == (1, 1, 257)
    torch.testing.assert_close(last[:, 0], full[:, -1])


def test_init_from_scratch_trains():
    """init_weights gives finite logits near uniform, every parameter a gradient, and a few Adam
    steps on a repeating sequence lower the loss (the scratch path the trainer uses)."""
    cfg = RWKV7Config(n_layer=2, n_embd=64, head_size=16, vocab_size=257, tokenizer="bytes")
    model = RWKV7(cfg).init_weights(seed=0).train()
    idx = torch.arange(33).repeat(2, 1) % 11
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for step in range(8):
        logits, _ = model(idx[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), idx[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        if step == 0:
            missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
            assert not missing, missing
            assert abs(loss.item() - torch.log(torch.tensor(257.0)).item()) < 1.0  # head gain 0.5 sqrt(V/C): logits ~ unit std
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.3, losses


def test_gradients_flow():
    model = _model().train()
    idx = torch.randint(0, 257, (2, 20))
    logits, _ = model(idx)
    logits.logsumexp(-1).mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, missing


def test_spike_sites_declared_and_present():
    model = _model("2x64-h16")
    tm = model.spike_sites("time_mix")
    assert "blocks.0.att.v1_in" not in tm and "blocks.1.att.v1_in" in tm  # layer 0 has no value residual
    assert len(tm) == 2 * len(SPIKE_SITES["time_mix"]) - 1
    everything = model.spike_sites("all")
    assert set(tm) < set(everything) and "blocks.1.ffn.value" in everything and "head" not in everything
    for name in everything:
        mod = model.get_submodule(name)
        assert isinstance(mod, (torch.nn.Linear, torch.nn.Identity)), name
    with pytest.raises(ValueError, match="site set"):
        model.spike_sites("ffn")


def test_spike_encoders_attach_to_declared_sites():
    """The converter's attach_encoders works on RWKV-7 through spike_sites: the low-rank inputs get
    encoders, linears become spiking linears, and with unit scales and 4 layers the model still
    runs (encoding is lossy, so only finiteness and a changed output are checked)."""
    from spikelm.config import EncodingConfig
    from spikelm.convert import attach_encoders, site_names
    from spikelm.spiking.layers import SpikeEncoder, SpikingLinear

    model = _model("2x64-h16")
    assert site_names(model, "time_mix") == model.spike_sites("time_mix")
    idx = torch.randint(0, 257, (1, 12))
    with torch.no_grad():
        dense, _ = model(idx)
        attach_encoders(model, EncodingConfig(encoding="mhse", layers=4, sites="time_mix"))
        spiking, _ = model(idx)
    assert isinstance(model.blocks[1].att.v1_in, SpikeEncoder) and isinstance(model.blocks[0].att.key, SpikingLinear)
    assert torch.isfinite(spiking).all() and not torch.equal(spiking, dense)
