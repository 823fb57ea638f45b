"""Real processes: SIGINT/SIGTERM save a checkpoint and exit 130/143, SIGKILL at any moment (during a
step, half-way through a checkpoint, before `latest` moves) leaves a resumable run, and every resumed run
ends bitwise equal to an uninterrupted one, loss rows included. Two trainings on one folder never both run."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from spikelm.train import latest_checkpoint, train
from train_helpers import child_env, same_weights, tiny_args

pytest_plugins = ["train_helpers"]  # its fixtures (a conftest.py here would shadow tests/conftest.py)

pytestmark = pytest.mark.slow  # each starts Python processes that import torch: 10-30 s on 2 shared cores

HERE = Path(__file__).resolve().parent
# save_every 5 is not a multiple of log_every 3: the loss rows after a resume are checked too.
KW = dict(max_steps=30, save_every=5, log_every=3, eval_every=0, keep_checkpoints=2)


@pytest.fixture(scope="module")
def reference(data_root, tmp_path_factory):
    """The uninterrupted run every interrupted one must reproduce bit for bit."""
    import os

    os.environ["SPIKELM_CACHE"] = str(data_root[1])
    try:
        out = tmp_path_factory.mktemp("reference") / "run"
        result = train(tiny_args(data_root[0], out, **KW), progress=False)
    finally:
        os.environ.pop("SPIKELM_CACHE")
    return result


def _config(data_root, out: Path, tmp_path: Path) -> Path:
    cfg = tmp_path / f"{out.name}.yaml"
    cfg.write_text(yaml.safe_dump(tiny_args(data_root[0], out, **KW).to_dict()))
    return cfg


def _child(cfg: Path, mode: str, data_root, *flags: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(HERE / "train_child.py"), str(cfg), mode, *flags],
                            env=child_env(data_root[1]), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _resume_and_compare(data_root, out: Path, reference, monkeypatch) -> None:
    monkeypatch.setenv("SPIKELM_CACHE", str(data_root[1]))
    resumed = train(tiny_args(data_root[0], out, **KW), resume=True, progress=False)
    assert resumed.steps == reference.steps
    same_weights(reference.final_path, resumed.final_path)
    assert [(r["step"], r["loss"]) for r in resumed.history] == [(r["step"], r["loss"]) for r in reference.history]
    assert not list((out / "checkpoints").glob(".*tmp*"))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_saves_a_checkpoint_then_exits_143_or_130(sig, data_root, reference, tmp_path, monkeypatch):
    out = tmp_path / "run"
    proc = _child(_config(data_root, out, tmp_path), "slow", data_root)
    deadline = time.monotonic() + 120
    while not ((out / "log.jsonl").is_file() and len((out / "log.jsonl").read_text().splitlines()) >= 2):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.poll() is not None else "timeout"
        time.sleep(0.02)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, err[-2000:]
    assert "interrupted" in err and "Traceback" not in err
    step = int(latest_checkpoint(out).name[5:])
    assert 6 <= step < KW["max_steps"]  # a checkpoint of the step in progress (2 log rows = 6 steps were seen)
    state = json.loads((latest_checkpoint(out) / "trainer_state.json").read_text())
    assert state["step"] == step and state["val_loss"] is not None
    assert not (out / ".spikelm-train.lock").exists()
    _resume_and_compare(data_root, out, reference, monkeypatch)


@pytest.mark.parametrize("mode", ["kill-step:13", "kill-save:2", "kill-latest:2"])
def test_sigkill_leaves_a_resumable_run(mode, data_root, reference, tmp_path, monkeypatch):
    out = tmp_path / "run"
    proc = _child(_config(data_root, out, tmp_path), mode, data_root)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL, err[-2000:]
    expect = {"kill-step:13": "step_000010", "kill-save:2": "step_000005", "kill-latest:2": "step_000005"}[mode]
    assert latest_checkpoint(out).name == expect
    _resume_and_compare(data_root, out, reference, monkeypatch)


def test_two_trainings_on_one_folder_never_both_run(data_root, tmp_path):
    out = tmp_path / "run"
    cfg = _config(data_root, out, tmp_path)
    procs = [_child(cfg, "slow", data_root) for _ in range(2)]
    results = [p.communicate(timeout=180) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 2], [r[1][-1500:] for r in results]
    loser = results[[p.returncode for p in procs].index(2)][1]
    assert ("in use by another training (pid" in loser or "holds an earlier run" in loser) and "Traceback" not in loser
    steps = [json.loads(x)["step"] for x in (out / "log.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == KW["max_steps"]  # one run's rows, not two interleaved
