"""A training child process for the kill and signal tests: ``python train_child.py [finetune] CONFIG MODE [flags]``.

MODE makes the failure deterministic with real signals:
  slow                each training step sleeps 50 ms (the parent sends the signal)
  kill-step:N         SIGKILL itself inside training step N
  kill-save:K         SIGKILL itself half-way through writing the K-th checkpoint (optimizer.pt written)
  kill-latest:K       SIGKILL itself after the K-th checkpoint folder is renamed, before `latest` moves
  run                 nothing special
It then runs ``spikelm train CONFIG --no-progress [flags]`` (with ``finetune`` first: ``spikelm finetune
CHECKPOINT --config CONFIG``, the checkpoint read from the config) and exits with its code.
"""

from __future__ import annotations

import os
import signal
import sys
import time

import spikelm.train.checkpointing as C
from spikelm.checkpoints import build_model
from spikelm.cli import main


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _patch(mode: str) -> None:
    kind, _, n = mode.partition(":")
    count = {"n": 0}
    if kind in ("slow", "kill-step"):
        import spikelm.train.loop as L

        def build(args, vocab):
            model = build_model(L._model_config(args, vocab))
            model.init_weights(args.seed)
            forward = model.forward

            def hooked(idx, state=None, **k):
                if model.training:
                    count["n"] += 1
                    if kind == "slow":
                        time.sleep(0.05)
                    elif count["n"] == int(n):
                        _die()
                return forward(idx, state, **k)

            model.forward = hooked
            return model

        L._build_model = build
    elif kind == "kill-save":
        real = C._write_training_state

        def write(folder, optimizer, *a):
            count["n"] += 1
            if count["n"] == int(n):
                import torch

                torch.save(optimizer.state_dict(), folder / "optimizer.pt")
                _die()
            return real(folder, optimizer, *a)

        C._write_training_state = write
    elif kind == "kill-latest":
        real_text = C.atomic_write_text

        def write_text(path, text):
            if path.name == C.LATEST:
                count["n"] += 1
                if count["n"] == int(n):
                    _die()
            return real_text(path, text)

        C.atomic_write_text = write_text


if __name__ == "__main__":
    argv = sys.argv[1:]
    if argv[0] == "finetune":
        import yaml

        cfg = argv[1]
        _patch(argv[2])
        checkpoint = yaml.safe_load(open(cfg))["checkpoint"]
        sys.exit(main(["finetune", checkpoint, "--config", cfg, "--no-progress", *argv[3:]]))
    _patch(argv[1])
    sys.exit(main(["train", argv[0], "--no-progress", *argv[2:]]))
