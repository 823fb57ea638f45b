"""Spiking-aware fine-tuning (spikelm finetune): it recovers what conversion lost, its result is an
ordinary converted folder whose simulation equals its closed form bit for bit, each --train mode
learns what it says, the guard stops a diverging run, and bad requests are one named line."""

from __future__ import annotations

import json

import pytest
import torch

import spikelm
from spikelm.cli import main
from spikelm.convert import encoders, set_method
from spikelm.train import TrainingDiverged, train
from spikelm.train.finetune import FinetuneArgs, finetune, merge_low_rank, set_trainable

from train_helpers import tiny_args

pytest_plugins = ["train_helpers"]  # its fixtures (a conftest.py here would shadow tests/conftest.py)

FT = dict(ctx_len=16, batch_size=4, max_steps=12, warmup_steps=2, lr=3e-3, min_lr=3e-4, eval_every=6, eval_batches=2,
          save_every=0, log_every=3, device="cpu", precision="fp32", calib_batches=2, calib_ctx=32)


@pytest.fixture(scope="module")
def ann(data_root, tmp_path_factory):
    """A tiny RWKV-6 trained for 40 steps on the tiny corpus: something worth distilling."""
    import os

    os.environ["SPIKELM_CACHE"] = str(data_root[1])
    try:
        out = tmp_path_factory.mktemp("ann") / "run"
        return train(tiny_args(data_root[0], out, max_steps=40, eval_every=0, log_every=10), progress=False).final_path
    finally:
        os.environ.pop("SPIKELM_CACHE")


def _ft(data, checkpoint, out, **kw) -> FinetuneArgs:
    d = dict(FT, checkpoint=str(checkpoint), data=data, calib_data=data, out_dir=str(out))
    d.update(kw)
    return FinetuneArgs.from_dict(d)


def _logits(model, data_tokens):
    with torch.no_grad():
        return model(data_tokens)[0]


def test_finetune_recovers_the_gap_and_saves_a_converted_folder(tiny_data, ann, tmp_path):
    # from the papers' max calibration (the default mse starts closer: this test is about training)
    res = finetune(_ft(tiny_data, ann, tmp_path / "ft", preset="SpikeRWKV-3L", sites="all", calibration="max"),
                   progress=None)
    summary = json.loads((tmp_path / "ft" / "summary.json").read_text())
    assert summary["converted_gap_pct"] > 5.0  # conversion alone loses (3 layers at every site)
    assert summary["val_gap_pct"] < 0.5 * summary["converted_gap_pct"]  # fine-tuning wins most of it back
    rows = [json.loads(x) for x in (tmp_path / "ft" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["val_loss"] is not None] == [6, 12] and rows[-1]["val_gap_pct"] is not None
    header = (tmp_path / "ft" / "log.csv").read_text().splitlines()[0]
    assert header.endswith(",val_gap_pct")

    model = spikelm.load(res.final_path)  # an ordinary converted folder
    cfg = json.loads((res.final_path / "config.json").read_text())
    assert cfg["encoding"]["layers"] == 3 and cfg["encoding"]["sites"] == "all" and cfg["finetune"]["train"] == "all"
    sites = list(encoders(model))
    assert len(sites) == 10 and all(not isinstance(e.scale, torch.nn.Parameter) for _, e in sites)
    calibrated = spikelm.load(ann)
    spikelm.convert.convert(calibrated, spikelm.convert.preset_config("SpikeRWKV-3L", "all"),
                            spikelm.data.text.calibration_batches(tiny_data, "bytes", 2, 4, 32))
    before = dict(encoders(calibrated))
    assert any(not torch.equal(e.scale, before[n].scale) for n, e in sites)  # the scales learnt


def test_fine_tuned_simulation_equals_closed_form_bit_for_bit(tiny_data, ann, tmp_path):
    res = finetune(_ft(tiny_data, ann, tmp_path / "ft", preset="SpikeRWKV-4L", sites="all", max_steps=4, eval_every=0,
                       train="lora"), progress=None)
    model = spikelm.load(res.final_path)
    assert model.encoding.calibration == "mse"  # the default start
    idx = torch.randint(0, 257, (2, 12), generator=torch.Generator().manual_seed(0))
    closed = _logits(model, idx)
    set_method(model, "sim")
    assert torch.equal(_logits(model, idx), closed)


def test_each_mode_learns_what_it_says(tiny_data, ann, tmp_path):
    teacher = spikelm.load(ann).state_dict()
    for mode in ("scales", "norms"):
        res = finetune(_ft(tiny_data, ann, tmp_path / mode, preset="SpikeRWKV-4L", max_steps=3, eval_every=0,
                           train=mode), progress=None)
        got = spikelm.load(res.final_path).state_dict()
        changed = {k for k in teacher if not torch.equal(teacher[k], got[k])}
        if mode == "scales":
            assert changed == set()
        else:
            assert changed and all(k.split(".")[-2].startswith("ln") for k in changed), changed
        assert any(k.endswith("encoder.scale") for k in got)


def test_low_rank_update_merges_into_the_same_forward(ann):
    model = spikelm.load(ann)
    spikelm.convert.apply_preset(model, "SpikeRWKV-4L", [torch.randint(0, 257, (2, 32))], sites="all")
    set_trainable(model, "lora", lora_rank=4, lora_alpha=8.0, seed=1)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.endswith(("lora_A", "lora_B", "encoder.scale")) or n.endswith("scale") for n in trainable)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("lora_B"):
                p.normal_(0, 0.05)
    model.eval()
    idx = torch.randint(0, 257, (1, 10), generator=torch.Generator().manual_seed(2))
    before = _logits(model, idx)
    merge_low_rank(model)
    assert not any("lora" in k or "parametrizations" in k for k in model.state_dict())
    assert torch.equal(_logits(model, idx), before)


