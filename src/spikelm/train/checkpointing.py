"""Training checkpoints: atomic ``checkpoints/step_XXXXXX`` folders, the ``latest`` pointer, exact
resume, the lock on a run folder and the divergence guard.

Each checkpoint holds the weights (``model.safetensors`` + ``config.json``: loadable by
``spikelm.load``), the optimizer, the gradient scaler, every process's RNG states
(``rng_rank{r}.pt``), the sampler position and the validation loss at that step. It is written
under a temporary name and renamed, and only then does the ``latest`` pointer move
(``os.replace``), so a crash at any moment leaves the previous checkpoint intact and pointed to.

A run with ``distributed: fsdp`` writes the weights and the optimizer *sharded* instead
(:func:`save_sharded_checkpoint`: every process writes its shards through
``torch.distributed.checkpoint`` into the same temporary folder, then rank 0 adds the rest and
renames it), with ``config.json`` beside them, so ``spikelm.load`` still reads such a checkpoint
whole. :func:`restore` reads either kind into either kind of run: a sharded checkpoint into any
number of processes (``torch.distributed.checkpoint`` reshards), a whole one into a sharded model.
The processes must share the file system the checkpoints are written to.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import math
import os
import random
import shutil
import socket
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..checkpoints import load_state_dict, model_config, read_state, save, write_torch
from ..checkpoints.files import SHARDED_METADATA
from ..config import ConfigError
from ..runargs import RunArgs
from ..errors import CheckpointError, SpikelmError
from ..io import atomic_write_json, atomic_write_text, claim_dir, remove_owned
from .distributed import Dist, is_sharded

log = logging.getLogger("spikelm.train")

__all__ = ["CHECKPOINTS", "LATEST", "LOCK", "RUN_FILES", "claim_run_dir", "claim_run_folder", "read_json", "TrainingDiverged", "RunLocked", "RunLock", "latest_checkpoint",
           "save_checkpoint", "save_sharded_checkpoint", "point_latest_at", "restore", "remove_stale_temps", "check_args_match", "diverged_message",
           "rng_state", "set_rng_state", "blow_up", "last_healthy_checkpoint", "resolve_resume_from",
           "UNIFORM_MARGIN_NATS", "RISE_MARGIN_NATS"]

CHECKPOINTS = "checkpoints"
LATEST = "latest"
LOCK = ".spikelm-train.lock"

# The divergence guard (see blow_up). A model that guesses uniformly over V tokens scores ln V
# nats; an initialised model sits near it and training only goes down from there, so a loss a
# full nat above ln V (2.7x the uniform guess's perplexity) is a blow-up, never an under-trained
# smoke run. A validation loss 2 nats above the best this run reached (7.4x its best perplexity)
# is a blow-up too: over-fitting raises validation loss slowly, by tenths of a nat, not by 2 nats.
UNIFORM_MARGIN_NATS = 1.0
RISE_MARGIN_NATS = 2.0


class TrainingDiverged(SpikelmError):
    """The loss or the gradient norm became NaN or infinite, or the validation loss blew up."""


class RunLocked(SpikelmError):
    """Another training holds the lock on this ``out_dir``."""


# ---------------------------------------------------------------------------- the lock on out_dir
class RunLock:
    """An advisory lock on a run folder: ``out_dir/.spikelm-train.lock`` holds the owner's pid, host
    and start time, and the owner keeps an exclusive ``flock`` on it for the whole run.

    The kernel drops a ``flock`` when its process dies, however it dies (SIGKILL included), so a
    lock file left by a dead run is *stale*: the next run takes it over (and logs whose it was).
    A lock held by a live process makes :meth:`acquire` raise :class:`RunLocked` naming that
    process. Where the file system refuses ``flock``, a lock file naming a pid on this host that
    no longer exists is stale, and any other is held.
    """

    def __init__(self, out_dir: Path) -> None:
        self.path = Path(out_dir) / LOCK
        self._fd: int | None = None

    @staticmethod
    def _describe(info: dict[str, Any]) -> str:
        return f"pid {info.get('pid', '?')} on {info.get('host', '?')}, started {info.get('started', '?')}"

    def _read(self) -> dict[str, Any]:
        try:
            return json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            return {}

    def acquire(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(10):  # retried only when the file was replaced under us
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                os.close(fd)
                if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise RunLocked(self._held_message(self._read())) from None
                self._fallback_pid_check()  # no flock on this file system
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            # The holder may have removed the file between our open and our flock: then we hold a
            # lock on a deleted file, and must try again on the new one.
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            old = self._read()
            if old.get("pid") not in (None, os.getpid()):
                log.warning("%s: taking over the stale lock of %s (that run is no longer alive)", self.path, self._describe(old))
            info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
            self._fd = fd
            return self
        raise RunLocked(f"{self.path}: could not take the lock (it keeps being replaced); is another run starting?")

    def _held_message(self, info: dict[str, Any]) -> str:
        return (f"{self.path.parent} is in use by another training ({self._describe(info)}); wait for it to end, "
                f"or choose another --out-dir (a lock file of a run that is surely dead may be deleted: {self.path})")

    def _fallback_pid_check(self) -> None:
        info = self._read()
        pid, host = info.get("pid"), info.get("host")
        if not isinstance(pid, int) or pid == os.getpid():
            return
        if host != socket.gethostname():
            raise RunLocked(self._held_message(info))
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return  # stale: that process is gone
        except PermissionError:
            pass  # alive, someone else's
        raise RunLocked(self._held_message(info))

    def release(self) -> None:
        if self._fd is None:
            return
        # Remove the file while still holding the lock, so a waiting run never sees our record.
        if self._read().get("pid") == os.getpid():
            self.path.unlink(missing_ok=True)
        os.close(self._fd)  # drops the flock
        self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


# ---------------------------------------------------------------------------- folders
def _step_dir_name(step: int) -> str:
    return f"step_{step:06d}"


def _step_of(folder: Path) -> int:
    return int(folder.name.split("_", 1)[1])


def _complete(folder: Path) -> bool:
    weights = (folder / "model.safetensors").is_file() or (folder / SHARDED_METADATA).is_file()
    return (folder / "trainer_state.json").is_file() and weights


def _sharded(folder: Path) -> bool:
    return (folder / SHARDED_METADATA).is_file() and not (folder / "model.safetensors").is_file()


def _kept(out_dir: Path) -> list[Path]:
    """The complete checkpoints in out_dir, oldest first."""
    root = Path(out_dir) / CHECKPOINTS
    return sorted(p for p in root.glob("step_*") if p.name[5:].isdigit() and _complete(p)) if root.is_dir() else []


def latest_checkpoint(out_dir: str | os.PathLike) -> Path | None:
    """The checkpoint ``latest`` points to; if the pointer is missing or dangling, the newest complete one."""
    root = Path(out_dir) / CHECKPOINTS
    pointer = root / LATEST
    if pointer.is_file():
        target = root / pointer.read_text().strip()
        if _complete(target):
            return target
        log.warning("%s points to %s, which is not a complete checkpoint; using the newest complete one", pointer, target)
    kept = _kept(Path(out_dir))
    return kept[-1] if kept else None


def resolve_resume_from(value: str | os.PathLike, out_dir: Path) -> Path:
    """The checkpoint ``--resume-from`` names: a step number (``4``), a folder name in
    ``out_dir/checkpoints`` (``step_000004``) or a path to a checkpoint folder."""
    text = str(value).strip()
    root = Path(out_dir) / CHECKPOINTS
    if text.isdigit():
        cand = root / _step_dir_name(int(text))
    elif Path(text).exists():
        cand = Path(text)
    else:
        cand = root / text
    if not _complete(cand):
        have = ", ".join(p.name for p in _kept(out_dir)) or "none"
        raise CheckpointError(f"--resume-from {text}: {cand} is not a complete training checkpoint "
                              f"(kept in {root}: {have}); name one of those, by folder or step number")
    return cand


# ---------------------------------------------------------------------------- RNG states
def rng_state(device: torch.device) -> dict[str, Any]:
    """This process's RNG states (torch CPU, this process's CUDA device, numpy, python), in types
    that ``torch.load(weights_only=True)`` reads back."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    out: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }
    if device.type == "cuda":
        out["cuda"] = torch.cuda.get_rng_state(device)
    return out


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n[0], np.asarray(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    p = state["python"]
    random.setstate((p[0], tuple(p[1]), p[2]))
    if "cuda" in state and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


# ---------------------------------------------------------------------------- save and restore
def _write_training_state(folder: Path, optimizer: torch.optim.Optimizer | None, scaler: Any, state: dict[str, Any],
                          args: RunArgs, rng_states: list[dict[str, Any]]) -> None:
    """Everything besides the weights that an exact resume needs (the optimizer None: it was
    saved sharded with the weights)."""
    if optimizer is not None:
        write_torch(optimizer.state_dict(), folder / "optimizer.pt")
    for rank, rng in enumerate(rng_states):
        write_torch(rng, folder / f"rng_rank{rank}.pt")
    state = dict(state, scaler=scaler.state_dict() if scaler.is_enabled() else None)
    (folder / "train_args.json").write_text(json.dumps(args.to_dict(), indent=2) + "\n")
    # trainer_state.json last: _complete() looks for it (the rename below is what makes it atomic).
    (folder / "trainer_state.json").write_text(json.dumps(state, indent=2) + "\n")


def _temp_folder(out_dir: Path, step: int) -> Path:
    """A fresh temporary folder for the checkpoint of ``step`` (renamed into place when complete)."""
    root = out_dir / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".{_step_dir_name(step)}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    return tmp


def save_checkpoint(out_dir: Path, step: int, model: nn.Module, optimizer: torch.optim.Optimizer, scaler: Any,
                    state: dict[str, Any], args: RunArgs, rng_states: list[dict[str, Any]]) -> Path:
    """Write ``checkpoints/step_XXXXXX`` atomically, move ``latest`` to it, prune old ones.

    ``rng_states`` holds every process's RNG states, rank by rank.
    """
    tmp = _temp_folder(out_dir, step)
    try:
        save(model, tmp)  # model.safetensors + config.json, itself written atomically
        _write_training_state(tmp, optimizer, scaler, state, args, rng_states)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return _publish(out_dir, tmp, step, args)


def save_sharded_checkpoint(out_dir: Path, step: int, model: nn.Module, optimizer: torch.optim.Optimizer, scaler: Any,
                            state: dict[str, Any], args: RunArgs, rng_states: list[dict[str, Any]],
                            dist: Dist) -> Path | None:
    """The checkpoint of a sharded (FSDP) model, called by every process: each writes its shards
    of the weights and the optimizer through ``torch.distributed.checkpoint`` into one temporary
    folder that rank 0 made, then rank 0 writes ``config.json`` and the training state and
    publishes the folder as :func:`save_checkpoint` does. Returns the folder on rank 0."""
    # imported here: torch.distributed.checkpoint takes seconds to import, and only FSDP runs use it
    from torch.distributed.checkpoint import save as dcp_save
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_sd, optim_sd = get_state_dict(model, optimizer)
    tmp = dist.on_main(lambda: _temp_folder(out_dir, step))
    try:
        dcp_save({"model": model_sd, "optimizer": optim_sd}, checkpoint_id=str(tmp))  # collective

        def finish() -> Path:
            atomic_write_json(tmp / "config.json", model_config(model))
            _write_training_state(tmp, None, scaler, state, args, rng_states)
            return _publish(out_dir, tmp, step, args)

        path = dist.on_main(finish)
    except BaseException:
        if dist.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path if dist.is_main else None


def _publish(out_dir: Path, tmp: Path, step: int, args: RunArgs) -> Path:
    """Rename the complete ``tmp`` into place, move ``latest`` to it, prune old checkpoints."""
    root = out_dir / CHECKPOINTS
    final = root / _step_dir_name(step)
    try:
        if final.exists():  # left by a run that crashed before moving `latest`, or by a branch abandoned by --resume-from
            shutil.rmtree(final)
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    atomic_write_text(root / LATEST, final.name + "\n")
    if args.keep_checkpoints > 0:
        # Only this trajectory's checkpoints count: later steps belong to a branch that
        # --resume-from abandoned, and are replaced when this run reaches them.
        mine = [p for p in _kept(out_dir) if _step_of(p) <= step]
        for old in mine[: -args.keep_checkpoints]:
            shutil.rmtree(old, ignore_errors=True)
    log.debug("saved checkpoint %s", final)
    return final


def point_latest_at(folder: Path) -> None:
    """Make ``latest`` name ``folder`` (a ``--resume-from`` run continues from there)."""
    atomic_write_text(folder.parent / LATEST, folder.name + "\n")


def remove_stale_temps(out_dir: Path) -> None:
    """Temporary folders of a save that was killed half-way (never pointed to, safe to delete).

    Called under the run lock, so no live run is writing them."""
    root = out_dir / CHECKPOINTS
    if root.is_dir():
        for stale in root.glob(".*.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)


def restore(folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scaler: Any,
            device: torch.device, rank: int = 0, seed: int = 0) -> dict[str, Any]:
    """Load weights, optimizer, scaler and this rank's RNG states from a checkpoint; return trainer_state.

    A sharded checkpoint, or a sharded ``model``, makes this a collective: every process calls it.

    A rank the checkpoint has no RNG file for (it was written by fewer processes) is seeded from
    ``(seed, rank, step)`` instead, with a warning: its dropout masks then differ from an
    uninterrupted run, the data order does not (it depends only on the seed and the step).
    """
    try:
        if _sharded(folder):
            _load_sharded(folder, model, optimizer)
        elif is_sharded(model):
            _load_whole_into_sharded(folder, model, optimizer)
        else:
            sd, _ = load_state_dict(folder)
            model.load_state_dict({k: v.to(device) for k, v in sd.items()}, strict=True)
    except (RuntimeError, ValueError, KeyError) as e:
        raise CheckpointError(f"{folder}: the weights do not fit this run's model ({str(e).splitlines()[0][:300]}); "
                              "resume with the model config the checkpoint was trained with") from None
    # Every file is read weights-only (read_state): a pickle that would run code is refused by name.
    state = read_json(folder / "trainer_state.json")
    rng_file = folder / f"rng_rank{rank}.pt"
    rng = read_state(rng_file) if rng_file.is_file() else None
    try:
        if not _sharded(folder) and not is_sharded(model):
            optimizer.load_state_dict(read_state(folder / "optimizer.pt", map_location=device))
        if rng is None and rank == 0 and (folder / "rng.pt").is_file():  # written before per-rank states
            old = read_state(folder / "rng.pt")
            rng = {"torch": old["torch"], "numpy": state["numpy_rng"], "python": state["python_rng"]}
        if rng is not None:
            set_rng_state(rng, device)
    except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as e:
        raise CheckpointError(f"{folder}: cannot use the training state ({e}); resume from an earlier checkpoint") from None
    if rng is None:
        log.warning("%s holds no RNG state for rank %d (it was saved by fewer processes); seeding that rank afresh",
                    folder, rank)
        s = seed * 1_000_003 + rank * 10_007 + int(state["step"])
        torch.manual_seed(s)
        np.random.seed(s % 2**32)
        random.seed(s)
    if state.get("scaler") and scaler.is_enabled():
        scaler.load_state_dict(state["scaler"])
    return state


def _load_sharded(folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Weights and optimizer from a sharded checkpoint into this run's model, sharded or whole (a
    collective under torchrun: every process reads the parts it holds)."""
    from torch.distributed.checkpoint import load as dcp_load
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model_sd, optim_sd = get_state_dict(model, optimizer)  # the layout to read into
    dcp_load({"model": model_sd, "optimizer": optim_sd}, checkpoint_id=str(folder))
    set_state_dict(model, optimizer, model_state_dict=model_sd, optim_state_dict=optim_sd)


def _load_whole_into_sharded(folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """A whole (DDP or one-process) checkpoint into a sharded model: every process reads the whole
    weights and optimizer state and keeps its shards. ``optimizer.pt`` numbers the parameters in
    the order of the optimizer's groups, which the same model and settings rebuild; the sharded
    loader wants their names."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_optimizer_state_dict

    whole = StateDictOptions(full_state_dict=True)
    sd, _ = load_state_dict(folder)
    set_model_state_dict(model, sd, options=whole)
    saved = read_state(folder / "optimizer.pt")
    name = {id(p): n for n, p in model.named_parameters()}
    names = [name[id(p)] for g in optimizer.param_groups for p in g["params"]]
    by_name = {"state": {names[i]: v for i, v in saved["state"].items()},
               "param_groups": [dict(g, params=[names[i] for i in g["params"]]) for g in saved["param_groups"]]}
    set_optimizer_state_dict(model, optimizer, by_name, options=whole)


def read_json(path: Path) -> dict[str, Any]:
    """A JSON file of a checkpoint (``trainer_state.json``, ``train_args.json``), every failure named."""
    try:
        obj = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such file; the checkpoint is incomplete: resume from an earlier one") from None
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not readable JSON ({e}); resume from an earlier checkpoint") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a JSON object, found a {type(obj).__name__}; resume from an earlier checkpoint")
    return obj


def fixed_mismatch(saved: dict[str, Any], args: RunArgs) -> str | None:
    """The first setting a run cannot change that differs between ``saved`` (its train_args.json)
    and ``args``: ``kind`` (another kind of run), then a key of ``args.FIXED``; None if none does."""
    if saved.get("kind", args.kind) != args.kind:
        return "kind"
    return next((key for key in args.FIXED if saved.get(key) != getattr(args, key)), None)


def check_args_match(saved: dict[str, Any], args: RunArgs, folder: Path) -> None:
    """Resuming with a different model (the keys in ``args.FIXED``: the model config of a training
    run, the checkpoint, encoding and trainable parts of a fine-tune) or a different kind of run is
    an error; other changes (longer runs) are allowed but noted."""
    key = fixed_mismatch(saved, args)
    if key == "kind":
        raise ConfigError(f"the checkpoint {folder} belongs to a {saved.get('kind')} run, not a {args.kind} run; "
                          "choose another --out-dir")
    if key is not None:
        raise ConfigError(f"{key}: the checkpoint {folder} was trained with {saved.get(key)!r}, this run asks for "
                          f"{getattr(args, key)!r}")
    changed = sorted(k for k, v in args.to_dict().items() if k not in args.FIXED and saved.get(k) != v)
    if changed:
        log.warning("resuming with changed settings: %s", ", ".join(f"{k}={saved.get(k)!r} -> {getattr(args, k)!r}" for k in changed))


# ---------------------------------------------------------------------------- the divergence guard
def blow_up(val_loss: float, vocab_size: int, best: float | None) -> str | None:
    """Why ``val_loss`` (nats per token) means the run blew up, or None if it is healthy.

    Non-finite; above ``ln V + UNIFORM_MARGIN_NATS`` (clearly worse than a uniform guess over the
    vocabulary, which an initialised model already matches); or ``RISE_MARGIN_NATS`` above the
    best validation loss this run reached. An under-trained run sits near ln V and passes.
    """
    if not math.isfinite(val_loss):
        return f"the validation loss is {val_loss}"
    uniform = math.log(vocab_size)
    if val_loss > uniform + UNIFORM_MARGIN_NATS:
        return (f"the validation loss {val_loss:.4g} nats is more than {UNIFORM_MARGIN_NATS:g} nat above "
                f"ln V = {uniform:.4g} (a uniform guess over the {vocab_size} tokens)")
    if best is not None and val_loss > best + RISE_MARGIN_NATS:
        return (f"the validation loss {val_loss:.4g} nats rose more than {RISE_MARGIN_NATS:g} nats above "
                f"the best this run reached ({best:.4g})")
    return None


def _recorded_health(folder: Path, vocab_size: int) -> bool:
    try:
        state = json.loads((folder / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return False
    val = state.get("val_loss")
    return isinstance(val, (int, float)) and blow_up(float(val), vocab_size, state.get("best_val_loss")) is None


def last_healthy_checkpoint(out_dir: Path, vocab_size: int) -> Path | None:
    """The newest kept checkpoint whose recorded validation loss passes :func:`blow_up` (a
    checkpoint without a recorded validation loss is not known to be healthy)."""
    for folder in reversed(_kept(out_dir)):
        if _recorded_health(folder, vocab_size):
            return folder
    return None


def diverged_message(what: str, step: int, out_dir: Path, vocab_size: int, save_every: int) -> str:
    """The one-line message of :class:`TrainingDiverged`: what happened, where to resume, what to change."""
    good = last_healthy_checkpoint(out_dir, vocab_size)
    if good is not None:
        where = (f"the last healthy checkpoint (by its recorded validation loss) is {good}; lower lr, raise "
                 f"warmup_steps or grad_clip, and resume with --resume-from {_step_of(good)}")
    elif save_every <= 0:
        where = "no checkpoint was saved (set save_every to keep one); lower lr, raise warmup_steps or grad_clip, and start again"
    elif not _kept(out_dir) and step <= save_every:
        why = "was not reached" if step < save_every else "came with the blow-up"
        where = (f"no checkpoint was saved (save_every={save_every} {why}); lower lr, raise warmup_steps "
                 "or grad_clip, and start again")
    else:
        where = ("no kept checkpoint has a healthy recorded validation loss; lower lr, raise warmup_steps or "
                 "grad_clip, and start again in a new --out-dir")
    return f"{what} at step {step}; the run stopped without saving that step. {where}"


# ---------------------------------------------------------------------------- the run folder
# What a training run writes in its out_dir (spikelm.io.claim_dir): anything else there is the user's.
RUN_FILES = ("log.csv", "log.jsonl", "summary.json", "train_args.json", f"{CHECKPOINTS}/",
             "final/config.json", "final/model.safetensors")


def claim_run_folder(out_dir: str | os.PathLike, *, overwrite: bool = False, command: str = "train",
                     owns: tuple[str, ...] = RUN_FILES) -> Path:
    """The one output rule on a run's out_dir alone (:func:`spikelm.io.claim_dir`), without the lock:
    :func:`claim_run_dir` starts with it, and a command that runs several fine-tunings later (the
    sweep's fine-tuned rows) checks all their folders with it before any work."""
    return claim_dir(out_dir, overwrite=overwrite, what="out_dir", owns=owns, reuse=command, legacy=("train_args.json",))


def claim_run_dir(out_dir: Path, lock: RunLock, *, resume: bool, resume_from: str | os.PathLike | None,
                  overwrite: bool = False, command: str = "train", owns: tuple[str, ...] = RUN_FILES) -> Path | None:
    """Rank 0's checks before a run starts (before any work): the one output rule on out_dir
    (:func:`spikelm.io.claim_dir`: empty, an earlier run of ``command``, or ``overwrite``; never a
    user's file), the lock, no start over an earlier run unless resuming (``overwrite`` starts over:
    the earlier run's files go), no half-written checkpoints; return the checkpoint to resume from.
    ``owns``: the files the command writes there (``finetune`` passes its own)."""
    claim_run_folder(out_dir, overwrite=overwrite, command=command, owns=owns)
    out_dir.mkdir(parents=True, exist_ok=True)  # with the umask's permissions
    lock.acquire()
    try:
        if resume_from is not None:
            folder = resolve_resume_from(resume_from, out_dir)
            if folder.parent == out_dir / CHECKPOINTS:
                point_latest_at(folder)  # an interrupted --resume-from run continues on the new branch
        else:
            earlier = (out_dir / "log.jsonl").exists() or (out_dir / CHECKPOINTS / LATEST).exists()
            if earlier and not resume and overwrite:
                log.info("--overwrite: removing the earlier run's files in %s", out_dir)
                remove_owned(out_dir, owns)
            elif earlier and not resume:
                raise SpikelmError(f"{out_dir} holds an earlier run; pass --resume to continue it, --overwrite to start "
                                   "over (its checkpoints and logs go), or choose another --out-dir")
            folder = latest_checkpoint(out_dir) if resume else None
        remove_stale_temps(out_dir)
        return folder
    except BaseException:
        lock.release()
        raise
