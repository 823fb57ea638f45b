"""Training: the loop (:mod:`.loop`), checkpoints with exact resume (:mod:`.checkpointing`) and the
distributed set-up (:mod:`.distributed`)."""

from .checkpointing import TrainingDiverged, latest_checkpoint
from .loop import TrainResult, lr_at, make_optimizer, param_groups, train

__all__ = ["TrainResult", "TrainingDiverged", "train", "latest_checkpoint", "lr_at", "make_optimizer", "param_groups"]
