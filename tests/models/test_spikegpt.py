"""SpikeGPT: recurrent == parallel, spikes are binary, surrogate gradients, release layout, training."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from spikelm.config import ConfigError
from spikelm.data.tokenizers import CharTokenizer
from spikelm.checkpoints.spikegpt import (
    infer_spikegpt_config,
    is_spikegpt_state_dict,
    load_spikegpt,
)
from spikelm.errors import CheckpointError
from spikelm.generate import generate_tokens
from spikelm.models.spikegpt import SPIKEGPT_PRESETS, SpikeGPT, SpikeGPTConfig


@pytest.fixture(autouse=True)
def _one_thread():
    """These models are tiny (C = 32) and loop over tokens (LIF, decoding): thousands of small ops,
    where a second intra-op thread only adds synchronisation (8x slower on a busy 2-core machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def randomize(model: SpikeGPT, seed: int = 0, out_gain: float = 4.0) -> SpikeGPT:
    """Non-trivial random weights (the scratch init zeros several matrices). ``out_gain`` scales the
    sub-layer output projections so that the LIF inputs reach the threshold and neurons fire."""
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
                gain = out_gain if name.endswith(("att.output.weight", "ffn.value.weight")) else 1.0
                p.copy_(torch.randn(p.shape, generator=g) * gain / math.sqrt(p.shape[1]))
    return model


def tiny(seed: int = 0, **kw) -> SpikeGPT:
    cfg = SpikeGPTConfig(**{**SPIKEGPT_PRESETS["tiny"], "n_embd": 32, **kw})
    return randomize(SpikeGPT(cfg), seed).eval()


def record_spikes(model: SpikeGPT) -> tuple[dict[str, list[torch.Tensor]], list]:
    """Forward hooks on every spike site, as an outside counter would attach them."""
    seen: dict[str, list[torch.Tensor]] = {}
    handles = []
    for name, mod in model.spike_sites():
        def hook(mod, inputs, out, name=name):
            seen.setdefault(name, []).append((out[0] if isinstance(out, tuple) else out).detach())
        handles.append(mod.register_forward_hook(hook))
    return seen, handles


# ------------------------------------------------------------------------ recurrence
def test_parallel_equals_token_by_token_with_state():
    model = tiny(seed=1).double()
    idx = torch.randint(0, 257, (2, 23), generator=torch.Generator().manual_seed(0))
    seen, _ = record_spikes(model)
    with torch.no_grad():
        full, s_full = model(idx)
        rate = torch.cat([s.flatten() for k, v in seen.items() if "lif" in k for s in v]).mean().item()
        assert 0.02 < rate < 0.98, f"LIF firing rate {rate}: the comparison below would be trivial"
        for pieces in ([7, 1, 10, 5], [1] * 23):
            st, outs, start = None, [], 0
            for n in pieces:
                lo, st = model(idx[:, start:start + n], st)
                outs.append(lo)
                start += n
            assert torch.allclose(torch.cat(outs, 1), full, atol=1e-9, rtol=1e-9)
            for a, b in zip(st, s_full):
                assert a._fields == b._fields
                for x, y in zip(a, b):
                    assert torch.allclose(x, y, atol=1e-9, rtol=1e-9)
        last, _ = model(idx, last_only=True)
        assert last.shape == (2, 1, 257) and torch.allclose(last, full[:, -1:])


# ------------------------------------------------------------------------ gradients
def test_gradient_reaches_every_parameter():
    model = tiny(seed=2, learnable_shift=True).train()
    idx = torch.randint(0, 257, (2, 12), generator=torch.Generator().manual_seed(1))
    logits, _ = model(idx[:, :-1])
    F.cross_entropy(logits.reshape(-1, 257), idx[:, 1:].reshape(-1)).backward()
    for name, p in model.named_parameters():
        if name == "emb.weight":
            assert p.grad[idx[:, :-1].unique()].abs().sum() > 0, name
            continue
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, f"{name} gets no gradient"


def test_fixed_token_shift_is_the_paper_formula_and_frozen():
    L, C = 3, 16
    model = SpikeGPT(SpikeGPTConfig(vocab_size=257, n_layer=L, n_embd=C, token_shift_init="paper", learnable_shift=False))
    i = torch.arange(1, C + 1, dtype=torch.float32) / C
    for n, blk in enumerate(model.blocks, start=1):
        expected = i ** (n / L)  # eq. (2): W_shift = (i/E)^(n/N)
        for p in (blk.att.time_mix_k, blk.att.time_mix_v, blk.att.time_mix_r, blk.ffn.time_mix_k, blk.ffn.time_mix_r):
            assert torch.allclose(p.flatten(), expected)
            assert not p.requires_grad
    assert model.blocks[-1].att.time_mix_k.flatten()[0] == pytest.approx(1 / C)  # last block: linear ramp


def test_binary_embedding_spikes_with_arctan_gradient():
    model = tiny(seed=3)
    x = torch.linspace(-2, 2, 41, dtype=torch.float64).view(1, 41, 1).repeat(1, 1, 3).requires_grad_()
    s = model.emb_spike(x)
    assert set(s.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(s, (x >= 0).double())
    up = torch.randn(x.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    (s * up).sum().backward()
    # eq. (1) with alpha = 2: primitive (1/pi) arctan(pi x) + 1/2, derivative 1 / (1 + (pi x)^2)
    assert torch.allclose(x.grad, up / (1 + (math.pi * x.detach()) ** 2))
    # In the model, the embedding output is exactly the Heaviside of the looked-up rows.
    seen, _ = record_spikes(model)
    idx = torch.tensor([[3, 7, 200]])
    model(idx)
    assert torch.equal(seen["emb_spike"][0], (model.emb.weight[idx] >= 0).float())


def test_lif_outputs_are_binary_spikes():
    model = tiny(seed=4)
    seen, _ = record_spikes(model)
    with torch.no_grad():
        model(torch.randint(0, 257, (3, 17), generator=torch.Generator().manual_seed(2)))
    lif = [s for k, v in seen.items() if "lif" in k for s in v]
    assert len(lif) == 2 * model.cfg.n_layer
    allspikes = torch.cat([s.flatten() for s in lif])
    assert set(allspikes.unique().tolist()) == {0.0, 1.0}
    assert lif[0].shape == (3, 17, 32)


# ------------------------------------------------------------------------ release layout
def release_state_dict(L: int, C: int, V: int, seed: int = 0, squeeze_decay: bool = False) -> dict[str, torch.Tensor]:
    """A random state dict with exactly the keys and shapes of the SpikeGPT releases (fp16, as released)."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *shape: (torch.randn(*shape, generator=g) / math.sqrt(shape[-1])).half()  # noqa: E731
    sd = {"emb.weight": torch.randn(V, C, generator=g).half()}
    for i in range(L):
        b = f"blocks.{i}."
        if i == 0:
            sd[b + "ln0.weight"], sd[b + "ln0.bias"] = torch.ones(C).half(), torch.zeros(C).half()
        for ln in ("ln1", "ln2"):
            sd[b + ln + ".weight"], sd[b + ln + ".bias"] = torch.ones(C).half(), torch.zeros(C).half()
        decay = torch.rand(C, generator=g) * 4 - 3
        sd[b + "att.time_decay"] = (decay.view(1, 1, C) if squeeze_decay else decay).half()
        sd[b + "att.time_first"] = (torch.randn(C, generator=g) * 0.5).half()
        for m in ("k", "v", "r"):
            sd[b + f"att.time_mix_{m}"] = torch.rand(1, 1, C, generator=g).half()
        for m in ("key", "value", "receptance"):
            sd[b + f"att.{m}.weight"] = r(C, C)
        sd[b + "att.output.weight"] = r(C, C) * 4
        for m in ("k", "r"):
            sd[b + f"ffn.time_mix_{m}"] = torch.rand(1, 1, C, generator=g).half()
        sd[b + "ffn.key.weight"] = r(4 * C, C)
        sd[b + "ffn.receptance.weight"] = r(C, C)
        sd[b + "ffn.value.weight"] = r(C, 4 * C) * 4
    sd["ln_out.weight"], sd["ln_out.bias"] = torch.ones(C).half(), torch.zeros(C).half()
    sd["head.weight"] = r(V, C)
    return sd


@pytest.mark.parametrize("squeeze_decay", [False, True])
def test_release_checkpoint_loads_strict_and_generates(tmp_path, squeeze_decay):
    sd = release_state_dict(L=2, C=32, V=257, squeeze_decay=squeeze_decay)
    assert is_spikegpt_state_dict(sd)
    path = tmp_path / "SpikeGPT-tiny.pth"
    torch.save(sd, path)
    model = load_spikegpt(path)
    own = model.state_dict()
    assert set(own) == set(sd)  # exactly the release names: no extra buffers, nothing missing
    for k, v in sd.items():
        assert torch.equal(own[k], v.float().reshape(own[k].shape)), k
    assert model.cfg.tokenizer == "bytes" and model.tokenizer_name == "bytes" and model.cfg.ffn_mult == 4
    out = list(generate_tokens(model, [72, 105, 32], max_tokens=6, temperature=0))
    assert len(out) == 6 and all(0 <= t < 257 for t in out)
    assert out == list(generate_tokens(model, [72, 105, 32], max_tokens=6, temperature=0))
    # greedy generation agrees with a full parallel pass over prompt + generated tokens
    with torch.no_grad():
        logits, _ = model(torch.tensor([[72, 105, 32] + out]))
    assert logits[0, 2:-1].argmax(-1).tolist() == out


class _PassThrough(torch.nn.Module):
    """Stands in for a LIF neuron: (y, v) -> (y, v). With it, SpikeGPT is a plain RWKV-4."""

    def forward(self, y, v):
        return y, v


def test_release_layout_means_what_rwkv4_software_reads(tmp_path):
    """The release layout is RWKV-4's: with the neurons and the binary embedding bypassed, our model
    must equal the `rwkv` package's independent RWKV-4 on the same file (token-shift direction and
    mix convention, decay sign, bonus, receptance, FFN), in parallel and token by token."""
    rwkv_model = pytest.importorskip("rwkv.model")
    sd = {k: v.float() for k, v in release_state_dict(L=2, C=32, V=257, seed=7).items()}
    path = tmp_path / "rwkv4-layout.pth"
    torch.save(sd, path)
    ref = rwkv_model.RWKV(model=str(path), strategy="cpu fp32", verbose=False)
    assert ref.version == 4
    ours = load_spikegpt(path)
    ours.emb_spike = None
    for blk in ours.blocks:
        blk.lif1, blk.lif2 = _PassThrough(), _PassThrough()
    tokens = torch.randint(0, 257, (19,), generator=torch.Generator().manual_seed(4)).tolist()
    ref_logits, _ = ref.forward(tokens, None, full_output=True)
    with torch.no_grad():
        logits, _ = ours(torch.tensor([tokens]))
        assert (logits[0] - ref_logits).abs().max() <= 1e-4 * ref_logits.abs().max()
        st, rst = None, None
        for t in tokens:
            lo, st = ours(torch.tensor([[t]]), st)
            rlo, rst = ref.forward([t], rst)
        assert (lo[0, 0] - rlo).abs().max() <= 1e-4 * rlo.abs().max()


def test_release_layout_rejections():
    sd = release_state_dict(L=1, C=8, V=257)
    assert not is_spikegpt_state_dict({"emb.weight": sd["emb.weight"], "blocks.0.att.time_maa_x": torch.zeros(1, 1, 8),
                                       "blocks.0.att.time_faaaa": torch.zeros(2, 4)})
    ffnpre = {k.replace("blocks.0.att.", "blocks.0.ffnPre."): v for k, v in sd.items()}
    ffnpre["blocks.1.att.time_first"], ffnpre["blocks.1.att.time_mix_k"] = sd["blocks.0.att.time_first"], sd["blocks.0.att.time_mix_k"]
    with pytest.raises(CheckpointError, match="ffnPre"):
        infer_spikegpt_config(ffnpre)
    bad = dict(sd)
    bad["blocks.0.ffn.key.weight"] = torch.zeros(20, 8)
    with pytest.raises(CheckpointError, match="multiple of n_embd"):
        infer_spikegpt_config(bad)


def test_infer_config_picks_tokenizer(tmp_path):
    neox = {"emb.weight": torch.empty(50277, 8), "blocks.0.att.time_first": torch.empty(8),
            "blocks.0.att.time_mix_k": torch.empty(1, 1, 8), "blocks.0.ffn.key.weight": torch.empty(32, 8)}
    cfg = infer_spikegpt_config(neox)
    assert (cfg.vocab_size, cfg.n_layer, cfg.n_embd, cfg.tokenizer) == (50277, 1, 8, "20B_tokenizer.json")

    # character model: ids -> characters, UTF-16 as the SpikeGPT code writes vocab.json
    chars = sorted(set("hello spiking world!\n"))
    (tmp_path / "vocab.json").write_text(json.dumps({str(i): c for i, c in enumerate(chars)}, ensure_ascii=False), encoding="utf-16")
    sd = release_state_dict(L=1, C=8, V=len(chars))
    torch.save(sd, tmp_path / "char-model.pth")
    model = load_spikegpt(tmp_path / "char-model.pth")  # finds vocab.json beside the file
    assert model.tokenizer_name == f"char:{tmp_path / 'vocab.json'}"
    tok = CharTokenizer(tmp_path / "vocab.json")
    assert tok.vocab_size == len(chars) and tok.decode(tok.encode("hello world!")) == "hello world!"
    assert tok.encode("hey") == tok.encode("he ")  # unknown characters -> " ", as the code's run.py does
    explicit = infer_spikegpt_config(sd, tokenizer=str(tmp_path / "vocab.json"))
    assert explicit.tokenizer == f"char:{tmp_path / 'vocab.json'}"


def test_spikelm_folder_round_trip(tmp_path):
    from spikelm import checkpoints as checkpoint

    model = tiny(seed=5)
    checkpoint.save(model, tmp_path / "sg")
    loaded = checkpoint.load(tmp_path / "sg")
    assert isinstance(loaded, SpikeGPT) and loaded.cfg == model.cfg
    idx = torch.randint(0, 257, (1, 9), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.equal(loaded(idx)[0], model(idx)[0])


# ------------------------------------------------------------------------ config
def n_params(V: int, L: int, C: int) -> int:
    """Per block 13 C^2 (att 4 C^2, ffn 9 C^2) + 11 C (decay, bonus, 5 mixes, ln1, ln2); emb, head, ln0, ln_out."""
    return L * (13 * C * C + 11 * C) + 2 * V * C + 4 * C


def test_config_presets_and_validation():
    model = SpikeGPT(SpikeGPTConfig(vocab_size=300, n_layer=3, n_embd=24))
    assert sum(p.numel() for p in model.parameters()) == n_params(300, 3, 24)
    big = SPIKEGPT_PRESETS["216M"]
    assert 215e6 < n_params(big["vocab_size"], big["n_layer"], big["n_embd"]) < 216e6  # the released "216M"
    for kw in SPIKEGPT_PRESETS.values():
        cfg = SpikeGPTConfig(**kw)
        assert SpikeGPTConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="token_shift_init"):
        SpikeGPTConfig(token_shift_init="nope")
    with pytest.raises(ConfigError, match="lif_beta"):
        SpikeGPTConfig.from_dict({"lif_beta": 1.5})


# ------------------------------------------------------------------------ training
def test_tiny_spikegpt_overfits_a_byte_string():
    torch.manual_seed(0)
    text = b"hello spiking world! " * 2
    ids = torch.tensor([list(text)])
    x, y = ids[:, :-1], ids[:, 1:]
    model = SpikeGPT(SpikeGPTConfig(**{**SPIKEGPT_PRESETS["tiny"], "n_embd": 32})).init_weights(0).train()
    seen, _ = record_spikes(model)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(30):
        seen.clear()
        logits, _ = model(x)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] > 5.0  # about ln(257): nothing known at the start
    assert losses[-1] < 0.25 * losses[0], losses
    fired = sum(s.sum().item() for k, v in seen.items() if "lif" in k for s in v)
    assert fired > 0  # the trained blocks contribute through spikes


@pytest.mark.parametrize("T", [1, 9])
def test_token_shift_states_own_their_memory(T):
    """Every state tensor is a (B, C) buffer of its own, not a view of a (B, T, C) activation."""
    model = tiny(seed=3)
    B, C = 3, model.cfg.n_embd
    with torch.no_grad():
        _, state = model(torch.randint(0, 257, (B, T)))
    for layer in state:
        for name, s in zip(layer._fields, layer):
            assert s.shape == (B, C), name
            assert s.untyped_storage().nbytes() == B * C * s.element_size(), name


# ------------------------------------------------------------------------ ablation / recipe switches
def _reference_block_outputs(model: SpikeGPT, idx: torch.Tensor) -> torch.Tensor:
    """lif=False by hand: each block adds its sub-layer outputs as they are (no neuron)."""
    x = model.emb(idx)
    x = model.emb_spike(x) if model.emb_spike is not None else x
    for blk in model.blocks:
        st = model.initial_state(idx.shape[0], dtype=x.dtype)[blk.layer_id]
        x = blk.ln0(x) if hasattr(blk, "ln0") else x
        y, _, _ = blk.att(blk.ln1(x), st.att_shift, (st.aa, st.bb, st.pp))
        x = x + y
        y, _ = blk.ffn(blk.ln2(x), st.ffn_shift)
        x = x + y
    return model.head(model.ln_out(x))


def test_lif_false_is_the_identity_and_has_no_lif_sites():
    model = tiny(seed=3, lif=False).double()
    idx = torch.randint(0, 257, (2, 9), generator=torch.Generator().manual_seed(2))
    assert [n for n, _ in model.spike_sites()] == ["emb_spike"]
    with torch.no_grad():
        torch.testing.assert_close(model(idx)[0], _reference_block_outputs(model, idx))
    ann = tiny(seed=3, lif=False, binary_embedding=False)
    assert list(ann.spike_sites()) == [] and ann.state_dict().keys() == model.state_dict().keys()


def test_pre_proj_site_spikes_the_projection_inputs_and_recurs():
    model = tiny(seed=4, lif_site="pre_proj").double()
    idx = torch.randint(0, 257, (2, 11), generator=torch.Generator().manual_seed(3))
    seen, _ = record_spikes(model)
    with torch.no_grad():
        full, s_full = model(idx)
        assert s_full[0].ffn_v.shape == (2, 4 * 32)  # lif2 sits on the 4C hidden layer
        assert seen["blocks.0.lif2"][0].shape[-1] == 4 * 32
        spikes = torch.cat([s.flatten() for k, v in seen.items() if "lif" in k for s in v])
        assert set(spikes.unique().tolist()) <= {0.0, 1.0} and 0.02 < spikes.mean().item() < 0.98
        st, outs = None, []
        for t in range(idx.shape[1]):
            lo, st = model(idx[:, t:t + 1], st)
            outs.append(lo)
        torch.testing.assert_close(torch.cat(outs, 1), full, atol=1e-9, rtol=1e-9)
    assert model.state_dict().keys() == tiny(seed=4).state_dict().keys()  # same parameters either way


def test_recipe_switches_validate_and_count():
    from spikelm.energy.report import count_model, full_report

    with pytest.raises(ConfigError, match="lif_site"):
        SpikeGPTConfig.from_dict({"lif_site": "somewhere"})
    with pytest.raises(ConfigError, match="lif"):
        SpikeGPTConfig.from_dict({"lif": "maybe"})
    for kw in ({"lif": False}, {"lif_site": "pre_proj"}):
        rep = full_report(count_model(tiny(seed=5, n_layer=1, **kw), list(range(12))))
        assert not any(s.kind == "residual" for s in rep.sites), kw  # spikes are not what the sub-layers add
