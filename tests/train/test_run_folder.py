"""The run folder and the loop's bookkeeping: the lock on out_dir, umask permissions, the warm-up
warning, the validation micro-batch, per-rank RNG states, cuda:N under torchrun, exact loss rows
after a resume."""

from __future__ import annotations

import json
import logging
import os
import socket
import stat
import subprocess
import sys

import pytest
import torch

import spikelm.train.checkpointing as C
from spikelm.config import ConfigError
from spikelm.train import RunLocked, latest_checkpoint, train
from spikelm.train.distributed import train_device
from spikelm.train.loop import _build_model, make_optimizer
from train_helpers import tiny_args

pytest_plugins = ["train_helpers"]  # its fixtures (a conftest.py here would shadow tests/conftest.py)


# ---------------------------------------------------------------------------- the lock
def test_lock_refuses_a_second_holder_and_takes_over_a_stale_one(tmp_path, caplog):
    with C.RunLock(tmp_path):
        info = json.loads((tmp_path / C.LOCK).read_text())
        assert info["pid"] == os.getpid() and info["host"] == socket.gethostname()
        with pytest.raises(RunLocked, match=rf"in use by another training \(pid {os.getpid()} on "):
            C.RunLock(tmp_path).acquire()
    assert not (tmp_path / C.LOCK).exists()  # released
    # a lock file left by a run that died (SIGKILL leaves it behind): its pid no longer exists
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / C.LOCK).write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "started": "then"}))
    with caplog.at_level(logging.WARNING, "spikelm.train"), C.RunLock(tmp_path):
        assert json.loads((tmp_path / C.LOCK).read_text())["pid"] == os.getpid()
    assert f"stale lock of pid {dead.pid}" in caplog.text


def test_a_live_run_refuses_a_second_training_and_a_resume(tiny_data, tmp_path):
    """Another process holds the lock (as a running training does): both a new run and --resume refuse."""
    out = tmp_path / "run"
    out.mkdir()
    # The protocol of RunLock in a few lines of plain Python (a child importing torch would take seconds).
    hold = (f"import fcntl, json, os, socket, time; fd = os.open({str(out / C.LOCK)!r}, os.O_RDWR | os.O_CREAT); "
            "fcntl.flock(fd, fcntl.LOCK_EX); os.write(fd, json.dumps({'pid': os.getpid(), 'host': socket.gethostname()}).encode()); "
            "print('held', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", hold], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        for resume in (False, True):
            with pytest.raises(RunLocked, match=rf"pid {holder.pid} on {socket.gethostname()}"):
                train(tiny_args(tiny_data, out), resume=resume, progress=False)
        assert not (out / "log.jsonl").exists()
    finally:
        holder.kill()
        holder.wait()
    assert train(tiny_args(tiny_data, out, max_steps=1), progress=False).steps == 1  # stale now: taken over


# ---------------------------------------------------------------------------- the folder, the warm-up
def test_folders_honour_the_umask_and_warmup_past_the_end_warns(tiny_data, tmp_path, caplog):
    old = os.umask(0o022)
    try:
        with caplog.at_level(logging.WARNING, "spikelm.train"):
            train(tiny_args(tiny_data, tmp_path / "run", max_steps=2, warmup_steps=2, save_every=1, eval_every=0), progress=False)
    finally:
        os.umask(old)
    run = tmp_path / "run"
    for d in (run, run / "checkpoints", run / "checkpoints" / "step_000002", run / "final"):
        assert stat.S_IMODE(d.stat().st_mode) == 0o755, d
    for f in (run / "log.csv", run / "checkpoints" / "step_000002" / "optimizer.pt", run / "final" / "model.safetensors"):
        assert stat.S_IMODE(f.stat().st_mode) == 0o644, f
    assert "warmup_steps=2 >= the run's 2 steps" in caplog.text


def test_no_warmup_warning_for_a_normal_run(tiny_data, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, "spikelm.train"):
        train(tiny_args(tiny_data, tmp_path / "run", max_steps=3, warmup_steps=1, eval_every=0), progress=False)
    assert "warmup_steps" not in caplog.text


