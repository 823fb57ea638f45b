"""Conversion to spikes: convergence to the ANN, simulation == closed form on real activations,
recurrent == parallel, save/load, and option errors."""

from __future__ import annotations

import pytest
import torch

import spikelm
from conftest import make_rwkv6
from spikelm.config import ConfigError, EncodingConfig
from spikelm.convert import PRESETS, calibrate, convert, encoders, preset_config, set_method, site_names
from spikelm.spiking.layers import SpikeEncoder
from spikelm.errors import SpikelmError
from spikelm.spiking.encoding import mhse_closed_form, mhse_simulate


def _batches(n=3, B=2, T=48, V=257, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, V, (B, T), generator=g) for _ in range(n)]


def _converted(enc: EncodingConfig, seed=0):
    m = make_rwkv6(n_layer=2, n_embd=64, head_size=16, seed=seed)
    return convert(m, enc, _batches())


def test_logits_converge_to_ann():
    ann = make_rwkv6(n_layer=2, n_embd=64, head_size=16, seed=1)
    x = _batches()[0]  # a calibration batch: nothing saturates, so only the grid's error is left
    with torch.no_grad():
        ref, _ = ann(x)
    errors = []
    for layers in (2, 4, 6, 8, 12, 16):
        m = make_rwkv6(n_layer=2, n_embd=64, head_size=16, seed=1)
        convert(m, EncodingConfig(encoding="mhse", T=1, layers=layers, sites="all"), _batches())
        with torch.no_grad():
            out, _ = m(x)
        errors.append((out - ref).abs().max().item())
    assert all(b < a for a, b in zip(errors, errors[1:])), errors
    # at high precision the next-token distribution is the ANN's (PPL within 0.1%)
    y = x[:, 1:]
    nll = lambda lo: torch.nn.functional.cross_entropy(lo[:, :-1].reshape(-1, lo.shape[-1]), y.reshape(-1))  # noqa: E731
    with torch.no_grad():
        ppl_ann = nll(ref).exp().item()
        ppl_snn = nll(out).exp().item()
    assert abs(ppl_snn / ppl_ann - 1) < 1e-3


def test_rate_coding_converges_with_T():
    ann = make_rwkv6(n_layer=1, n_embd=64, head_size=16, seed=2)
    x = _batches()[1]
    with torch.no_grad():
        ref, _ = ann(x)
    errs = []
    for T in (2, 8, 64, 512):
        m = make_rwkv6(n_layer=1, n_embd=64, head_size=16, seed=2)
        convert(m, EncodingConfig(encoding="rate", T=T, layers=1), _batches())
        with torch.no_grad():
            errs.append((m(x)[0] - ref).abs().max().item())
    assert all(b < a for a, b in zip(errs, errs[1:])), errs


def test_simulation_equals_closed_form_on_real_activations():
    enc = EncodingConfig(encoding="mhse", T=3, layers=4, sites="all", init_half=True, granularity="channel")
    m = _converted(enc)
    x = _batches(1, seed=5)[0]
    captured = {}
    hooks = [e.register_forward_pre_hook(lambda mod, a, n=name: captured.__setitem__(n, a[0].detach().clone()))
             for name, e in encoders(m)]
    with torch.no_grad():
        closed, _ = m(x)
        set_method(m, "sim")
        sim, _ = m(x)
    for h in hooks:
        h.remove()
    assert torch.equal(closed, sim)
    assert len(captured) == len(site_names(m, "all"))
    for name, enc_mod in encoders(m):
        act = captured[name]
        a = mhse_closed_form(act, enc_mod.scale, **enc_mod.encode_args(), with_spikes=True)
        b = mhse_simulate(act, enc_mod.scale, **enc_mod.encode_args())
        assert torch.equal(a[0], b[0]), name
        assert torch.equal(a[1].spikes_per_layer_step, b[1].spikes_per_layer_step), name
        assert torch.equal(a[2], b[2]), name


@pytest.mark.parametrize("preset", list(PRESETS))
def test_recurrent_equals_parallel(preset):
    m = make_rwkv6(n_layer=2, n_embd=64, head_size=16, seed=3)
    convert(m, preset_config(preset), _batches())
    x = _batches(1, T=20, seed=4)[0]
    with torch.no_grad():
        full, _ = m(x)
        st, outs = None, []
        for t in range(x.shape[1]):
            lo, st = m(x[:, t : t + 1], st)
            outs.append(lo)
    torch.testing.assert_close(torch.cat(outs, 1), full, rtol=1e-4, atol=1e-5)


def test_save_load_roundtrip(tmp_path):
    m = _converted(preset_config("spikelm-4L"))
    from spikelm.checkpoints import save

    path = save(m, tmp_path / "snn")
    loaded = spikelm.load(path)
    assert loaded.encoding == m.encoding
    x = _batches(1, seed=6)[0]
    with torch.no_grad():
        torch.testing.assert_close(loaded(x)[0], m(x)[0], rtol=0, atol=0)
    assert sum(1 for _ in encoders(loaded)) == 4 * 2


def test_scales_are_statistic_over_a_max():
    m = make_rwkv6(n_layer=1, n_embd=64, head_size=16, seed=0)
    enc = EncodingConfig(encoding="mhse", T=1, layers=4)
    batches = _batches()
    seen = []
    h = m.blocks[0].att.key.register_forward_pre_hook(lambda mod, a: seen.append(a[0].abs().max()))
    scales = calibrate(m, batches, enc)
    h.remove()
    a_max = 1 + 0.5 + 0.25 + 0.125
    torch.testing.assert_close(scales["blocks.0.att.key"], torch.stack(seen).max() / a_max)


