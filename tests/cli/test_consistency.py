"""One test per inconsistency of the old command line, each through ``spikelm.cli.main``."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from spikelm.checkpoints import save, save_official
from spikelm.cli import main
from spikelm.runargs import TrainArgs
from spikelm.models.spikegpt import SPIKEGPT_PRESETS, SpikeGPT, SpikeGPTConfig
from spikelm.progress import Progress
from spikelm.testing import make_rwkv6
from spikelm.train import train

TINY_MC = Path(__file__).resolve().parents[1] / "evaluate" / "data" / "tiny_mc.jsonl"
MODEL_COMMANDS = ["eval", "sweep", "energy", "convert", "generate", "nlu"]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SPIKELM_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def text(tmp_path):
    lines = [f"Line {i}: the quick brown fox jumps over {i % 7} lazy dogs." for i in range(400)]
    path = tmp_path / "my.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def ckpt(tmp_path):
    return save_official(make_rwkv6(), tmp_path / "a.pth")


@pytest.fixture
def spikegpt(tmp_path):
    cfg = SpikeGPTConfig(**{**SPIKEGPT_PRESETS["tiny"], "n_embd": 32})
    torch.manual_seed(0)
    return save(SpikeGPT(cfg).eval(), tmp_path / "sg")


def _args(name, ckpt, text, tmp_path):
    """The smallest argument list that gets each command to its model."""
    return {
        "eval": ["eval", str(ckpt), "--data", str(text), "--no-progress"],
        "sweep": ["sweep", str(ckpt), "--data", str(text), "--presets", "SpikeRWKV-4L", "--calib-data", str(text),
                  "--no-progress"],
        "energy": ["energy", str(ckpt), "--data", str(text), "--tokens", "16", "--no-progress"],
        "convert": ["convert", str(ckpt), "--out", str(tmp_path / "conv"), "--calib-data", str(text),
                    "--preset", "SpikeRWKV-4L", "--no-progress"],
        "generate": ["generate", str(ckpt), "--max-tokens", "4"],
        "nlu": ["nlu", str(ckpt), "--tasks", str(TINY_MC), "--limit", "1", "--shots", "0", "--no-progress"],
    }[name]


def _no_traceback(err):
    assert "Traceback" not in err and "AttributeError" not in err, err


# ------------------------------------------------------------------ eval / sweep read the test split
def test_eval_scores_the_test_split_or_the_whole_file(ckpt, text, cache, capsys):
    base = ["eval", str(ckpt), "--data", str(text), "--json", "--no-progress"]
    assert main(base + ["--split", "test"]) == 0
    test = json.loads(capsys.readouterr().out)
    assert "test split" in test["data"]
    size = text.stat().st_size
    assert 0 < test["tokens"] < size / 2
    assert main(base + ["--whole-file"]) == 0
    out = capsys.readouterr()
    _no_traceback(out.err)
    whole = json.loads(out.out)
    assert "test split" not in whole["data"]
    assert whole["tokens"] != test["tokens"] and whole["tokens"] >= size - 1


def test_sweep_reports_the_test_split(ckpt, text, cache, capsys):
    assert main(["sweep", str(ckpt), "--data", str(text), "--presets", "SpikeRWKV-4L", "--grid-T", "1", "--grid-l", "4",
                 "--calib-data", str(text), "--no-progress"]) == 0
    out = capsys.readouterr()
    _no_traceback(out.err)
    assert "test split" in out.out.splitlines()[0], out.out


# ------------------------------------------------------------------ an unavailable device is a named error
@pytest.mark.parametrize("device", ["cuda", "tpu"])
@pytest.mark.parametrize("name", MODEL_COMMANDS)
def test_unavailable_device_is_one_error_line(name, device, ckpt, text, tmp_path, cache, capsys):
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    assert main(_args(name, ckpt, text, tmp_path) + ["--device", device]) == 2
    err = capsys.readouterr().err
    _no_traceback(err)
    assert "--device" in err, err


# ------------------------------------------------------------------ a SpikeGPT is not an RWKV-6
@pytest.mark.parametrize("argv", [
    ["convert", "{ck}", "--out", "{tmp}/conv", "--calib-data", "{txt}", "--preset", "SpikeRWKV-4L", "--no-progress"],
    ["sweep", "{ck}", "--data", "{txt}", "--presets", "SpikeRWKV-4L", "--calib-data", "{txt}", "--no-progress"],
    ["nlu", "{ck}", "--tasks", str(TINY_MC), "--limit", "1", "--shots", "0", "--encoding", "SpikeRWKV-4L",
     "--calib-data", "{txt}", "--no-progress"],
    ["generate", "{ck}", "--max-tokens", "4", "--encoding", "SpikeRWKV-4L", "--calib-data", "{txt}"],
], ids=lambda a: a[0])
def test_converting_a_spikegpt_names_rwkv6(argv, spikegpt, text, tmp_path, cache, capsys):
    argv = [a.format(ck=spikegpt, tmp=tmp_path, txt=text) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    _no_traceback(err)
    assert "RWKV-6" in err, err


# ------------------------------------------------------------------ every progress-drawing command takes --no-progress
def test_nlu_accepts_no_progress(ckpt, cache, capsys):
    assert main(["nlu", str(ckpt), "--tasks", str(TINY_MC), "--limit", "1", "--shots", "0", "--no-progress",
                 "--json"]) == 0
    _no_traceback(capsys.readouterr().err)


# ------------------------------------------------------------------ --version, and train's summary printed once
def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code in (0, None)
    assert capsys.readouterr().out.startswith("spikelm ")


TINY_MODEL = {"kind": "rwkv6", "n_layer": 1, "n_embd": 32, "head_size": 16}


def _train_text(n_sentences=600, seed=0):
    rng = np.random.default_rng(seed)
    subj, verb, obj = ["the cat", "a dog", "we"], ["sees", "likes", "finds"], ["the ball", "a house", "the river"]
    return "".join(f"{subj[rng.integers(3)]} {verb[rng.integers(3)]} {obj[rng.integers(3)]}."
                   + ("\n" if i % 6 == 5 else " ") for i in range(n_sentences))


def _tiny_args(tmp_path, **kw):
    path = tmp_path / "tiny.txt"
    path.write_text(_train_text())
    d = dict(model=dict(TINY_MODEL), data=f"text:{path}", ctx_len=16, batch_size=4, max_steps=3, warmup_steps=1,
             lr=3e-3, min_lr=3e-4, eval_every=0, eval_batches=1, log_every=1, device="cpu", precision="fp32",
             out_dir=str(tmp_path / "run"))
    d.update(kw)
    return TrainArgs.from_dict(d)


def test_train_prints_its_summary_once(tmp_path, cache, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(_tiny_args(tmp_path).to_dict()))
    assert main(["train", str(cfg), "--no-progress"]) == 0
    out = capsys.readouterr()
    _no_traceback(out.err)
    assert sum(" steps, " in line for line in out.out.splitlines()) == 1, out.out


def test_time_budgeted_training_reports_seconds(tmp_path, cache):
    events: list[Progress] = []
    train(_tiny_args(tmp_path, max_steps=100000, max_minutes=0.02), progress=events.append)
    ticks = [e for e in events if e.desc == "train"]
    assert ticks, sorted({e.desc for e in events})
    assert all(e.unit == "s" for e in ticks), {e.unit for e in ticks}
    assert all(e.total == pytest.approx(0.02 * 60) for e in ticks), {e.total for e in ticks}


# ------------------------------------------------------------------ the energy header names the method once
def test_energy_header_does_not_repeat_the_method(ckpt, text, cache, capsys):
    assert main(["energy", str(ckpt), "--preset", "SpikeRWKV-4L", "--whole-file", "--data", str(text),
                 "--tokens", "64", "--calib-data", str(text), "--no-progress"]) == 0
    out = capsys.readouterr()
    _no_traceback(out.err)
    assert "T=1 l=4 T=1 l=4" not in out.out, out.out
    for line in out.out.splitlines():
        assert line.count("T=1 l=4") <= 1 and line.count("SpikeRWKV-4L T=1") <= 1, line
    assert "SpikeRWKV-4L T=1 l=4" in out.out  # the method is named, once


def test_the_program_returns_large_frees_to_the_os():
    """``python -m spikelm`` fixes glibc's mmap threshold (release_large_frees): an 8 MiB block
    freed after a 16 MiB one leaves the resident set; by glibc's default it stays (the threshold
    has risen to 16 MiB and the block came from the heap). The program still runs."""
    import subprocess
    import sys

    if not sys.platform.startswith("linux"):
        pytest.skip("glibc only")
    code = ("import sys, torch; from spikelm.cli import release_large_frees\n"
            "ok = release_large_frees() if sys.argv[1] == 'fix' else True\n"
            "rss = lambda: int([l for l in open('/proc/self/status') if l.startswith('VmRSS')][0].split()[1])\n"
            "t = torch.ones(4 << 20); del t\n"
            "base = rss(); t = torch.ones(2 << 20); del t\n"
            "print(ok, rss() - base)")
    kept = {}
    for mode in ("fix", "default"):
        out = subprocess.run([sys.executable, "-c", code, mode], capture_output=True, text=True, timeout=120)
        ok, kib = out.stdout.split()
        assert ok == "True", out.stderr
        kept[mode] = int(kib)
    assert kept["fix"] < 2048 and kept["default"] > 6144, kept  # KiB still resident after the free
    done = subprocess.run([sys.executable, "-m", "spikelm", "--version"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.startswith("spikelm ")