def test_from_a_converted_folder_and_its_teacher(tiny_data, ann, tmp_path):
    assert main(["convert", str(ann), "--preset", "SpikeRWKV-4L", "--calib-data", tiny_data, "--out", str(tmp_path / "c"),
                 "--calib-batches", "2", "--calib-ctx", "32", "--no-progress"]) == 0
    res = finetune(_ft(tiny_data, tmp_path / "c", tmp_path / "ft", max_steps=2, eval_every=0), progress=None)
    assert spikelm.load(res.final_path).encoding.layers == 4
    # a fine-tuned folder is no longer its ANN: continuing from it needs the teacher named
    assert main(["finetune", str(res.final_path), "--out", str(tmp_path / "ft2"), "--data", tiny_data, "--no-progress"]) == 2
    ok = finetune(_ft(tiny_data, res.final_path, tmp_path / "ft3", teacher=str(ann), max_steps=1, eval_every=0), progress=None)
    assert ok.steps == 1


@pytest.mark.parametrize("argv,message", [
    (["--steps", "2"], "is an ANN; name the spike encoding with --preset"),
    (["--preset", "SpikeRWKV-9L"], "unknown preset"),
    (["--preset", "SpikeRWKV-4L", "--train", "everything"], "train: unknown mode 'everything'"),
    (["--preset", "SpikeRWKV-4L", "--sites", "ffn"], "sites: unknown site set 'ffn'"),
    (["--preset", "SpikeRWKV-4L", "--kd-temperature", "0"], "kd_temperature: must be > 0"),
])
def test_bad_requests_are_one_named_line(argv, message, tiny_data, ann, tmp_path, capsys):
    rc = main(["finetune", str(ann), "--data", tiny_data, "--out", str(tmp_path / "o"), "--no-progress", *argv])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and "Traceback" not in err, err
    assert not (tmp_path / "o" / "final").exists()


def test_teacher_must_be_an_ann_of_the_same_vocabulary(tiny_data, ann, tmp_path, capsys):
    assert main(["convert", str(ann), "--preset", "SpikeRWKV-4L", "--calib-data", tiny_data, "--out", str(tmp_path / "c"),
                 "--calib-batches", "1", "--no-progress"]) == 0
    rc = main(["finetune", str(ann), "--preset", "SpikeRWKV-4L", "--teacher", str(tmp_path / "c"), "--data", tiny_data,
               "--out", str(tmp_path / "o"), "--no-progress"])
    assert rc == 2 and "is a converted (spiking) model; the teacher is the ANN" in capsys.readouterr().err


def test_guard_stops_a_fine_tune_at_lr_10(tiny_data, ann, tmp_path):
    with pytest.raises(TrainingDiverged):
        finetune(_ft(tiny_data, ann, tmp_path / "ft", preset="SpikeRWKV-4L", lr=10.0, min_lr=1.0, max_steps=8,
                     eval_every=2, scale_lr=10.0), progress=None)


def test_rate_penalty_lowers_the_firing_rate(tiny_data, ann, tmp_path):
    from spikelm.energy.report import count_model

    rates = {}
    for lam in (0.0, 3.0):
        res = finetune(_ft(tiny_data, ann, tmp_path / f"r{lam}", preset="SpikeRWKV-4L", sites="all", max_steps=8,
                           eval_every=0, rate_penalty=lam), progress=None)
        model = spikelm.load(res.final_path)
        counts = count_model(model, torch.randint(0, 257, (64,), generator=torch.Generator().manual_seed(3)).tolist())
        st = [r.spikes for r in counts.spiking_rows()]
        rates[lam] = sum(s.layer_spikes for s in st) / sum(s.numel * s.T * s.layers for s in st)
    assert rates[3.0] < rates[0.0]