@pytest.mark.parametrize(
    "kwargs,key",
    [(dict(T=0), "T"), (dict(layers=0), "layers"), (dict(sites="mlp"), "sites"), (dict(encoding="ttfs"), "encoding"),
     (dict(encoding="rate", layers=3), "layers")],
)
def test_bad_options_name_the_option(kwargs, key):
    with pytest.raises(ConfigError, match=f"^{key}:"):
        EncodingConfig(**kwargs)


def test_convert_without_calibration_fails():
    m = make_rwkv6()
    with pytest.raises(SpikelmError, match="calib"):
        convert(m, EncodingConfig(), None)
    with pytest.raises(SpikelmError, match="already spike-encoded"):
        convert(_converted(EncodingConfig()), EncodingConfig(), _batches())


def test_cli_convert_errors(tmp_path, capsys):
    from spikelm.cli import main
    from spikelm.checkpoints import save_official

    p = save_official(make_rwkv6(), tmp_path / "a.pth")
    # --calib-data defaults to the embedded corpus (its train split), like every converting command
    assert main(["convert", str(p), "--out", str(tmp_path / "o0")]) == 0
    # a second run into the same folder is refused, naming --overwrite
    assert main(["convert", str(p), "--out", str(tmp_path / "o0")]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["convert", str(p), "--out", str(tmp_path / "o"), "--calib-data", "x.txt", "--T", "0"]) == 2
    assert "T:" in capsys.readouterr().err
    txt = tmp_path / "calib.txt"
    txt.write_text("The quick brown fox jumps over the lazy dog.\n" * 200)
    assert main(["convert", str(p), "--out", str(tmp_path / "o"), "--calib-data", str(txt), "--preset", "SpikeRWKV-4L"]) == 0
    loaded = spikelm.load(tmp_path / "o")
    assert isinstance(loaded.blocks[0].att.key.encoder, SpikeEncoder) and loaded.encoding.layers == 4


def test_cli_sweep_table(tmp_path, capsys):
    import json

    from spikelm.cli import main
    from spikelm.checkpoints import save_official

    p = save_official(make_rwkv6(seed=4), tmp_path / "a.pth")
    txt = tmp_path / "t.txt"
    txt.write_text("It was the best of times, it was the worst of times.\n" * 40)
    assert main(["sweep", str(p), "--data", str(txt), "--presets", "SpikeRWKV-4L,SNN-RWKV-3", "--grid-T", "1",
                 "--grid-l", "12", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["model"] for r in rows] == ["RWKV (ANN)", "SpikeRWKV-4L", "SNN-RWKV-3", "MHSE T=1 l=12"]
    assert all(r["ppl"] > 1 and r["bpc"] > 0 for r in rows)
    # 12 spike layers are far closer to the ANN than 4
    assert abs(rows[3]["ppl_gap_pct"]) < abs(rows[1]["ppl_gap_pct"])
    assert main(["sweep", str(p), "--data", str(txt), "--presets", "none"]) == 2


def test_converted_context_restores_the_ann_without_a_copy():
    """Sweeps convert one model in place and restore it: same weights (shared storage), same
    logits after, and the converted model inside equals a conversion of a copy."""
    import copy

    from spikelm.convert import converted

    m = make_rwkv6(n_layer=2, n_embd=64, head_size=16, seed=7)
    x = _batches(1, T=24, seed=8)[0]
    with torch.no_grad():
        ann, _ = m(x)
    ref = convert(copy.deepcopy(m), preset_config("spikelm-4L", "all"), _batches())
    ptrs = {n: p.data_ptr() for n, p in m.named_parameters()}
    with converted(m, preset_config("spikelm-4L", "all"), _batches()) as c, torch.no_grad():
        assert c is m and any(True for _ in encoders(m))
        assert torch.equal(c(x)[0], ref(x)[0])
        assert {n: p.data_ptr() for n, p in m.named_parameters()} == ptrs  # the same weights, not copies
    assert not any(True for _ in encoders(m)) and m.encoding is None
    from spikelm.ops.linear import Linear  # the ANN's own linear class (nn.Linear, bf16 products in fp32 on AVX2 CPUs)

    assert type(m.blocks[0].att.key) is Linear and type(m.blocks[0].att.maa_in) is torch.nn.Identity
    with torch.no_grad():
        assert torch.equal(m(x)[0], ann)
    assert {n: p.data_ptr() for n, p in m.named_parameters()} == ptrs


def test_sweep_refuses_a_spikegpt_before_scoring_the_ann(monkeypatch):
    """A SpikeGPT cannot be converted: the sweep names that at once, not after a full ANN evaluation."""
    from spikelm.config import SpikeGPTConfig
    from spikelm.evaluate import sweep as sweep_mod
    from spikelm.models.spikegpt import SpikeGPT

    scored = []
    monkeypatch.setattr(sweep_mod, "evaluate_lm", lambda *a, **k: scored.append(1) or {"ppl": 1.0, "bpc": 1.0})
    model = SpikeGPT(SpikeGPTConfig(vocab_size=16, n_layer=1, n_embd=16, ctx_len=8))
    with pytest.raises(SpikelmError, match="SpikeGPT is spiking already"):
        sweep_mod.sweep(model, list(range(8)), 8, [torch.zeros(1, 4, dtype=torch.long)], [("x", preset_config("SpikeRWKV-4L"))])
    assert scored == []
