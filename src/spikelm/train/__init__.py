"""Training: the loop (:mod:`.loop`), checkpoints with exact resume (:mod:`.checkpointing`) and the
distributed set-up (:mod:`.distributed`)."""

from .checkpointing import RunLocked, TrainingDiverged, latest_checkpoint
from .loop import TrainingInterrupted, TrainResult, lr_at, make_optimizer, param_groups, train

__all__ = ["TrainResult", "TrainingDiverged", "TrainingInterrupted", "RunLocked", "train", "latest_checkpoint", "lr_at", "make_optimizer", "param_groups"]
