"""Training: config validation, schedule, exact resume, crash-safe checkpoints, NaN stop, DDP == 1 process,
and a tiny RWKV-6 that learns the embedded corpus (validation loss well below its unigram entropy)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import spikelm
from spikelm.cli import main
from spikelm.config import ConfigError
from spikelm.runargs import TrainArgs
from spikelm.configfile import load_train_args
from spikelm.train import TrainingDiverged, latest_checkpoint, lr_at, param_groups, train
from spikelm.train.loop import _build_model

REPO = Path(__file__).resolve().parents[2]
TINY_MODEL = {"kind": "rwkv6", "n_layer": 1, "n_embd": 32, "head_size": 16}


def _text(n_sentences: int = 1500, seed: int = 0) -> str:
    """Deterministic English-like text: enough structure to learn, small enough to prepare instantly."""
    rng = np.random.default_rng(seed)
    subj = ["the cat", "a dog", "my friend", "the old man", "she", "we", "the teacher", "a bird"]
    verb = ["sees", "likes", "finds", "carries", "paints", "watches", "follows", "remembers"]
    obj = ["the red ball", "a small house", "the river", "an apple", "the long road", "a green tree"]
    end = [".", " today.", " again.", " in the morning.", " at night."]
    out = []
    for i in range(n_sentences):
        s = f"{subj[rng.integers(len(subj))]} {verb[rng.integers(len(verb))]} {obj[rng.integers(len(obj))]}{end[rng.integers(len(end))]}"
        out.append(s[0].upper() + s[1:] + ("\n" if i % 6 == 5 else " "))
    return "".join(out)


@pytest.fixture
def tiny_data(tmp_path_factory, monkeypatch):
    """A small text corpus in a private cache; returns the ``data`` source string."""
    root = tmp_path_factory.getbasetemp() / "train-data"
    root.mkdir(exist_ok=True)
    path = root / "tiny.txt"
    if not path.exists():
        path.write_text(_text())
    monkeypatch.setenv("SPIKELM_CACHE", str(root / "cache"))
    return f"text:{path}"


def tiny_args(data: str, out_dir: Path, **kw) -> TrainArgs:
    d = dict(model=dict(TINY_MODEL), data=data, ctx_len=16, batch_size=4, max_steps=8, warmup_steps=2, lr=3e-3,
             min_lr=3e-4, eval_every=4, eval_batches=1, log_every=1, device="cpu", precision="fp32", out_dir=str(out_dir))
    d.update(kw)
    return TrainArgs.from_dict(d)


def losses(result) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in result.history}


# ---------------------------------------------------------------------------- configuration
def test_bad_keys_and_values_name_the_key(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"model": dict(TINY_MODEL), "max_steps": 3}))
    assert load_train_args(cfg, {"model.n_layer": "4", "lr": "2e-3", "betas": "0.9,0.95"}).model["n_layer"] == 4
    cases = {
        "lrr": ({"lrr": "1"}, "lrr"),
        "lr": ({"lr": "fast"}, "lr"),
        "lr<0": ({"lr": "-1"}, "lr"),
        "min_lr": ({"min_lr": "1"}, "min_lr"),
        "precision": ({"precision": "fp8"}, "precision"),
        "batch": ({"batch_size": "6", "grad_accum": "4"}, "batch_size"),
        "model.n_layer": ({"model.n_layer": "0"}, "model.n_layer"),
        "model.key": ({"model.n_layers": "2"}, "n_layers"),
        "model.tokenizer": ({"model.tokenizer": "world"}, "model.tokenizer"),
        "nested": ({"optim.lr": "1"}, "optim.lr"),
        "device": ({"device": "tpu"}, "device"),
    }
    for name, (overrides, key) in cases.items():
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            load_train_args(cfg, overrides)
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {kind: rwkv6}\nwarmup: 10\n")
    with pytest.raises(ConfigError, match="warmup"):
        load_train_args(bad)


def test_cli_reports_bad_key(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"model": dict(TINY_MODEL)}))
    assert main(["train", str(cfg), "--no-progress", "--eval-evry", "3"]) == 2
    assert "eval_evry" in capsys.readouterr().err


def test_help_lists_every_key():
    from spikelm.cli.parser import build_parser
    from spikelm.cli.run import cmd_train as cli_train

    text = build_parser("train", cli_train)[0].format_help()
    for key in TrainArgs.fields():
        assert key in text, key
    assert "--resume" in text and "--progress" in text


def test_lr_schedule():
    a = TrainArgs(lr=1e-3, min_lr=1e-4, warmup_steps=10, max_steps=110)
    lrs = [lr_at(s, a) for s in range(110)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)  # linear warm-up
    assert all(x > y for x, y in zip(lrs[10:-1], lrs[11:]))  # cosine: strictly decreasing
    assert lrs[-1] == pytest.approx(1e-4) and lrs[60] == pytest.approx(5.5e-4, rel=0.02)  # min_lr at the end, midpoint halfway
    # a token budget replaces max_steps: ceil(1000 / (4 x 16)) steps
    assert TrainArgs(max_tokens=1000, batch_size=4, ctx_len=16).total_steps == 16


def test_no_weight_decay_on_gains_time_params_and_embeddings():
    model = _build_model(TrainArgs(model=dict(TINY_MODEL)), 257)
    decay, no_decay = param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    dec = {names[id(p)] for p in decay["params"]}
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert {"head.weight", "blocks.0.att.key.weight", "blocks.0.ffn.value.weight"} <= dec
    assert not any(n.rsplit(".", 1)[-1].startswith("time_") or "ln" in n or n == "emb.weight" for n in dec)
    assert len(dec) + len(no_decay["params"]) == len(names)


# ---------------------------------------------------------------------------- runs
def test_cli_train_writes_logs_and_a_loadable_model(tiny_data, tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(tiny_args(tiny_data, tmp_path / "run").to_dict()))
    assert main(["train", str(cfg), "--no-progress", "--max-steps", "3", "--model.n_embd", "16", "--eval-every", "0"]) == 0
    assert "validation loss" in capsys.readouterr().out
    run = tmp_path / "run"
    rows = (run / "log.csv").read_text().splitlines()
    assert rows[0] == "step,tokens,loss,val_loss,lr,tokens_per_s,elapsed_s" and len(rows) == 4
    jl = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in jl] == [1, 2, 3] and jl[-1]["tokens"] == 3 * 4 * 16 and jl[-1]["val_loss"] > 0
    model = spikelm.load(run / "final")
    assert model.cfg.n_embd == 16 and model.cfg.vocab_size == 257
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 3 and summary["val_loss"] == pytest.approx(jl[-1]["val_loss"])
    # a second run into the same folder must not overwrite it silently
    assert main(["train", str(cfg), "--no-progress", "--max-steps", "3"]) == 2
    assert "--resume" in capsys.readouterr().err


def test_grad_accumulation_matches_one_big_batch(tiny_data, tmp_path):
    one = train(tiny_args(tiny_data, tmp_path / "a", max_steps=4), progress=False)
    acc = train(tiny_args(tiny_data, tmp_path / "b", max_steps=4, grad_accum=2), progress=False)
    for s, v in losses(one).items():
        assert losses(acc)[s] == pytest.approx(v, rel=1e-5)


def test_interrupted_then_resumed_run_equals_uninterrupted(tiny_data, tmp_path):
    kw = dict(max_steps=8, save_every=2, keep_checkpoints=2)
    full = train(tiny_args(tiny_data, tmp_path / "full", **kw), progress=False)
    assert sorted(p.name for p in (tmp_path / "full" / "checkpoints").glob("step_*")) == ["step_000006", "step_000008"]

    args = tiny_args(tiny_data, tmp_path / "cut", **kw)
    model = _build_model(args, 257)
    calls = {"n": 0}
    forward = model.forward

    def crash_in_step_6(idx, state=None, **k):
        if model.training:
            calls["n"] += 1
            if calls["n"] == 6:
                raise KeyboardInterrupt  # as if the job were killed during step 6
        return forward(idx, state, **k)

    model.forward = crash_in_step_6
    with pytest.raises(KeyboardInterrupt):
        train(args, model=model, progress=False)
    assert latest_checkpoint(tmp_path / "cut").name == "step_000004"
    resumed = train(args, resume=True, progress=False)

    assert [r["step"] for r in resumed.history] == list(range(1, 9))
    for s in range(1, 9):
        assert resumed.history[s - 1]["loss"] == full.history[s - 1]["loss"], s  # bitwise
    assert resumed.val_loss == full.val_loss
    a, b = spikelm.load(full.final_path).state_dict(), spikelm.load(resumed.final_path).state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_crash_during_save_keeps_the_previous_checkpoint(tiny_data, tmp_path, monkeypatch):
    import spikelm.train.checkpointing as T

    real = T._write_training_state
    saves = {"n": 0}

    def write_then_fail(folder, *a, **k):
        saves["n"] += 1
        if saves["n"] == 2:
            (folder / "optimizer.pt").write_bytes(b"half a file")
            raise OSError("No space left on device (simulated)")
        return real(folder, *a, **k)

    monkeypatch.setattr(T, "_write_training_state", write_then_fail)
    args = tiny_args(tiny_data, tmp_path / "run", max_steps=6, save_every=2)
    with pytest.raises(OSError, match="simulated"):
        train(args, progress=False)
    ckpts = tmp_path / "run" / "checkpoints"
    assert (ckpts / "latest").read_text().strip() == "step_000002"
    assert sorted(p.name for p in ckpts.iterdir()) == ["latest", "step_000002"]  # no half-written folder
    assert spikelm.load(ckpts / "step_000002").cfg.n_layer == 1
    # a save killed outright (no clean-up) leaves a temporary folder: ignored, then removed on resume
    (ckpts / ".step_000004.tmp-12345").mkdir()
    (ckpts / ".step_000004.tmp-12345" / "model.safetensors").write_bytes(b"junk")
    monkeypatch.setattr(T, "_write_training_state", real)
    assert latest_checkpoint(tmp_path / "run").name == "step_000002"
    result = train(args, resume=True, progress=False)
    assert result.steps == 6 and not list(ckpts.glob(".*tmp*"))


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tiny_data, tmp_path):
    args = tiny_args(tiny_data, tmp_path / "run", max_steps=8, save_every=2)
    model = _build_model(args, 257)
    forward, calls = model.forward, {"n": 0}

    def nan_at_step_5(idx, state=None, **k):
        logits, state = forward(idx, state, **k)
        if model.training:
            calls["n"] += 1
            if calls["n"] == 5:
                logits = logits * float("nan")
        return logits, state

    model.forward = nan_at_step_5
    with pytest.raises(TrainingDiverged, match=r"loss is nan at step 5.*step_000004"):
        train(args, model=model, progress=False)
    assert latest_checkpoint(tmp_path / "run").name == "step_000004"
    assert not (tmp_path / "run" / "final").exists()


def test_time_budget_stops_gracefully(tiny_data, tmp_path):
    args = tiny_args(tiny_data, tmp_path / "run", max_steps=1000, max_minutes=1e-6)
    result = train(args, progress=False)
    # A 60-microsecond budget: the first step is foreseen to end it, or overruns it unforeseen and
    # the next one is the last; either way the last step runs at min_lr (below the warm-up's rate).
    assert result.stopped_by == "max_minutes" and result.steps in (1, 2)
    assert result.history[-1]["lr"] == args.min_lr
    assert result.val_loss is not None and (result.final_path / "model.safetensors").is_file()


def test_two_processes_match_one(tiny_data, tmp_path):
    """torchrun with 2 CPU processes (gloo): same global batch, same losses as one process."""
    from spikelm.data.build import prepare

    prepare(tiny_data)  # once, before the two ranks start
    args = tiny_args(tiny_data, tmp_path / "ddp", max_steps=5, eval_every=0)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(args.to_dict()))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO / "src"))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "spikelm", "train", str(cfg), "--no-progress"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "x 2" in proc.stderr  # the log line names 2 processes
    ddp = [json.loads(x) for x in (tmp_path / "ddp" / "log.jsonl").read_text().splitlines()]
    single = train(args.replace(out_dir=str(tmp_path / "one")), progress=False)
    assert [r["step"] for r in ddp] == [r["step"] for r in single.history] == [1, 2, 3, 4, 5]
    for r, s in zip(ddp, single.history):
        assert r["loss"] == pytest.approx(s["loss"], rel=1e-5), r["step"]
    assert ddp[-1]["val_loss"] == pytest.approx(single.val_loss, rel=1e-5)


# ---------------------------------------------------------------------------- it learns
def test_tiny_rwkv6_learns_the_embedded_corpus(tmp_path, capsys):
    """Validation loss well below the unigram entropy of the corpus: the model uses context."""
    from spikelm.data.build import prepare

    corpus = prepare("default")  # `make test` prepares it first; otherwise fetched once into the cache
    args = load_train_args(REPO / "configs" / "rwkv6-tiny.yaml", {"out_dir": str(tmp_path / "run"), "device": "cpu"})
    result = train(args, progress=False)
    unigram = corpus.meta["unigram_entropy_bits_per_token"]
    with capsys.disabled():
        print(f"\n  tiny RWKV-6, {result.steps} steps ({result.elapsed_s:.0f} s): validation {result.val_bits:.3f} bits/token, "
              f"unigram entropy of the corpus {unigram:.3f} bits/token")
    assert math.isfinite(result.val_bits)
    assert result.val_bits < unigram - 0.75


@pytest.mark.parametrize("config", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_is_valid(config):
    """Each YAML in configs/ parses into TrainArgs and its model config validates (the model is
    built only for small shapes: the GPU configs would take seconds and gigabytes here)."""
    from spikelm.checkpoints import build_model

    args = load_train_args(config)
    cfg = dict(args.model)
    assert args.out_dir and cfg["kind"] in ("rwkv4", "rwkv6", "rwkv7", "spikegpt")
    # every shipped config checkpoints (--resume after a kill must not start from scratch), at least twice a run
    assert 0 < args.save_every <= args.total_steps // 2, args.save_every
    assert args.warmup_steps < args.total_steps
    if cfg.get("n_layer", 99) * cfg.get("n_embd", 9999) ** 2 <= 4 * 256**2 * 6:
        cfg.setdefault("vocab_size", 257)
        assert build_model(cfg) is not None