def test_rwkv7_fine_tunes_too(tiny_data, data_root, tmp_path):
    model = {"kind": "rwkv7", "n_layer": 1, "n_embd": 32, "head_size": 16}
    ann7 = train(tiny_args(tiny_data, tmp_path / "ann7", model=model, max_steps=10, eval_every=0), progress=None).final_path
    res = finetune(_ft(tiny_data, ann7, tmp_path / "ft7", preset="SpikeRWKV-4L", sites="all", max_steps=3, eval_every=0,
                       train="lora"), progress=None)
    m = spikelm.load(res.final_path)
    assert m.cfg.kind == "rwkv7" and len(list(encoders(m))) > 0


# ---------------------------------------------------------------------------- real processes (slow)
def _child_run(args, mode, data_root, tmp_path, *flags):
    import subprocess
    import sys
    from pathlib import Path

    import yaml

    from train_helpers import child_env

    cfg = tmp_path / f"{Path(args.out_dir).name}.yaml"
    cfg.write_text(yaml.safe_dump(args.to_dict()))
    here = Path(__file__).resolve().parent
    return subprocess.run([sys.executable, str(here / "train_child.py"), "finetune", str(cfg), mode, *flags],
                          env=child_env(data_root[1]), capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_resume_after_sigkill_equals_an_uninterrupted_fine_tune(data_root, tiny_data, ann, tmp_path):
    from train_helpers import same_weights

    kw = dict(preset="SpikeRWKV-4L", sites="all", train="lora", max_steps=10, save_every=3, eval_every=5, log_every=2)
    ref = finetune(_ft(tiny_data, ann, tmp_path / "ref", **kw), progress=None)
    for mode in ("kill-save:2", "kill-latest:3"):  # SIGKILL half-way through a checkpoint, and before `latest` moves
        out = tmp_path / mode.replace(":", "-")
        args = _ft(tiny_data, ann, out, **kw)
        killed = _child_run(args, mode, data_root, tmp_path)
        assert killed.returncode == -9, killed.stderr[-2000:]
        resumed = _child_run(args, "run", data_root, tmp_path, "--resume")
        assert resumed.returncode == 0, resumed.stderr[-2000:]
        same_weights(ref.final_path, out / "final")
        ref_rows = [(r["step"], r["loss"], r["val_gap_pct"]) for r in ref.history]
        rows = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
        assert [(r["step"], r["loss"], r["val_gap_pct"]) for r in rows] == ref_rows


@pytest.mark.slow
@pytest.mark.parametrize("distributed,train_mode", [("ddp", "all"), ("fsdp", "lora")])
def test_two_gloo_processes_fine_tune(distributed, train_mode, data_root, ann, tmp_path):
    """DDP, and FSDP2 with low-rank updates (parametrized weights, sharded; merged in final/)."""
    import subprocess
    import sys

    import yaml

    from train_helpers import child_env

    args = _ft(data_root[0], ann, tmp_path / "ddp", preset="SpikeRWKV-4L", sites="all", max_steps=4, eval_every=2,
               batch_size=4, grad_accum=2, distributed=distributed, train=train_mode)
    cfg = tmp_path / "ddp.yaml"
    cfg.write_text(yaml.safe_dump(args.to_dict()))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "spikelm",
           "finetune", str(ann), "--config", str(cfg), "--no-progress"]
    run = subprocess.run(cmd, env=child_env(data_root[1]), capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert ("x 2, fp32" if distributed == "ddp" else "x 2 sharded (FSDP2), fp32") in run.stderr
    assert "accumulation 2" in run.stderr
    model = spikelm.load(tmp_path / "ddp" / "final")
    assert len(list(encoders(model))) == 10
    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["val_gap_pct"] is not None


def test_sweep_adds_a_fine_tuned_row_beside_each_preset(tiny_data, ann, tmp_path, capsys):
    argv = ["sweep", str(ann), "--data", tiny_data, "--calib-data", tiny_data, "--presets", "SpikeRWKV-3L",
            "--sites", "all", "--grid-T", "1", "--grid-l", "2", "--max-chars", "3000", "--finetune-steps", "3",
            "--finetune-out", str(tmp_path / "ft"), "--no-progress"]
    assert main([*argv, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["model"] for r in rows] == ["RWKV (ANN)", "SpikeRWKV-3L", "SpikeRWKV-3L +FT", "MHSE T=1 l=2"]
    ft = rows[2]
    assert ft["finetune_steps"] == 3 and ft["finetune_tokens"] == 3 * 8 * 256 and ft["l"] == 3
    assert ft["ppl_gap_pct"] < rows[1]["ppl_gap_pct"]
    assert (tmp_path / "ft" / "SpikeRWKV-3L-all" / "final" / "model.safetensors").is_file()
    # a second sweep into the same folder reuses the finished fine-tune (same numbers, the folder untouched),
    # and prints its table
    run = tmp_path / "ft" / "SpikeRWKV-3L-all"
    before = {p.name: p.read_bytes() for p in (run / "summary.json", run / "train_args.json", run / "log.jsonl")}
    assert main(argv) == 0
    assert before == {p.name: p.read_bytes() for p in (run / "summary.json", run / "train_args.json", run / "log.jsonl")}
    out = capsys.readouterr().out
    assert "SpikeRWKV-3L +FT" in out and "Fine-tuned rows" in out and f"{ft['ppl']:.4f}" in out


def test_weight_bits_quantise_the_final_model_and_validate_it_again(tiny_data, ann, tmp_path):
    """--weight-bits 8: final/ holds int8 weights (round trip through save and load), and the summary
    reports the gap measured again at 8 bits next to the float one."""
    res = finetune(_ft(tiny_data, ann, tmp_path / "ft", preset="SpikeRWKV-4L", sites="all", max_steps=2, eval_every=0,
                       weight_bits=8), progress=None)
    summary = json.loads((tmp_path / "ft" / "summary.json").read_text())
    assert summary["weight_bits"] == 8 and summary["val_gap_pct_at_weight_bits"] is not None
    assert summary["val_loss_at_weight_bits"] != summary["val_loss"]
    model = spikelm.load(res.final_path)
    from spikelm.models.quantized import weight_bits
    assert weight_bits(model) == 8 and model.encoding.sites == "all"
    with pytest.raises(spikelm.errors.ConfigError, match="weight_bits"):
        _ft(tiny_data, ann, tmp_path / "x", preset="SpikeRWKV-4L", weight_bits=4)


def test_sweep_compares_calibrations_and_fine_tunes_each_preset_once(tiny_data, ann, tmp_path, capsys):
    """--calibration max,mse: a row of each, named; the fine-tuned row (from mse) once per preset."""
    argv = ["sweep", str(ann), "--data", tiny_data, "--calib-data", tiny_data, "--presets", "SpikeRWKV-4L",
            "--sites", "all", "--max-chars", "3000", "--calibration", "max,mse", "--finetune-steps", "1",
            "--finetune-out", str(tmp_path / "ft"), "--no-progress", "--json"]
    assert main(argv) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["model"] for r in rows] == ["RWKV (ANN)", "SpikeRWKV-4L [max]", "SpikeRWKV-4L +FT", "SpikeRWKV-4L [mse]"]
    assert rows[1]["ppl"] != rows[3]["ppl"]
    assert json.loads((tmp_path / "ft" / "SpikeRWKV-4L-all" / "final" / "config.json").read_text())[
        "encoding"]["calibration"] == "mse"


def test_resuming_a_finished_fine_tune_keeps_its_gaps(tiny_data, ann, tmp_path):
    """finetune --resume on a finished run takes no step and rewrites the summary with the same gaps
    (the converted model's included), not with nulls."""
    args = _ft(tiny_data, ann, tmp_path / "ft", preset="SpikeRWKV-4L", sites="all", max_steps=2, eval_every=2)
    finetune(args, progress=None)
    first = json.loads((tmp_path / "ft" / "summary.json").read_text())
    finetune(args, resume=True, progress=None)
    again = json.loads((tmp_path / "ft" / "summary.json").read_text())
    for k in ("val_gap_pct", "converted_gap_pct", "converted_val_loss", "steps"):
        assert again[k] == first[k] and again[k] is not None, k


def test_another_family_is_refused_before_the_out_dir_is_made(tmp_path):
    from spikelm.config import SpikeGPTConfig
    from spikelm.models.spikegpt import SpikeGPT
    spikelm.save(SpikeGPT(SpikeGPTConfig(vocab_size=257, n_layer=1, n_embd=32, ctx_len=64, tokenizer="bytes")), tmp_path / "sg")
    assert main(["finetune", str(tmp_path / "sg"), "--preset", "SpikeRWKV-4L", "--out", str(tmp_path / "ft")]) == 2
    assert not (tmp_path / "ft").exists()
