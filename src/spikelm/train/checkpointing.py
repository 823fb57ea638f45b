"""Training checkpoints: atomic ``checkpoints/step_XXXXXX`` folders, the ``latest`` pointer, exact resume.

Each checkpoint holds the weights (``model.safetensors`` + ``config.json``: loadable by
``spikelm.load``), the optimizer, the gradient scaler, the RNG states and the sampler position. It
is written under a temporary name and renamed, and only then does the ``latest`` pointer move
(``os.replace``), so a crash at any moment leaves the previous checkpoint intact and pointed to.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..checkpoints import load_state_dict, save
from ..config import ConfigError, TrainArgs
from ..errors import CheckpointError, SpikelmError
from ..io import atomic_write_text

log = logging.getLogger("spikelm.train")

__all__ = ["CHECKPOINTS", "LATEST", "TrainingDiverged", "latest_checkpoint", "save_checkpoint", "restore",
           "remove_stale_temps", "check_args_match", "diverged_message"]

CHECKPOINTS = "checkpoints"
LATEST = "latest"


class TrainingDiverged(SpikelmError):
    """The loss (or the gradient norm) became NaN or infinite."""


def _step_dir_name(step: int) -> str:
    return f"step_{step:06d}"


def _complete(folder: Path) -> bool:
    return (folder / "trainer_state.json").is_file() and (folder / "model.safetensors").is_file()


def latest_checkpoint(out_dir: str | os.PathLike) -> Path | None:
    """The checkpoint ``latest`` points to; if the pointer is missing or dangling, the newest complete one."""
    root = Path(out_dir) / CHECKPOINTS
    pointer = root / LATEST
    if pointer.is_file():
        target = root / pointer.read_text().strip()
        if _complete(target):
            return target
        log.warning("%s points to %s, which is not a complete checkpoint; using the newest complete one", pointer, target)
    candidates = sorted((p for p in root.glob("step_*") if _complete(p)), reverse=True) if root.is_dir() else []
    return candidates[0] if candidates else None


def _write_training_state(folder: Path, optimizer: torch.optim.Optimizer, scaler: Any, state: dict[str, Any],
                          args: TrainArgs) -> None:
    """Everything besides the weights that an exact resume needs."""
    torch.save(optimizer.state_dict(), folder / "optimizer.pt")
    rng: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    torch.save(rng, folder / "rng.pt")
    np_state = np.random.get_state()
    py_state = random.getstate()
    state = dict(
        state,
        scaler=scaler.state_dict() if scaler.is_enabled() else None,
        numpy_rng=[np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        python_rng=[py_state[0], list(py_state[1]), py_state[2]],
    )
    (folder / "train_args.json").write_text(json.dumps(args.to_dict(), indent=2) + "\n")
    # trainer_state.json last: _complete() looks for it (the rename below is what makes it atomic).
    (folder / "trainer_state.json").write_text(json.dumps(state, indent=2) + "\n")


def save_checkpoint(out_dir: Path, step: int, model: nn.Module, optimizer: torch.optim.Optimizer, scaler: Any,
                     state: dict[str, Any], args: TrainArgs) -> Path:
    """Write ``checkpoints/step_XXXXXX`` atomically, move ``latest`` to it, prune old ones."""
    root = out_dir / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    final = root / _step_dir_name(step)
    tmp = root / f".{final.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        save(model, tmp)  # model.safetensors + config.json, itself written atomically
        _write_training_state(tmp, optimizer, scaler, state, args)
        if final.exists():  # left by a run that crashed before moving `latest`; never the one it points to
            shutil.rmtree(final)
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    atomic_write_text(root / LATEST, final.name + "\n")
    if args.keep_checkpoints > 0:
        for old in sorted(root.glob("step_*"))[: -args.keep_checkpoints]:
            if old != final:
                shutil.rmtree(old, ignore_errors=True)
    log.debug("saved checkpoint %s", final)
    return final


def remove_stale_temps(out_dir: Path) -> None:
    """Temporary folders of a save that was killed half-way (never pointed to, safe to delete)."""
    root = out_dir / CHECKPOINTS
    if root.is_dir():
        for stale in root.glob(".*.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)


def restore(folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scaler: Any,
             device: torch.device) -> dict[str, Any]:
    """Load weights, optimizer, scaler and RNG states from a checkpoint; return trainer_state."""
    sd, _ = load_state_dict(folder)
    try:
        model.load_state_dict({k: v.to(device) for k, v in sd.items()}, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{folder}: the weights do not fit this run's model ({str(e).splitlines()[0]}); "
                              "resume with the model config the checkpoint was trained with") from None
    try:
        optimizer.load_state_dict(torch.load(folder / "optimizer.pt", map_location=device, weights_only=True))
        rng = torch.load(folder / "rng.pt", map_location="cpu", weights_only=True)
        state = json.loads((folder / "trainer_state.json").read_text())
    except (OSError, RuntimeError, ValueError) as e:
        raise CheckpointError(f"{folder}: cannot read the training state ({e}); resume from an earlier checkpoint") from None
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    n = state["numpy_rng"]
    np.random.set_state((n[0], np.asarray(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    p = state["python_rng"]
    random.setstate((p[0], tuple(p[1]), p[2]))
    if state.get("scaler") and scaler.is_enabled():
        scaler.load_state_dict(state["scaler"])
    return state


def check_args_match(saved: dict[str, Any], args: TrainArgs, folder: Path) -> None:
    """Resuming with a different model is an error; other changes (longer runs) are allowed but noted."""
    if saved.get("model") != args.model:
        raise ConfigError(f"model: the checkpoint {folder} was trained with {saved.get('model')}, this run asks for {args.model}")
    changed = sorted(k for k, v in args.to_dict().items() if k != "model" and saved.get(k) != v)
    if changed:
        log.warning("resuming with changed settings: %s", ", ".join(f"{k}={saved.get(k)!r} -> {getattr(args, k)!r}" for k in changed))


def diverged_message(what: str, value: float, step: int, out_dir: Path) -> str:
    good = latest_checkpoint(out_dir)
    where = f"the last good checkpoint is {good}" if good else "no checkpoint was saved (set save_every to keep one)"
    return (f"the training {what} is {value} at step {step}; stopped before updating the weights. {where}; "
            "lower lr, raise warmup_steps or grad_clip, and resume with --resume")