# ---------------------------------------------------------------------------- validation micro-batch
def test_validation_micro_batch_is_the_training_one(tiny_data, tmp_path):
    args = tiny_args(tiny_data, tmp_path / "run", max_steps=1, batch_size=8, grad_accum=4, eval_batches=2)
    model = _build_model(args, 257)
    forward, sizes = model.forward, {True: set(), False: set()}

    def spy(idx, state=None, **k):
        sizes[model.training].add(idx.shape[0])
        return forward(idx, state, **k)

    model.forward = spy
    train(args, model=model, progress=False)
    assert sizes == {True: {2}, False: {2}}  # 8 // 1 process // 4 micro-steps, for both


# ---------------------------------------------------------------------------- devices and RNG per rank
def test_cuda_n_under_torchrun_is_a_named_error():
    with pytest.raises(ConfigError, match=r"device: cuda:1 puts all 2 torchrun processes on one GPU; use device: cuda"):
        train_device("cuda:1", 0, 2)
    assert train_device("cpu", 1, 2) == torch.device("cpu")


def test_each_rank_restores_its_own_rng_state_and_a_missing_rank_does_not_crash(tiny_data, tmp_path, caplog):
    args = tiny_args(tiny_data, tmp_path / "run")
    model = _build_model(args, 257)
    opt = make_optimizer(model, args)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    states = []
    for rank in range(2):  # what two processes seeded seed + rank hold
        torch.manual_seed(100 + rank)
        states.append(C.rng_state(torch.device("cpu")))
    state = {"step": 3, "tokens": 0, "elapsed_s": 0.0, "sampler": {}, "val_loss": 5.0}
    folder = C.save_checkpoint(tmp_path / "run", 3, model, opt, scaler, state, args, states)
    assert sorted(p.name for p in folder.glob("rng_rank*.pt")) == ["rng_rank0.pt", "rng_rank1.pt"]
    for rank in range(2):
        torch.manual_seed(0)
        C.restore(folder, model, opt, scaler, torch.device("cpu"), rank=rank, seed=0)
        torch.manual_seed(100 + rank)
        expect = torch.rand(4)
        C.restore(folder, model, opt, scaler, torch.device("cpu"), rank=rank, seed=0)
        assert torch.equal(torch.rand(4), expect), rank
    # resumed by more processes than saved it (or with fewer GPUs visible): a warning, no IndexError
    with caplog.at_level(logging.WARNING, "spikelm.train"):
        C.restore(folder, model, opt, scaler, torch.device("cpu"), rank=2, seed=0)
    assert "no RNG state for rank 2" in caplog.text


# ---------------------------------------------------------------------------- the loss log across a resume
def test_loss_rows_are_exact_after_a_resume_off_the_log_grid(tiny_data, tmp_path):
    """save_every 3 is not a multiple of log_every 2: the row at step 4 averages steps 3 and 4 either way."""
    kw = dict(max_steps=8, save_every=3, log_every=2, eval_every=0, keep_checkpoints=0)
    full = train(tiny_args(tiny_data, tmp_path / "full", **kw), progress=False)
    args = tiny_args(tiny_data, tmp_path / "cut", **kw)
    model = _build_model(args, 257)
    forward, calls = model.forward, {"n": 0}

    def crash_in_step_5(idx, state=None, **k):
        if model.training:
            calls["n"] += 1
            if calls["n"] == 5:
                raise RuntimeError("killed (simulated)")
        return forward(idx, state, **k)

    model.forward = crash_in_step_5
    with pytest.raises(RuntimeError, match="simulated"):
        train(args, model=model, progress=False)
    assert latest_checkpoint(tmp_path / "cut").name == "step_000003"
    resumed = train(args, resume=True, progress=False)
    assert [(r["step"], r["loss"]) for r in resumed.history] == [(r["step"], r["loss"]) for r in full.history]
