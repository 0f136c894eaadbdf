"""`nanoseek train`: pretraining from scratch, from a config file and overrides, on one process or under torchrun."""
from __future__ import annotations

import json
import os
from typing import Any, Callable

import torch

from . import distributed
from .config import TrainConfig
from .data import copy_tokenizer, pretraining_data
from .trainer import Trainer


def export(trainer: Trainer, tokenizer_dir: str | None, out_dir: str) -> str:
    """The final model in the Hugging Face layout (loads in transformers and vLLM), with its tokenizer. An FP8-trained
    model is written in the official FP8 layout (e4m3 weights + weight_scale_inv per 128x128 block)."""
    from ..checkpoint import save_pretrained
    save_pretrained(trainer.model, out_dir, fp8=trainer.cfg.fp8)
    copy_tokenizer(tokenizer_dir, out_dir)
    return out_dir


def run(cfg: TrainConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    from ..config import ModelConfig
    ModelConfig.from_name_or_path(cfg.model)  # fail fast on a bad model name, before preparing any data
    env = distributed.setup(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        if env.is_main:
            os.makedirs(cfg.run_dir, exist_ok=True)
            with open(os.path.join(cfg.run_dir, "train_config.json"), "w", encoding="utf-8") as f:
                json.dump(cfg.to_dict(), f, indent=2)
        data = pretraining_data(cfg, env, cfg.global_batch(env.world_size))
        trainer = Trainer(cfg, data, env, log=log if env.is_main else (lambda s: None))
        if env.is_main:
            n = sum(p.numel() for p in trainer.model.parameters())
            baseline = "".join(f" ({name} baseline)" for name, on in (("dense", cfg.dense),
                                                                       ("MHA", cfg.attention == "mha")) if on)
            log(f"model {cfg.model}{baseline}: {n:,} parameters; "
                f"data {data.info.get('data_dir')}: {data.info.get('train_tokens', 0):,} train tokens; "
                f"{env.world_size} process(es) on {env.device}, global batch {trainer.global_batch} x {cfg.seq_len}")
        summary = trainer.fit()
        if trainer.ep is not None:  # whole experts back in every rank's model for the export (collective)
            trainer.ep.unshard()
        if cfg.export and cfg.attention == "mha" and env.is_main:
            log("not exported: the MHA baseline has no Hugging Face DeepSeek format (its checkpoints are in "
                f"{trainer.ckpt_dir})")
        elif cfg.export and env.is_main:
            summary["model_dir"] = export(trainer, data.tokenizer_dir, os.path.join(cfg.run_dir, "model"))
        distributed.barrier(env)
        if env.is_main:
            log(f"validation loss {summary['val_loss']:.4f} nats/token vs unigram entropy of the data "
                f"{summary['unigram_entropy']:.4f}")
            if "model_dir" in summary:
                log(f"model exported to {summary['model_dir']}")
        return summary
    finally:
        distributed.teardown(env)
