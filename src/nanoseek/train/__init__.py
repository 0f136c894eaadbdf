"""Training: the shared loop (pretraining, SFT), optimizer and schedules, load balancing, checkpoints, scale-out."""
from .config import TrainConfig
from .trainer import Data, Trainer, TrainingError, dense_baseline

__all__ = ["TrainConfig", "Data", "Trainer", "TrainingError", "dense_baseline"]
