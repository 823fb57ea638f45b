"""Everything else works on RWKV-7: conversion with every preset and both site sets (calibration,
save and reload with the encoders), recurrent == parallel once converted, and the commands that
take a checkpoint (convert, sweep, eval, generate, nlu) plus the lm-eval adapter, on a tiny random
x070 checkpoint in the official layout."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from rwkv7_helpers import official_rwkv7_state_dict

import spikelm
from spikelm.checkpoints import save
from spikelm.cli import main
from spikelm.cli.measure import cmd_nlu
from spikelm.convert import PRESETS, convert, encoders, preset_config, site_names
from spikelm.evaluate import multiple_choice as mc
from spikelm.evaluate.tasks import load_task
from spikelm.generate import generate
from spikelm.models.rwkv7 import RWKV7
from spikelm.spiking.layers import SpikeEncoder, SpikingLinear

TINY_MC = Path(__file__).parents[1] / "evaluate" / "data" / "tiny_mc.jsonl"


def _ann(seed: int = 0) -> RWKV7:
    # lora (decay, a, v, gate) = (8, 16, 4, 24): every low-rank input is its own site
    return spikelm.checkpoints.rwkv7.rwkv7_from_state_dict(official_rwkv7_state_dict(seed=seed)).eval()


def _batches(n=3, B=2, T=48, V=257, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, V, (B, T), generator=g) for _ in range(n)]


@pytest.fixture(scope="module")
def pth(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("rwkv7") / "tiny-x070.pth"
    torch.save(official_rwkv7_state_dict(seed=0), p)
    return p


@pytest.fixture(scope="module")
def text(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("rwkv7-text") / "t.txt"
    p.write_text("It was the best of times, it was the worst of times.\n" * 40)
    return p


@pytest.mark.parametrize("sites", ["time_mix", "all"])
@pytest.mark.parametrize("preset", list(PRESETS))
def test_every_preset_and_site_set_converts_saves_and_reloads(preset, sites, tmp_path):
    ann = _ann()
    x = _batches(1, seed=7)[0]
    with torch.no_grad():
        ref, _ = ann(x)
    m = convert(_ann(), preset_config(preset, sites), _batches())
    names = site_names(m, sites)
    assert sorted(n for n, _ in encoders(m)) == sorted(names)
    # time_mix: r, k, v and the four low-rank inputs (layer 0 has no v1: its value is v_first) ...
    if sites == "time_mix":
        assert len(names) == 7 + 6
    else:  # ... all: also the output projection and the ffn's key and value
        assert len(names) == 13 + 3 * 2 and "blocks.1.ffn.value" in names and "blocks.0.att.output" in names
    assert isinstance(m.get_submodule("blocks.1.att.key"), SpikingLinear)
    assert isinstance(m.get_submodule("blocks.1.att.v1_in"), SpikeEncoder)  # a low-rank input: an encoder alone
    for name, e in encoders(m):
        assert torch.isfinite(e.scale).all() and (e.scale > 0).all(), name
    with torch.no_grad():
        out, _ = m(x)
    assert not torch.equal(out, ref)  # the spikes change the logits ...
    assert torch.isfinite(out).all()
    # ... and the saved folder reloads with the same encoders and bit-identical logits
    loaded = spikelm.load(save(m, tmp_path / "snn"))
    assert loaded.encoding == m.encoding
    assert sorted(n for n, _ in encoders(loaded)) == sorted(names)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x)[0], out, rtol=0, atol=0)


def test_finer_encoding_is_closer_to_the_ann():
    """The conversion error shrinks with the number of spike layers, on RWKV-7 as on RWKV-6."""
    ann = _ann(seed=1)
    x = _batches(1, seed=0)[0]  # a calibration batch: only the grid's rounding is left
    with torch.no_grad():
        ref, _ = ann(x)
    errs = []
    for layers in (2, 4, 8, 16):
        m = convert(_ann(seed=1), spikelm.config.EncodingConfig(encoding="mhse", T=1, layers=layers, sites="all"), _batches())
        with torch.no_grad():
            errs.append((m(x)[0] - ref).abs().max().item())
    assert all(b < a for a, b in zip(errs, errs[1:])), errs


@pytest.mark.parametrize("preset", list(PRESETS))
def test_recurrent_equals_parallel_converted(preset):
    m = convert(_ann(seed=3), preset_config(preset, "all"), _batches())
    x = _batches(1, T=20, seed=4)[0]
    with torch.no_grad():
        full, _ = m(x)
        st, outs = None, []
        for t in range(x.shape[1]):
            lo, st = m(x[:, t : t + 1], st)
            outs.append(lo)
    torch.testing.assert_close(torch.cat(outs, 1), full, rtol=1e-4, atol=1e-5)


def test_cli_convert_info_and_eval(pth, text, tmp_path, capsys):
    out = tmp_path / "snn"
    assert main(["convert", str(pth), "--out", str(out), "--calib-data", str(text), "--preset", "spikelm-4L",
                 "--sites", "all"]) == 0
    loaded = spikelm.load(out)
    assert isinstance(loaded, RWKV7) and loaded.encoding.sites == "all" and loaded.encoding.layers == 4
    assert isinstance(loaded.blocks[1].att.key, SpikingLinear) and isinstance(loaded.blocks[1].ffn.value, SpikingLinear)
    assert sum(1 for _ in encoders(loaded)) == len(site_names(loaded, "all"))
    capsys.readouterr()
    assert main(["info", str(out)]) == 0
    assert "rwkv7" in capsys.readouterr().out.lower()
    ppl = {}
    for name, ckpt in (("ann", pth), ("snn", out)):
        assert main(["eval", str(ckpt), "--data", str(text), "--whole-file", "--max-chars", "300", "--json",
                     "--no-progress"]) == 0
        ppl[name] = json.loads(capsys.readouterr().out)["ppl"]
    # random weights: any finite perplexity; the spikes must change it
    assert 1 < ppl["ann"] < 1e6 and 1 < ppl["snn"] < 1e6 and ppl["snn"] != ppl["ann"]


def test_cli_sweep(pth, text, capsys):
    assert main(["sweep", str(pth), "--data", str(text), "--whole-file", "--max-chars", "300", "--presets", "SpikeRWKV-3L,SpikeRWKV-5L",
                 "--json", "--no-progress"]) == 0  # every preset converts: test_every_preset_and_site_set_...
    rows = json.loads(capsys.readouterr().out)
    assert [r["model"] for r in rows] == ["RWKV (ANN)", "SpikeRWKV-3L", "SpikeRWKV-5L"]
    assert all(r["ppl"] > 1 for r in rows)
    gap = {r["model"]: abs(r["ppl_gap_pct"]) for r in rows}
    assert gap["SpikeRWKV-5L"] < gap["SpikeRWKV-3L"]  # more spike layers, closer to the ANN
    assert main(["sweep", str(pth), "--data", str(text), "--whole-file", "--max-chars", "300", "--presets", "spikelm-4L",
                 "--sites", "all", "--json", "--no-progress"]) == 0
    rows_all = json.loads(capsys.readouterr().out)
    assert [r["model"] for r in rows_all] == ["RWKV (ANN)", "spikelm-4L"]
    assert rows_all[0]["ppl"] == rows[0]["ppl"] and rows_all[1]["ppl"] > 1


@pytest.mark.parametrize("encoding", ["", "SpikeRWKV-4L"])
def test_cli_generate(pth, text, encoding, capsys):
    args = ["generate", str(pth), "--prompt", "It was", "--max-tokens", "6", "--temperature", "0", "--json"]
    if encoding:
        args += ["--encoding", encoding, "--calib-data", str(text)]
    assert main(args) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["prompt"] == "It was" and len(res["tokens"]) == 6
    if not encoding:  # greedy decoding with the carried state == the argmax of one parallel forward
        m = _ann()
        ids = list(b"It was")
        for _ in range(6):
            with torch.no_grad():
                ids.append(int(m(torch.tensor([ids]))[0][0, -1].argmax()))
        assert res["tokens"] == ids[6:]


def test_cli_nlu_plain_and_encoded(pth, text, capsys):
    acc = {}
    for encoding in ("", "spikelm-4L"):
        assert cmd_nlu(str(pth), tasks=str(TINY_MC), shots=0, limit=4, json_=True, encoding=encoding,
                       calib_data=str(text), name="m", progress=False) == 0
        res = json.loads(capsys.readouterr().out)["m"][str(TINY_MC)]
        assert res["n"] == 4 and 0 <= res["acc"] <= 1
        acc[encoding] = res["acc"]
    # the plain run scores what spikelm's scorer scores on the model directly
    ours = mc.score_task(mc.Scorer(_ann(), batch_size=3), load_task(str(TINY_MC)), shots=0, limit=4)
    assert acc[""] == pytest.approx(ours.metrics()["acc"], abs=1e-12)


def test_lm_eval_adapter_matches_builtin_scorer(tmp_path):
    pytest.importorskip("lm_eval", reason="lm-evaluation-harness is not installed")
    import os

    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    from spikelm.evaluate.harness import register

    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "mc.yaml").write_text(
        "task: spikelm_rwkv7_mc\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {TINY_MC}\n  cache_dir: {tmp_path / 'hf'}\n"
        "test_split: test\noutput_type: multiple_choice\n"
        'doc_to_text: "{{context}}"\ndoc_to_target: label\ndoc_to_choice: choices\n'
        "metric_list:\n  - metric: acc\n")
    model = convert(_ann(), preset_config("spikelm-4L"), _batches())  # a converted RWKV-7, the hard case
    out = simple_evaluate(model=register()(model=model, batch_size=3), tasks=["spikelm_rwkv7_mc"], num_fewshot=0,
                          task_manager=TaskManager(include_path=str(tasks), include_defaults=False),
                          log_samples=True, bootstrap_iters=0)
    ours = mc.score_task(mc.Scorer(model, batch_size=3), load_task(str(TINY_MC)), shots=0)
    assert out["results"]["spikelm_rwkv7_mc"]["acc,none"] == pytest.approx(ours.metrics()["acc"], abs=1e-12)
    samples = sorted(out["samples"]["spikelm_rwkv7_mc"], key=lambda s: s["doc_id"])
    for s, lls in zip(samples, ours.lls):
        assert [float(r[0][0]) for r in s["resps"]] == pytest.approx(lls, abs=1e-4)


def test_python_generate_on_a_converted_model():
    m = convert(_ann(), preset_config("SpikeRWKV-4L"), _batches())
    res = generate(m, "It was", max_tokens=5, temperature=0)
    assert len(res.tokens) == 5


@pytest.mark.slow  # ~3 s idle, 20 s on the loaded shared machine (corpus preparation)
def test_cli_train_from_the_tiny_config_then_convert(tmp_path, monkeypatch, capsys):
    """configs/rwkv7-tiny.yaml trains (two steps here) into a folder that loads and converts."""
    import yaml

    monkeypatch.setenv("SPIKELM_CACHE", str(tmp_path / "cache"))
    data = tmp_path / "corpus.txt"
    data.write_text("It was the best of times, it was the worst of times, it was the age of wisdom.\n" * 300)
    cfg = yaml.safe_load((Path(__file__).parents[2] / "configs" / "rwkv7-tiny.yaml").read_text())
    cfg.update(data=f"text:{data}", out_dir=str(tmp_path / "run"), max_steps=2, ctx_len=16, batch_size=2,
               eval_batches=1, warmup_steps=1)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["train", str(tmp_path / "c.yaml"), "--no-progress"]) == 0
    capsys.readouterr()
    m = spikelm.load(tmp_path / "run" / "final")
    assert isinstance(m, RWKV7) and m.cfg.n_layer == 2
    out = tmp_path / "snn"
    assert main(["convert", str(tmp_path / "run" / "final"), "--out", str(out), "--calib-data", str(data)]) == 0
    assert sum(1 for _ in encoders(spikelm.load(out))) == len(site_names(m, "time_mix"))
