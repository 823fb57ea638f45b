"""The divergence guard: NaN/inf and blow-ups of the validation loss stop a run (exit 2 from the CLI),
naming the last checkpoint that was healthy by its recorded validation loss; under-trained smoke runs pass;
--resume-from continues from any kept checkpoint."""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml

from spikelm.cli import main
from spikelm.errors import CheckpointError
from spikelm.train import TrainingDiverged, latest_checkpoint, train
from spikelm.train.checkpointing import RISE_MARGIN_NATS, UNIFORM_MARGIN_NATS, blow_up, diverged_message
from spikelm.train.loop import _build_model

from train_helpers import same_weights, tiny_args

pytest_plugins = ["train_helpers"]  # its fixtures (a conftest.py here would shadow tests/conftest.py)


def test_blow_up_thresholds():
    lnv = math.log(257)
    assert blow_up(lnv, 257, None) is None  # a uniform guess: an initialised model, not a blow-up
    assert blow_up(lnv + 0.9 * UNIFORM_MARGIN_NATS, 257, None) is None  # an under-trained smoke run
    assert "ln V" in blow_up(lnv + 1.1 * UNIFORM_MARGIN_NATS, 257, None)
    assert "nan" in blow_up(float("nan"), 257, None) and blow_up(float("inf"), 257, 2.0) is not None
    assert blow_up(2.0 + 0.9 * RISE_MARGIN_NATS, 257, 2.0) is None
    assert "best" in blow_up(2.0 + 1.1 * RISE_MARGIN_NATS, 257, 2.0)


def _fake_checkpoint(root, step, val):
    d = root / "checkpoints" / f"step_{step:06d}"
    d.mkdir(parents=True)
    (d / "model.safetensors").write_bytes(b"x")
    (d / "trainer_state.json").write_text(json.dumps({"step": step, "val_loss": val, "best_val_loss": val}))


def test_message_names_the_last_healthy_checkpoint_and_says_why_none(tmp_path):
    assert "no checkpoint was saved (set save_every to keep one)" in diverged_message("x", 3, tmp_path, 257, 0)
    assert "no checkpoint was saved (save_every=10 was not reached)" in diverged_message("x", 3, tmp_path, 257, 10)
    assert "(save_every=10 came with the blow-up)" in diverged_message("x", 10, tmp_path, 257, 10)
    _fake_checkpoint(tmp_path, 2, 4.0)
    _fake_checkpoint(tmp_path, 4, 9.0)  # finite, but far above ln 257 = 5.55: not healthy by its record
    _fake_checkpoint(tmp_path, 6, None)  # no record: not known to be healthy
    msg = diverged_message("the training loss is nan", 7, tmp_path, 257, 2)
    assert "step_000002" in msg and "--resume-from 2" in msg and "step_000004" not in msg
    for d in (tmp_path / "checkpoints").iterdir():
        if d.name == "step_000002":
            (d / "trainer_state.json").write_text(json.dumps({"step": 2, "val_loss": float("nan")}).replace("NaN", "NaN"))
    assert "no kept checkpoint has a healthy recorded validation loss" in diverged_message("x", 7, tmp_path, 257, 2)


def test_every_checkpoint_records_its_validation_loss_and_smoke_runs_pass(tiny_data, tmp_path):
    # 3 steps: barely trained, validation loss near ln V; that is not a failure.
    result = train(tiny_args(tiny_data, tmp_path / "run", max_steps=3, save_every=1, keep_checkpoints=0, eval_every=0),
                   progress=False)
    assert result.val_loss is not None and result.val_loss > 3.0
    for step in (1, 2, 3):
        state = json.loads((tmp_path / "run" / "checkpoints" / f"step_{step:06d}" / "trainer_state.json").read_text())
        assert state["step"] == step and math.isfinite(state["val_loss"]) and state["best_val_loss"] <= state["val_loss"]


def test_nan_names_the_checkpoint_healthy_by_record_not_merely_finite(tiny_data, tmp_path):
    args = tiny_args(tiny_data, tmp_path / "run", max_steps=8, save_every=2, keep_checkpoints=0)
    model = _build_model(args, 257)
    forward, calls = model.forward, {"n": 0}

    def nan_at_step_7(idx, state=None, **k):
        logits, state = forward(idx, state, **k)
        if model.training:
            calls["n"] += 1
            if calls["n"] == 7:
                logits = logits * float("nan")
        return logits, state

    model.forward = nan_at_step_7
    # step_000006 is finite but made unhealthy by its record (as a blown-up run would leave it)
    real_save = __import__("spikelm.train.checkpointing", fromlist=["x"])._write_training_state

    def poison(folder, optimizer, scaler, state, *a):
        if state["step"] == 6:
            state = dict(state, val_loss=50.0)
        return real_save(folder, optimizer, scaler, state, *a)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("spikelm.train.checkpointing._write_training_state", poison)
        with pytest.raises(TrainingDiverged, match=r"training loss is nan at step 7.*step_000004.*--resume-from 4"):
            train(args, model=model, progress=False)
    assert latest_checkpoint(tmp_path / "run").name == "step_000006"


def _spikegpt_cfg(tmp_path, tiny_data, **kw):
    args = tiny_args(tiny_data, tmp_path / "run", model={"kind": "spikegpt", "n_layer": 1, "n_embd": 32, "ctx_len": 16},
                     **kw)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(args.to_dict()))
    return cfg


