"""Model-agnostic training: the loop, its schedule, metrics, checkpoints and distributed training.

==============  ==========================================================================
module          what lives there
==============  ==========================================================================
loop            TrainConfig, Trainer (the optimizer, warm-up + decay, clipping, evaluation, early
                stopping or a goal, exact-resume checkpoints, DDP), DivergenceError
optim           AdamW, or MuonAdamW (Muon for the hidden matrices, AdamW for the rest)
schedule        WarmupDecay (the multiplier), WarmupDecayLR (a JSON-stateful LambdaLR)
metrics         perplexity, bits_per_char, accuracy, macro_f1, token_accuracy, entity_f1,
                exact_match, char_error_rate, bleu
checkpoint      atomic safetensors + JSON checkpoints and exact restore of training state
distributed     setup / cleanup / is_main for torchrun, shard_batch
==============  ==========================================================================
"""
from . import distributed, metrics
from .checkpoint import (Checkpoint, CheckpointError, best_checkpoint, latest_checkpoint, load_checkpoint,
                         restore_training, save_checkpoint)
from .loop import DivergenceError, TrainConfig, Trainer
from .optim import MuonAdamW, build_optimizer
from .schedule import WarmupDecay, WarmupDecayLR

__all__ = ["Checkpoint", "CheckpointError", "best_checkpoint", "latest_checkpoint", "load_checkpoint",
           "restore_training", "save_checkpoint",
           "DivergenceError", "TrainConfig", "Trainer", "MuonAdamW", "build_optimizer", "WarmupDecay", "WarmupDecayLR", "distributed", "metrics"]
