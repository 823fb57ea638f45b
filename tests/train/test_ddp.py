"""Two gloo processes (torchrun on CPU): a trained initial state (has_time_state), bf16 autocast,
gradient accumulation, per-rank RNG states, and an exact resume; decisions about out_dir are made
once and raised on every rank."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import yaml

from train_helpers import child_env, same_weights, tiny_args

pytest_plugins = ["train_helpers"]  # its fixtures (a conftest.py here would shadow tests/conftest.py)

pytestmark = pytest.mark.slow  # three torchrun launches: about a minute on 2 shared cores


def _torchrun(cfg, data_root, *flags):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "spikelm", "train", str(cfg), "--no-progress", *flags]
    return subprocess.run(cmd, env=child_env(data_root[1]), capture_output=True, text=True, timeout=300)


def test_two_processes_time_state_bf16_grad_accum_exact_resume(data_root, tmp_path):
    model = {"kind": "rwkv6", "n_layer": 1, "n_embd": 32, "head_size": 16, "has_time_state": True}
    args = tiny_args(data_root[0], tmp_path / "a", model=model, precision="bf16", grad_accum=2, batch_size=4,
                     max_steps=4, save_every=2, keep_checkpoints=0, eval_every=0)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(args.to_dict()))
    full = _torchrun(cfg, data_root)
    assert full.returncode == 0, full.stderr[-3000:]
    assert "x 2, bfloat16" in full.stderr and "accumulation 2" in full.stderr
    ckpt = tmp_path / "a" / "checkpoints" / "step_000002"
    rng = [torch.load(ckpt / f"rng_rank{r}.pt", weights_only=True) for r in range(2)]
    assert not torch.equal(rng[0]["torch"], rng[1]["torch"])  # seeds differ per rank (dropout masks differ)
    import spikelm

    final = spikelm.load(tmp_path / "a" / "final").state_dict()
    assert final["blocks.0.att.time_state"].abs().sum() > 0  # it trained: DDP gave it gradients

    # resume from step 2 into a new folder: every rank restores its own RNG state; bitwise the same end
    resumed = _torchrun(cfg, data_root, "--out-dir", str(tmp_path / "b"), "--resume-from", str(ckpt))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    same_weights(tmp_path / "a" / "final", tmp_path / "b" / "final")

    # a second run into the first folder: the same named error on both ranks, no reset connection
    again = _torchrun(cfg, data_root)
    assert again.returncode != 0
    assert again.stderr.count("holds an earlier run; pass --resume") == 2, again.stderr[-3000:]
    assert "Connection reset" not in again.stderr and os.path.isdir(tmp_path / "a" / "final")