def test_spikegpt_at_lr_10_fails_instead_of_reporting_success(tiny_data, tmp_path, capsys):
    """SpikeGPT's spikes never produce NaN: at lr 10 its loss explodes to hundreds of nats while staying finite."""
    cfg = _spikegpt_cfg(tmp_path, tiny_data, lr=10.0, min_lr=1.0, max_steps=12, warmup_steps=2, eval_every=4, save_every=4)
    assert main(["train", str(cfg), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "validation loss" in err and ("ln V" in err or "best" in err) and "Traceback" not in err
    assert not (tmp_path / "run" / "final").exists()


def test_resume_from_an_earlier_checkpoint(tiny_data, tmp_path, capsys):
    args = tiny_args(tiny_data, tmp_path / "run", max_steps=8, save_every=2, keep_checkpoints=0)
    first = train(args, progress=False)
    (tmp_path / "first").mkdir()
    (tmp_path / "run" / "final").rename(tmp_path / "first" / "final")
    again = train(args, resume_from=4, progress=False)  # a step number ...
    same_weights(tmp_path / "first" / "final", again.final_path)
    assert [r["loss"] for r in again.history] == [r["loss"] for r in first.history]
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(args.to_dict()))
    # ... or a folder, through the command line
    assert main(["train", str(cfg), "--no-progress", "--resume-from", str(tmp_path / "run" / "checkpoints" / "step_000006")]) == 0
    same_weights(tmp_path / "first" / "final", tmp_path / "run" / "final")
    with pytest.raises(CheckpointError, match=r"--resume-from 5: .*step_000002, step_000004, step_000006, step_000008"):
        train(args, resume_from=5, progress=False)
    assert main(["train", str(cfg), "--no-progress", "--resume-from", "nope"]) == 2
    assert "--resume-from nope" in capsys.readouterr().err


def test_one_host_read_per_optimizer_step(tiny_data, tmp_path, monkeypatch):
    """The guard reads the loss and the gradient norm back in one transfer per step (a GPU stalls
    on every read): no ``item``/``float`` of a tensor inside ``_Run.step``, one ``tolist``. (AdamW's
    own reads of its step counters are left out: they are CPU tensors even when training on a GPU.)"""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    from spikelm.train import loop

    class Reads(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.scalar_reads, self.paused = 0, False

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if not self.paused:
                self.scalar_reads += func in (torch.ops.aten._local_scalar_dense.default, torch.ops.aten.item.default)
            return func(*args, **(kwargs or {}))

    seen, tolists = [], []
    step, tolist = loop._Run.step, torch.Tensor.tolist

    def counted_tolist(self, *a, **k):
        tolists[-1] += 1
        return tolist(self, *a, **k)

    def counted_step(self, lr):
        tolists.append(0)
        with Reads() as mode:
            opt_step = self.optimizer.step

            def paused_step(*a, **k):
                mode.paused = True
                try:
                    return opt_step(*a, **k)
                finally:
                    mode.paused = False

            self.optimizer.step = paused_step
            try:
                out = step(self, lr)
            finally:
                del self.optimizer.step
        seen.append(mode.scalar_reads)
        return out

    monkeypatch.setattr(loop._Run, "step", counted_step)
    monkeypatch.setattr(torch.Tensor, "tolist", counted_tolist)
    train(tiny_args(tiny_data, tmp_path / "run", max_steps=2, eval_every=0, grad_clip=1.0), progress=False)
    assert seen == [0, 0] and tolists == [1, 1]


class _InfGradAt:
    """Makes the training gradient of one weight infinite at one optimizer step while the loss stays
    finite: only the gradient-norm check can stop that step (the loss check cannot see it)."""

    def __init__(self, model, step: int):
        self.model, self.step, self.backwards = model, step, 0
        self.weight = model.head.weight
        self.before = None
        self.weight.register_hook(self)

    def __call__(self, grad):
        self.backwards += 1
        if self.backwards == self.step:
            self.before = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
            grad = grad.clone()
            grad[0, 0] = float("inf")
        return grad


@pytest.mark.parametrize("grad_clip", [1.0, 0.0])
def test_a_non_finite_gradient_norm_with_a_finite_loss_stops_the_run(tiny_data, tmp_path, grad_clip):
    """The gradient-norm half of the guard, on its own: the loss of step 3 is finite, its gradient
    is not. The run stops at step 3 naming the gradient norm, before the weights change (with or
    without clipping: grad_clip 0 still measures the norm for the guard)."""
    args = tiny_args(tiny_data, tmp_path / "run", max_steps=6, save_every=2, keep_checkpoints=0, eval_every=0,
                     grad_clip=grad_clip)
    model = _build_model(args, 257)
    poison = _InfGradAt(model, step=3)
    with pytest.raises(TrainingDiverged, match=r"gradient norm is (inf|nan) at step 3.*step_000002.*--resume-from 2"):
        train(args, model=model, progress=False)
    assert poison.backwards == 3 and poison.before is not None
    for k, v in model.state_dict().items():  # the optimizer never took step 3
        assert torch.equal(v, poison.before[k]), k
    assert latest_checkpoint(tmp_path / "run").name == "step_000002"
