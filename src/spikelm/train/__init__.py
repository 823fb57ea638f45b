"""Training: the loop (:mod:`.loop`), spiking-aware fine-tuning on it (:mod:`.finetune`),
checkpoints with exact resume (:mod:`.checkpointing`) and the distributed set-up (:mod:`.distributed`)."""

from .checkpointing import RunLocked, TrainingDiverged, latest_checkpoint
from .finetune import FinetuneArgs, finetune
from .loop import TrainingInterrupted, TrainResult, lr_at, make_optimizer, param_groups, train

__all__ = ["TrainResult", "TrainingDiverged", "TrainingInterrupted", "RunLocked", "train", "finetune", "FinetuneArgs", "latest_checkpoint", "lr_at", "make_optimizer", "param_groups"]
