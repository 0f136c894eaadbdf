"""Training: settings, the loop skeleton, the LM trainer (pretraining, SFT), GRPO, distillation, optimizer and
schedules, load balancing, checkpoints, scale-out."""
from .config import SFTConfig, TrainConfig
from .loop import TrainingError, TrainingLoop
from .settings import RunConfig
from .trainer import Data, Trainer, dense_baseline

__all__ = ["RunConfig", "TrainConfig", "SFTConfig", "Data", "Trainer", "TrainingError", "TrainingLoop",
           "dense_baseline"]
