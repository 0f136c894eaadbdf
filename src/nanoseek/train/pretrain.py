"""`nanoseek train`: pretraining from scratch, from a config file and overrides, on one process or under torchrun.

`launch` is the run both pretraining and SFT are: set up the processes, record the settings, build the data and
the trainer, fit, export the final model with its tokenizer.
"""
from __future__ import annotations

import os
from typing import Any, Callable

import torch

from ..files import write_json
from . import distributed
from .config import TrainConfig
from .data import pretraining_data
from .trainer import Data, Trainer


def launch(cfg: TrainConfig, make_data: Callable[[distributed.DistEnv], Data],
           describe: Callable[[Trainer], str], log: Callable[[str], None] = print,
           make_model: Callable[[Data], torch.nn.Module | None] = lambda data: None,
           record: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train `cfg` on `make_data(env)`'s batches, from `make_model(data)` (None: a fresh model of cfg.model), and
    export the result to run_dir/model. `describe(trainer)` is the line logged before the first step; `record`
    extra keys of run_dir/train_config.json."""
    env = distributed.setup(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        if env.is_main:
            write_json(os.path.join(cfg.run_dir, "train_config.json"), {**cfg.to_dict(), **(record or {})})
        data = make_data(env)
        trainer = Trainer(cfg, data, env, model=make_model(data), log=log if env.is_main else (lambda s: None))
        if env.is_main:
            log(describe(trainer))
        summary = trainer.fit()
        if trainer.ep is not None:  # whole experts back in every rank's model for the export (collective)
            trainer.ep.unshard()
        if cfg.export and cfg.attention == "mha" and env.is_main:
            log("not exported: the MHA baseline has no Hugging Face DeepSeek format (its checkpoints are in "
                f"{trainer.ckpt_dir})")
        elif cfg.export and env.is_main:
            summary["model_dir"] = trainer.export(tokenizer=data.tokenizer_dir)
        distributed.barrier(env)
        if env.is_main:
            log(f"validation loss {summary['val_loss']:.4f} nats/token vs unigram entropy of the data "
                f"{summary['unigram_entropy']:.4f}")
            if "model_dir" in summary:
                log(f"model exported to {summary['model_dir']}")
        return summary
    finally:
        distributed.teardown(env)


def run(cfg: TrainConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    from ..config import ModelConfig
    ModelConfig.from_name_or_path(cfg.model)  # fail fast on a bad model name, before preparing any data

    def describe(trainer: Trainer) -> str:
        n = sum(p.numel() for p in trainer.model.parameters())
        baseline = "".join(f" ({name} baseline)" for name, on in (("dense", cfg.dense),
                                                                   ("MHA", cfg.attention == "mha")) if on)
        info = trainer.data.info
        return (f"model {cfg.model}{baseline}: {n:,} parameters; data {info.get('data_dir')}: "
                f"{info.get('train_tokens', 0):,} train tokens; {trainer.env.world_size} process(es) on "
                f"{trainer.env.device}, global batch {trainer.global_batch} x {cfg.seq_len}")

    return launch(cfg, lambda env: pretraining_data(cfg, env, cfg.global_batch(env.world_size)), describe, log)
