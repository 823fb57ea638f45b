"""FSDP2 (``distributed: fsdp``) with two gloo processes on the CPU: sharded checkpoints, an exact
resume, a whole final/ that spikelm.load reads, the same result as DDP within float tolerance,
resumes across the two kinds of checkpoint, and half the training state per process."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
import yaml

import spikelm
from spikelm.config import ConfigError
from spikelm.runargs import TrainArgs
from train_helpers import child_env, same_weights, tiny_args

pytest_plugins = ["train_helpers"]  # its fixtures (a conftest.py here would shadow tests/conftest.py)

MODEL = {"kind": "rwkv6", "n_layer": 2, "n_embd": 32, "head_size": 16}
KW = dict(model=MODEL, grad_accum=2, batch_size=4, max_steps=4, save_every=2, keep_checkpoints=0, eval_every=0)


def _launch(cfg, data_root, *flags, nproc=2):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
           "-m", "spikelm", "train", str(cfg), "--no-progress", *flags]
    if nproc == 1:  # one plain process, no process group
        cmd = [sys.executable, "-m", "spikelm", "train", str(cfg), "--no-progress", *flags]
    out = subprocess.run(cmd, env=child_env(data_root[1]), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    return out


def _close(a, b, tol=2e-5):
    sa, sb = spikelm.load(a).state_dict(), spikelm.load(b).state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=tol, atol=tol, msg=k)


@pytest.fixture(scope="module")
def runs(data_root, tmp_path_factory):
    """Five launches: FSDP, FSDP resumed from its step 2, DDP, FSDP resumed from DDP's step 2, and
    one plain process resumed from FSDP's step 2."""
    tmp = tmp_path_factory.mktemp("fsdp")
    cfg = tmp / "c.yaml"
    cfg.write_text(yaml.safe_dump(tiny_args(data_root[0], tmp / "fsdp", distributed="fsdp", **KW).to_dict()))
    out = {"tmp": tmp, "fsdp": _launch(cfg, data_root).stderr}
    step2 = tmp / "fsdp" / "checkpoints" / "step_000002"
    _launch(cfg, data_root, "--out-dir", str(tmp / "resumed"), "--resume-from", str(step2))
    _launch(cfg, data_root, "--out-dir", str(tmp / "ddp"), "--distributed", "ddp")
    _launch(cfg, data_root, "--out-dir", str(tmp / "from-ddp"), "--resume-from",
            str(tmp / "ddp" / "checkpoints" / "step_000002"))
    _launch(cfg, data_root, "--out-dir", str(tmp / "single"), "--resume-from", str(step2), nproc=1)
    return out




@pytest.mark.slow
def test_fsdp_checkpoints_are_sharded_and_final_is_whole(runs):
    tmp = runs["tmp"]
    assert "x 2 sharded (FSDP2)" in runs["fsdp"]
    ckpt = tmp / "fsdp" / "checkpoints" / "step_000002"
    names = {p.name for p in ckpt.iterdir()}
    assert {".metadata", "__0_0.distcp", "__1_0.distcp", "config.json", "trainer_state.json",
            "rng_rank0.pt", "rng_rank1.pt"} <= names, names
    assert "model.safetensors" not in names and "optimizer.pt" not in names
    assert not list((tmp / "fsdp" / "checkpoints").glob(".*tmp*"))
    final = spikelm.load(tmp / "fsdp" / "final")
    # a sharded checkpoint loads whole too, in one process
    mid = spikelm.load(ckpt)
    assert mid.state_dict().keys() == final.state_dict().keys()
    assert any(not torch.equal(mid.state_dict()[k], final.state_dict()[k]) for k in final.state_dict())


@pytest.mark.slow
def test_fsdp_resume_is_exact(runs):
    tmp = runs["tmp"]
    same_weights(tmp / "fsdp" / "final", tmp / "resumed" / "final")
    rows = lambda d: [(r["step"], r["loss"]) for r in map(json.loads, (d / "log.jsonl").read_text().splitlines())]  # noqa: E731
    assert rows(tmp / "resumed")[-2:] == rows(tmp / "fsdp")[-2:]


@pytest.mark.slow
def test_fsdp_equals_ddp_within_float_tolerance(runs):
    tmp = runs["tmp"]
    _close(tmp / "fsdp" / "final", tmp / "ddp" / "final")
    a, b = (json.loads((tmp / d / "summary.json").read_text()) for d in ("fsdp", "ddp"))
    assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-5)


@pytest.mark.slow
def test_resumes_across_checkpoint_kinds(runs):
    """A DDP checkpoint into an FSDP run, an FSDP checkpoint into one plain process: each ends where
    the uninterrupted runs do (float tolerance: the reductions differ)."""
    tmp = runs["tmp"]
    _close(tmp / "from-ddp" / "final", tmp / "fsdp" / "final")
    _close(tmp / "single" / "final", tmp / "ddp" / "final")


@pytest.mark.slow
def test_fsdp_holds_half_the_training_state_per_process(runs):
    tmp = runs["tmp"]
    mem = {d: json.loads((tmp / d / "summary.json").read_text())["memory_bytes_per_process"] for d in ("fsdp", "ddp")}
    assert mem["fsdp"]["mode"] == "fsdp" and mem["ddp"]["mode"] == "ddp"
    for part in ("params", "grads", "optimizer"):
        assert 0 < mem["fsdp"][part] <= 0.6 * mem["ddp"][part], (part, mem)


def test_distributed_settings_are_checked():
    with pytest.raises(ConfigError, match="distributed"):
        TrainArgs(distributed="zero2")
    with pytest.raises(ConfigError, match="fsdp_param_dtype"):
        TrainArgs(fsdp_param_dtype="int8")
    assert TrainArgs().distributed == "ddp" and TrainArgs().fsdp_param_dtype == "fp32"


def test_fsdp_in_one_process_is_plain_training(tiny_data, tmp_path):
    from spikelm.train import train

    res = train(tiny_args(tiny_data, tmp_path / "run", distributed="fsdp", max_steps=2, eval_every=0), progress=False)
    assert res.steps == 2 and res.memory["mode"] == "single" and res.memory["optimizer"] >= 2 * res.memory["params"]
    assert (tmp_path / "run" / "final" / "model.safetensors").is_file()
