"""Model-agnostic training: checkpoints (and, next, the loop and distributed training)."""
from .checkpoint import (Checkpoint, CheckpointError, latest_checkpoint, load_checkpoint, restore_training,
                         save_checkpoint)

__all__ = ["Checkpoint", "CheckpointError", "latest_checkpoint", "load_checkpoint", "restore_training",
           "save_checkpoint"]
